//! Account selection on this node: priority first, then least recently used,
//! skipping accounts that are off, rate-limited or at their concurrency limit.
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aiproxy_shared::domain::AccountKind;

use crate::snapshot::{AccountEntry, Snapshot};

#[derive(Default)]
struct AccountRuntime {
    in_flight: AtomicU32,
    /// Epoch ms until which an upstream rate limit keeps this account out.
    limited_until_ms: AtomicI64,
    /// Monotonic pick counter value of the last pick; lower = longer ago.
    last_pick: AtomicU64,
}

/// Per-node account state that outlives snapshots.
#[derive(Default)]
pub struct Scheduler {
    accounts: RwLock<HashMap<i64, Arc<AccountRuntime>>>,
    picks: AtomicU64,
}

/// A concurrency slot on an account, released on drop.
pub struct Lease {
    runtime: Arc<AccountRuntime>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.runtime.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Scheduler {
    fn runtime(&self, id: i64) -> Arc<AccountRuntime> {
        if let Some(r) = self.accounts.read().expect("scheduler lock").get(&id) {
            return r.clone();
        }
        self.accounts
            .write()
            .expect("scheduler lock")
            .entry(id)
            .or_default()
            .clone()
    }

    /// Keeps an account out of this node's picks until `until_ms` (epoch ms).
    pub fn mark_limited(&self, id: i64, until_ms: i64) {
        self.runtime(id)
            .limited_until_ms
            .fetch_max(until_ms, Ordering::AcqRel);
    }

    /// In-flight requests on an account, on this node.
    pub fn in_flight(&self, id: i64) -> u32 {
        self.accounts
            .read()
            .expect("scheduler lock")
            .get(&id)
            .map_or(0, |r| r.in_flight.load(Ordering::Acquire))
    }

    /// Picks an account of one of `kinds`, not in `exclude`, and takes a slot on it.
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        kinds: &[AccountKind],
        exclude: &[i64],
        now_ms: i64,
    ) -> Option<(Arc<AccountEntry>, Lease)> {
        let eligible = |a: &&Arc<AccountEntry>| {
            a.schedulable
                && kinds.contains(&a.kind)
                && a.rate_limit_reset_at_ms <= now_ms
                && !exclude.contains(&a.id)
        };
        // Accounts are sorted by priority; try one priority level at a time.
        let mut candidates: Vec<(&Arc<AccountEntry>, Arc<AccountRuntime>)> = Vec::new();
        let mut level = None;
        for account in snapshot.accounts.iter().filter(eligible) {
            if level.is_some_and(|p| p != account.priority) {
                if let Some(found) = self.take_least_recent(&mut candidates) {
                    return Some(found);
                }
                candidates.clear();
            }
            level = Some(account.priority);
            let runtime = self.runtime(account.id);
            if runtime.limited_until_ms.load(Ordering::Acquire) > now_ms {
                continue;
            }
            candidates.push((account, runtime));
        }
        self.take_least_recent(&mut candidates)
    }

    fn take_least_recent(
        &self,
        candidates: &mut [(&Arc<AccountEntry>, Arc<AccountRuntime>)],
    ) -> Option<(Arc<AccountEntry>, Lease)> {
        candidates.sort_by_key(|(a, r)| (r.last_pick.load(Ordering::Relaxed), a.id));
        for (account, runtime) in candidates.iter() {
            let max = account.max_concurrency;
            let reserved = runtime
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (max == 0 || n < max).then_some(n + 1)
                })
                .is_ok();
            if reserved {
                runtime.last_pick.store(
                    self.picks.fetch_add(1, Ordering::Relaxed) + 1,
                    Ordering::Relaxed,
                );
                return Some((
                    (*account).clone(),
                    Lease {
                        runtime: runtime.clone(),
                    },
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: i64, priority: i32, max: u32) -> Arc<AccountEntry> {
        Arc::new(AccountEntry {
            id,
            name: format!("a{id}"),
            kind: AccountKind::ClaudeApi,
            base_url: "http://x".into(),
            api_key: None,
            bearer: None,
            extra_headers: Vec::new(),
            proxy_url: None,
            project: None,
            priority,
            max_concurrency: max,
            schedulable: true,
            rate_limit_reset_at_ms: 0,
        })
    }

    fn snapshot(accounts: Vec<Arc<AccountEntry>>) -> Snapshot {
        Snapshot {
            version: 1,
            keys: HashMap::new(),
            users: HashMap::new(),
            accounts,
            prices: Default::default(),
            request_timeout_ms: 0,
        }
    }

    const CLAUDE: &[AccountKind] = &[AccountKind::ClaudeApi];

    #[test]
    fn spreads_over_equal_accounts_and_prefers_priority() {
        let s = snapshot(vec![
            account(1, 10, 0),
            account(2, 10, 0),
            account(3, 20, 0),
        ]);
        let sched = Scheduler::default();
        let mut counts = HashMap::new();
        for _ in 0..100 {
            let (a, _lease) = sched.pick(&s, CLAUDE, &[], 0).unwrap();
            *counts.entry(a.id).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&1), Some(&50));
        assert_eq!(counts.get(&2), Some(&50));
        assert_eq!(counts.get(&3), None);
    }

    #[test]
    fn full_excluded_and_limited_accounts_are_skipped() {
        let mut limited = (*account(3, 5, 0)).clone();
        limited.rate_limit_reset_at_ms = 10_000;
        let s = snapshot(vec![
            Arc::new(limited),
            account(1, 10, 1),
            account(2, 20, 1),
        ]);
        let sched = Scheduler::default();
        let (a, lease_a) = sched.pick(&s, CLAUDE, &[], 5_000).unwrap();
        assert_eq!(a.id, 1);
        let (b, lease_b) = sched.pick(&s, CLAUDE, &[], 5_000).unwrap();
        assert_eq!(b.id, 2, "account 1 is full, so the lower priority serves");
        assert!(sched.pick(&s, CLAUDE, &[], 5_000).is_none(), "all full");
        drop(lease_a);
        assert_eq!(sched.in_flight(1), 0);
        assert_eq!(
            sched.pick(&s, CLAUDE, &[1], 5_000).map(|(a, _)| a.id),
            None,
            "1 excluded, 2 full"
        );
        drop(lease_b);
        // A node-local rate-limit mark keeps it out until its reset.
        sched.mark_limited(3, 20_000);
        assert_eq!(sched.pick(&s, CLAUDE, &[], 15_000).unwrap().0.id, 1);
        // After the reset time the limited account is the first choice again.
        assert_eq!(sched.pick(&s, CLAUDE, &[], 20_000).unwrap().0.id, 3);
        assert!(
            sched
                .pick(&s, &[AccountKind::OpenAi], &[], 10_000)
                .is_none()
        );
    }
}
