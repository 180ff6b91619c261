//! What packages and keys have spent, as this node knows it: the snapshot's
//! figures, raised by the control plane's usage pushes and by this node's own
//! requests as they end; and the admission check built on them.
use aiproxy_shared::sync::LockExt;
use std::collections::HashMap;
use std::sync::Mutex;

use aiproxy_proto::v1 as pb;
use aiproxy_shared::billing::{Draw, PackageState, PackageUsage, Periods, Refusal, draw};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::errors::RelayError;
use aiproxy_shared::money::from_wire;

use crate::snapshot::{KeyEntry, Snapshot, package_usage};

/// Spending newer than the snapshot; cleared when a newer snapshot arrives.
#[derive(Default)]
pub struct Spending {
    packages: Mutex<HashMap<i64, PackageUsage>>,
    keys: Mutex<HashMap<i64, Decimal>>,
}

impl Spending {
    /// A snapshot carries everything ingested before it was built.
    pub fn clear(&self) {
        self.packages.locked().clear();
        self.keys.locked().clear();
    }

    /// Figures the control plane pushed.
    pub fn apply(&self, update: &pb::UsageUpdate) {
        let mut packages = self.packages.locked();
        for u in &update.packages {
            match package_usage(u) {
                Ok(usage) => packages.entry(u.package_id).or_default().merge(&usage),
                Err(e) => {
                    tracing::warn!(package_id = u.package_id, error = %e, "pushed package usage left out")
                }
            }
        }
        drop(packages);
        let mut keys = self.keys.locked();
        for k in &update.keys {
            match from_wire(&k.cost_used) {
                Ok(cost) => {
                    let used = keys.entry(k.key_id).or_default();
                    *used = (*used).max(cost);
                }
                Err(e) => {
                    tracing::warn!(key_id = k.key_id, error = %e, "pushed key usage left out")
                }
            }
        }
    }

    /// A request of this node ended: its cost counts at once, before the
    /// control plane has ingested it.
    pub fn add(
        &self,
        snapshot: &Snapshot,
        package_id: i64,
        key: &KeyEntry,
        cost: Decimal,
        at: DateTime<Utc>,
    ) {
        if cost.is_zero() {
            return;
        }
        if package_id != 0
            && let Some(p) = snapshot.package(package_id)
        {
            let mut packages = self.packages.locked();
            let usage = packages.entry(package_id).or_default();
            usage.merge(&p.usage);
            usage.charge(cost, Periods::at(at, snapshot.billing_tz));
        }
        let mut keys = self.keys.locked();
        let used = keys.entry(key.id).or_insert(key.cost_used);
        *used = (*used).max(key.cost_used) + cost;
    }

    fn key_used(&self, key: &KeyEntry) -> Decimal {
        let pushed = self.keys.locked().get(&key.id).copied();
        pushed.map_or(key.cost_used, |u| u.max(key.cost_used))
    }

    /// The user's packages with what was spent since the snapshot; `None`
    /// when the key does not draw on packages or the user has none.
    fn package_states(&self, snapshot: &Snapshot, key: &KeyEntry) -> Option<Vec<PackageState>> {
        if !key.bills_packages {
            return None;
        }
        let owned = snapshot.packages.get(&key.user_id)?;
        let pushed = self.packages.locked();
        Some(
            owned
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if let Some(newer) = pushed.get(&p.id) {
                        p.usage.merge(newer);
                    }
                    p
                })
                .collect(),
        )
    }

    fn check_key_limit(&self, key: &KeyEntry) -> Result<(), RelayError> {
        if key
            .cost_limit
            .is_some_and(|limit| self.key_used(key) >= limit)
        {
            return Err(RelayError::quota("quota exceeded"));
        }
        Ok(())
    }

    /// Before the body is read: the refusals that hold for any model (the
    /// key's cost limit; no package in force with room left).
    pub fn pre_admit(
        &self,
        snapshot: &Snapshot,
        key: &KeyEntry,
        now: DateTime<Utc>,
    ) -> Result<(), RelayError> {
        self.check_key_limit(key)?;
        let Some(states) = self.package_states(snapshot, key).filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let now_ms = now.timestamp_millis();
        let periods = Periods::at(now, snapshot.billing_tz);
        let in_force: Vec<&PackageState> = states.iter().filter(|p| p.in_force(now_ms)).collect();
        if in_force.iter().any(|p| p.exhausted(periods).is_none()) {
            return Ok(());
        }
        let refusal = in_force
            .iter()
            .find_map(|p| p.exhausted(periods))
            .unwrap_or(Refusal::Quota);
        Err(RelayError::quota(refusal.message()))
    }

    /// Whether the key and the user's packages leave room for a request for
    /// `model`; the package it draws on (0: none), or the seed's refusal.
    pub fn admit(
        &self,
        snapshot: &Snapshot,
        key: &KeyEntry,
        model: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, RelayError> {
        self.check_key_limit(key)?;
        let Some(states) = self.package_states(snapshot, key) else {
            return Ok(0);
        };
        let periods = Periods::at(now, snapshot.billing_tz);
        match draw(&states, model, now.timestamp_millis(), periods, false) {
            Ok(Draw::Unmetered) => Ok(0),
            Ok(Draw::From(id)) => Ok(id),
            Err(refusal) => Err(RelayError::quota(refusal.message())),
        }
    }
}
