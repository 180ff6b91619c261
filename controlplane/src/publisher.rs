//! Builds the versioned snapshot from the store and publishes it to watchers.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use aiproxy_shared::billing::PackageUsage;
use aiproxy_shared::domain::{AccountStatus, ActiveStatus};
use aiproxy_shared::money::limit_to_wire;
use chrono::{DateTime, Datelike, Utc};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::crypto::Sealer;
use crate::store::{Package, Store, StoreResult};

/// How often the store's version is polled, so changes made by another
/// control-plane replica reach this one's watchers too.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Handle to the latest built snapshot.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sealer: Sealer,
    defaults: crate::settings::Defaults,
    billing_utc_offset_seconds: i32,
    latest: watch::Sender<Option<Arc<pb::Snapshot>>>,
    /// One build at a time: builds side by side could publish an older
    /// version after a newer one, and nodes would briefly step back.
    building: tokio::sync::Mutex<()>,
    /// The store's signal that a change was committed.
    changed: std::sync::Arc<Notify>,
    /// Package and key usage as it changes, for every watcher.
    usage: broadcast::Sender<Arc<pb::UsageUpdate>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// How far back each usage poll looks beyond the previous one, so clock
/// skew between control-plane replicas loses no change (resending is harmless).
const USAGE_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

impl Publisher {
    pub fn new(
        store: Store,
        sealer: Sealer,
        defaults: crate::settings::Defaults,
        billing_utc_offset_seconds: i32,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let (latest, _) = watch::channel(None);
        let changed = store.changes();
        let (usage, _) = broadcast::channel(16);
        Self {
            inner: Arc::new(Inner {
                store,
                sealer,
                defaults,
                billing_utc_offset_seconds,
                latest,
                building: tokio::sync::Mutex::new(()),
                changed,
                usage,
                metrics,
            }),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<pb::Snapshot>>> {
        self.inner.latest.subscribe()
    }

    pub fn subscribe_usage(&self) -> broadcast::Receiver<Arc<pb::UsageUpdate>> {
        self.inner.usage.subscribe()
    }

    /// Pushes package and key usage that changed (by this replica's
    /// ingestion or another's) to every watcher, each `POLL_INTERVAL`.
    pub async fn run_usage(self, cancel: CancellationToken) {
        let mut since: DateTime<Utc> = Utc::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let polled_at = Utc::now();
            let store = &self.inner.store;
            let from = since - USAGE_OVERLAP;
            let update = async {
                let packages = store.packages_used_since(from).await?;
                let keys = store.keys_used_since(from).await?;
                StoreResult::Ok(pb::UsageUpdate {
                    packages: packages
                        .iter()
                        .map(|p| package_usage(p.id, &p.usage()))
                        .collect(),
                    keys: keys
                        .into_iter()
                        .map(|(key_id, cost)| pb::KeyUsage {
                            key_id,
                            cost_used: cost.to_string(),
                        })
                        .collect(),
                })
            };
            match update.await {
                Ok(update) => {
                    since = polled_at;
                    if !update.packages.is_empty() || !update.keys.is_empty() {
                        // No watcher is fine: nodes get the figures in their next snapshot.
                        let _ = self.inner.usage.send(Arc::new(update));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "usage poll failed"),
            }
        }
    }

    /// Builds once if nothing is published yet; then the loop keeps it fresh.
    pub async fn refresh(&self) -> StoreResult<()> {
        let _building = self.inner.building.lock().await;
        let version = self.inner.store.snapshot_version().await?;
        let current = self.inner.latest.borrow().as_ref().map(|s| s.version);
        if current != Some(version) {
            let started = std::time::Instant::now();
            let span = aiproxy_shared::traced_span!(
                "build_snapshot",
                version,
                accounts = tracing::field::Empty,
                api_keys = tracing::field::Empty,
                bytes = tracing::field::Empty,
            );
            let snapshot =
                tracing::Instrument::instrument(self.build(version), span.clone()).await?;
            span.record("accounts", snapshot.accounts.len())
                .record("api_keys", snapshot.api_keys.len())
                .record("bytes", prost::Message::encoded_len(&snapshot));
            self.inner
                .metrics
                .snapshot_built(started.elapsed(), prost::Message::encoded_len(&snapshot));
            tracing::info!(
                version,
                accounts = snapshot.accounts.len(),
                api_keys = snapshot.api_keys.len(),
                build_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            self.inner.latest.send_replace(Some(Arc::new(snapshot)));
        }
        Ok(())
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "snapshot refresh failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = self.inner.changed.notified() => {}
            }
        }
    }

    async fn build(&self, version: u64) -> StoreResult<pb::Snapshot> {
        let store = &self.inner.store;
        // Read side by side: the key table dominates, the rest overlaps it.
        let (accounts, keys, users, prices, packages, settings) = tokio::try_join!(
            store.list_accounts(),
            store.snapshot_keys(),
            store.list_users(),
            store.list_prices(),
            store.list_packages(None),
            crate::settings::SystemSettings::load(store, &self.inner.defaults),
        )?;
        let accounts = accounts
            .into_iter()
            .filter_map(|a| {
                let credentials = match self.open_credentials(&a.credentials_sealed) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(account_id = a.id, error = %e, "account credentials unreadable; account left out");
                        return None;
                    }
                };
                let proxy = match a.proxy_sealed.as_deref().map(|p| self.inner.sealer.open_text(p)).transpose() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(account_id = a.id, error = %e, "account proxy unreadable; account left out");
                        return None;
                    }
                };
                // Never publish what a node cannot use: one such entry
                // would otherwise be every node's problem.
                if let Some(problem) =
                    aiproxy_shared::domain::account_problem(&credentials, proxy.as_deref())
                {
                    tracing::error!(account_id = a.id, problem = %problem, "account left out of the snapshot");
                    return None;
                }
                Some(pb::Account {
                    id: a.id,
                    name: a.name,
                    kind: a.kind.as_str().to_string(),
                    base_url: a.base_url.unwrap_or_default(),
                    proxy_url: proxy.unwrap_or_default(),
                    credentials,
                    priority: a.priority,
                    max_concurrency: a.max_concurrency,
                    schedulable: a.enabled && a.status == AccountStatus::Valid,
                    rate_limit_reset_at_ms: a.rate_limit_reset_at.map(|t| t.timestamp_millis()).unwrap_or(0),
                    weight: a.weight.max(1) as u32,
                    bound_api_key_ids: a.bound_api_key_ids,
                    bound_user_ids: a.bound_user_ids,
                })
            })
            .collect();
        let api_keys = keys
            .into_iter()
            .filter_map(|k| {
                let hash = hex::decode(&k.key_hash).ok()?;
                Some(pb::ApiKey {
                    id: k.id,
                    user_id: k.user_id,
                    key_hash: hash,
                    active: k.active,
                    allowed_models: k.allowed_models,
                    rate_limit: k.rate_limit.max(0) as u32,
                    expires_at_ms: k.expires_at.map(|t| t.timestamp_millis()).unwrap_or(0),
                    billing_type: k.billing_type,
                    max_concurrency: k.max_concurrency.max(0) as u32,
                    cost_limit: limit_to_wire(k.cost_limit),
                    cost_used: k.cost_used.to_string(),
                    client_filter: k.client_filter.unwrap_or_default(),
                    allowed_clients: k.allowed_clients,
                })
            })
            .collect();
        let users = users
            .into_iter()
            .map(|u| pb::User {
                id: u.id,
                active: u.status == ActiveStatus::Active,
                price_rate: u.price_rate.to_string(),
                max_concurrency: u.max_concurrency.max(0) as u32,
            })
            .collect();
        let prices = prices
            .into_iter()
            .map(|p| pb::ModelPrice {
                model: p.model,
                input: p.input_price.to_string(),
                output: p.output_price.to_string(),
                cache_write_5m: p.cache_write_5m_price.to_string(),
                cache_write_1h: p.cache_write_1h_price.to_string(),
                cache_read: p.cache_read_price.to_string(),
                version: p.version as u64,
                long_context_threshold: p.long_context_threshold.max(0) as u64,
                long_input: p.long_input_price.to_string(),
                long_output: p.long_output_price.to_string(),
                long_cache_write_5m: p.long_cache_write_5m_price.to_string(),
                long_cache_write_1h: p.long_cache_write_1h_price.to_string(),
                long_cache_read: p.long_cache_read_price.to_string(),
            })
            .collect();
        Ok(pb::Snapshot {
            version,
            built_at_ms: chrono::Utc::now().timestamp_millis(),
            accounts,
            api_keys,
            users,
            prices,
            settings: Some(settings.relay(self.inner.billing_utc_offset_seconds)),
            packages: packages.iter().map(package).collect(),
        })
    }

    fn open_credentials(&self, sealed: &str) -> Result<HashMap<String, String>, String> {
        let plain = self.inner.sealer.open(sealed).map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }
}

/// A package's usage on the wire.
pub fn package_usage(id: i64, u: &PackageUsage) -> pb::PackageUsage {
    pb::PackageUsage {
        package_id: id,
        daily_used: u.daily_used.to_string(),
        weekly_used: u.weekly_used.to_string(),
        monthly_used: u.monthly_used.to_string(),
        day: u.day.map_or(0, |d| d.num_days_from_ce()),
        week: u.week.unwrap_or(0),
        month: u.month.unwrap_or(0),
        quota_used: u.quota_used.to_string(),
    }
}

fn package(p: &Package) -> pb::Package {
    let ms = |t: Option<DateTime<Utc>>| t.map_or(0, |t| t.timestamp_millis());
    pb::Package {
        id: p.id,
        user_id: p.user_id,
        kind: p.kind.as_str().to_string(),
        active: p.status == ActiveStatus::Active,
        starts_at_ms: ms(p.starts_at),
        expires_at_ms: ms(p.expires_at),
        allowed_models: p.allowed_models.clone(),
        daily_quota: limit_to_wire(p.daily_quota),
        weekly_quota: limit_to_wire(p.weekly_quota),
        monthly_quota: limit_to_wire(p.monthly_quota),
        quota_total: limit_to_wire(p.quota_total),
        usage: Some(package_usage(p.id, &p.usage())),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refreshes_side_by_side_never_publish_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let publisher = Publisher::new(
            store.clone(),
            Sealer::new("s"),
            Default::default(),
            0,
            Default::default(),
        );
        let mut rx = publisher.subscribe();
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                if let Some(s) = rx.borrow_and_update().as_ref() {
                    seen.push(s.version);
                }
            }
            seen
        });
        for _ in 0..20 {
            // A poll already building while an operator's change bumps the version.
            tokio::try_join!(publisher.refresh(), async {
                store.bump_snapshot_version().await?;
                publisher.refresh().await
            })
            .unwrap();
        }
        let last = store.snapshot_version().await.unwrap();
        drop(publisher);
        let seen = seen.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "published out of order: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&last));
    }
}
