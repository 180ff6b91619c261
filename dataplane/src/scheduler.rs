//! Account selection for one request: candidates from the snapshot, one
//! state-store round trip to pick and lease (sticky session, priority, least
//! recently used), a fair wait when every account is full, fail-over, and the
//! leases held until the response ends.
use aiproxy_shared::sync::LockExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::state::{
    Bind, Candidate, Held, Mark, Outcome, Release, Retry, ScheduleRequest, StateStore, Switch,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::errors::RelayError;
use crate::settings::Effective;
use crate::snapshot::{AccountEntry, KeyEntry, Snapshot, UserEntry};

/// How often a waiting request asks again when no local release wakes it.
const WAIT_POLL: Duration = Duration::from_millis(100);

pub use crate::settings::SchedulerSettings;

/// Picks accounts and holds this node's leases; its TTLs and waits are
/// those of the snapshot a request is served from.
pub(crate) struct Scheduler {
    store: Arc<dyn StateStore>,
    /// Leases of this node's requests in flight, renewed in one call per beat.
    live: Mutex<HashMap<String, Held>>,
    /// Wakes local waiters when a local request ends.
    released: Notify,
    lease_prefix: String,
    next_lease: AtomicU64,
    /// Requests waiting for a free account now.
    waiting: AtomicU64,
    /// Times each state-store call.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Counts a request among the waiting while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request asks of the scheduler.
pub(crate) struct Ask<'a> {
    pub key: &'a KeyEntry,
    pub user: &'a UserEntry,
    pub kinds: &'a [AccountKind],
    /// Session hash, when the request belongs to one.
    pub session: Option<&'a str>,
    /// Name of the wait line of the accounts this request can use.
    pub pool: &'static str,
    pub now_ms: i64,
}

/// The leases one request holds. Dropping it gives them back (in the
/// background), binding `bind` and applying `mark` in the same call.
pub(crate) struct Lease {
    scheduler: Arc<Scheduler>,
    held: Held,
    pub bind: Option<Bind>,
    pub mark: Option<Mark>,
}

impl Lease {
    #[cfg(test)]
    pub fn account_id(&self) -> i64 {
        self.held.account_id
    }

    /// Binds `session` to the leased account for `ttl` when the request ends.
    pub fn bind_session(&mut self, session: String, ttl: Duration) {
        if self.held.account_id != 0 {
            self.bind = Some(Bind {
                session,
                account_id: self.held.account_id,
                ttl_ms: ttl.as_millis() as u64,
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let scheduler = self.scheduler.clone();
        scheduler.live.locked().remove(&self.held.lease);
        let (held, bind, mark) = (self.held.clone(), self.bind.take(), self.mark.take());
        // The in-memory store answers at once: release here, without a task.
        if scheduler.store.is_immediate() {
            let end = Release {
                now_ms: now_ms(),
                held: Some(&held),
                bind: bind.as_ref(),
                mark: mark.as_ref(),
            };
            let mut release = scheduler.store.release(&end);
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            if let std::task::Poll::Ready(Err(e)) = release.as_mut().poll(&mut cx) {
                tracing::warn!(error = %e, "could not give back a lease; it lapses after concurrency_ttl");
            }
            scheduler.released.notify_waiters();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: the lease lapses after its TTL.
            return;
        };
        runtime.spawn(async move {
            let end = Release {
                now_ms: now_ms(),
                held: Some(&held),
                bind: bind.as_ref(),
                mark: mark.as_ref(),
            };
            let started = Instant::now();
            let released = scheduler.store.release(&end).await;
            scheduler.metrics.store_call("release", started.elapsed());
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not give back a lease; it lapses after concurrency_ttl");
            }
            scheduler.released.notify_waiters();
        });
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn log_switch(switch: Option<Switch>, to: i64, session: Option<&str>) {
    if let Some(s) = switch {
        tracing::info!(
            session = session.unwrap_or_default(),
            from_account = s.from,
            to_account = to,
            reason = s.reason.as_str(),
            "sticky session moved to another account"
        );
    }
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn StateStore>,
        node_id: &str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        // Unique across nodes and restarts of one node.
        let lease_prefix = format!("{node_id}:{}", aiproxy_shared::keys::random_hex(4));
        Scheduler {
            store,
            live: Mutex::default(),
            released: Notify::new(),
            lease_prefix,
            next_lease: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            metrics,
        }
    }

    /// Accounts of a compatible kind that are in service: those reserved for
    /// this key or user if any, else the shared ones, by priority.
    fn candidates(snapshot: &Snapshot, ask: &Ask<'_>) -> (Vec<Candidate>, bool) {
        let usable = |a: &&Arc<AccountEntry>| {
            a.schedulable && ask.kinds.contains(&a.kind) && a.rate_limit_reset_at_ms <= ask.now_ms
        };
        let to_candidate = |a: &Arc<AccountEntry>| Candidate {
            id: a.id,
            priority: a.priority,
            max_concurrency: a.max_concurrency,
            weight: a.weight,
        };
        let dedicated: Vec<Candidate> = snapshot
            .accounts
            .iter()
            .filter(usable)
            .filter(|a| {
                a.bound_key_ids.contains(&ask.key.id) || a.bound_user_ids.contains(&ask.user.id)
            })
            .map(to_candidate)
            .collect();
        if !dedicated.is_empty() {
            return (dedicated, true);
        }
        let shared = snapshot
            .accounts
            .iter()
            .filter(usable)
            .filter(|a| !a.is_dedicated())
            .map(to_candidate)
            .collect();
        (shared, false)
    }

    fn request<'a>(
        settings: &Effective,
        ask: &'a Ask<'a>,
        lease: &'a str,
        candidates: &'a [Candidate],
        queue: Option<&'a str>,
    ) -> ScheduleRequest<'a> {
        ScheduleRequest {
            now_ms: ask.now_ms,
            lease,
            lease_ttl_ms: settings.lease_ttl.as_millis() as u64,
            key_id: ask.key.id,
            key_rpm: ask.key.rate_limit,
            key_concurrency: ask.key.max_concurrency,
            user_id: ask.user.id,
            user_concurrency: ask.user.max_concurrency,
            session: ask.session,
            session_ttl_ms: settings.session_ttl.as_millis() as u64,
            candidates,
            exclude: &[],
            queue,
            queue_ttl_ms: (WAIT_POLL * 10).as_millis() as u64,
            retry: None,
            random: random_unit(),
        }
    }

    fn account(snapshot: &Snapshot, id: i64) -> Option<Arc<AccountEntry>> {
        snapshot.accounts.iter().find(|a| a.id == id).cloned()
    }

    /// Leases this node's requests hold now.
    pub(crate) fn leases_in_use(&self) -> usize {
        self.live.locked().len()
    }

    /// Requests waiting for a free account now.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    fn hold(self: &Arc<Self>, held: Held) -> Lease {
        self.live.locked().insert(held.lease.clone(), held.clone());
        Lease {
            scheduler: self.clone(),
            held,
            bind: None,
            mark: None,
        }
    }

    /// Picks an account and takes the leases, waiting (first come, first
    /// served) up to `wait_timeout` while every usable account is full.
    pub async fn acquire(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        ask: &Ask<'_>,
    ) -> Result<(Arc<AccountEntry>, Lease), RelayError> {
        // Even with no candidate the store is asked: the key's rate limit
        // answers first.
        let (candidates, dedicated) = Self::candidates(snapshot, ask);
        let lease = format!(
            "{}:{}",
            self.lease_prefix,
            self.next_lease.fetch_add(1, Ordering::Relaxed)
        );
        let pool_name;
        let wait_timeout = snapshot.settings.wait_timeout;
        let queue = if wait_timeout.is_zero() {
            None
        } else if dedicated {
            pool_name = format!("{}:k{}", ask.pool, ask.key.id);
            Some(pool_name.as_str())
        } else {
            Some(ask.pool)
        };
        let deadline = Instant::now() + wait_timeout;
        let mut req = Self::request(&snapshot.settings, ask, &lease, &candidates, queue);
        let mut waiting = None;
        loop {
            let started = Instant::now();
            let outcome = self.store.schedule(&req).await;
            self.metrics.store_call("schedule", started.elapsed());
            let outcome = outcome.map_err(|e| {
                tracing::error!(error = %e, "state store failed");
                RelayError::no_account()
            })?;
            match outcome {
                Outcome::Picked {
                    account_id,
                    switched,
                } => {
                    log_switch(switched, account_id, ask.session);
                    let lease = self.hold(Held {
                        lease: lease.clone(),
                        account_id,
                        user_id: ask.user.id,
                        key_id: ask.key.id,
                    });
                    // The snapshot that listed the candidate still holds it.
                    let account =
                        Self::account(snapshot, account_id).ok_or_else(RelayError::no_account)?;
                    return Ok((account, lease));
                }
                Outcome::KeyRateLimited { retry_after_ms } => {
                    return Err(RelayError::rate_limited(retry_after_ms.div_ceil(1000)));
                }
                Outcome::KeyBusy => return Err(RelayError::concurrency_exceeded("API key")),
                Outcome::UserBusy => return Err(RelayError::concurrency_exceeded("user")),
                Outcome::NoAccount => return Err(RelayError::no_account()),
                Outcome::Full => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || queue.is_none() {
                        if let Some(q) = queue {
                            let _ = self.store.leave_queue(q, &lease).await;
                        }
                        return Err(RelayError::accounts_busy());
                    }
                    waiting.get_or_insert_with(|| Waiting::new(&self.waiting));
                    tokio::select! {
                        _ = self.released.notified() => {}
                        _ = tokio::time::sleep(WAIT_POLL.min(left)) => {}
                    }
                    req.now_ms = now_ms();
                    req.random = random_unit();
                }
            }
        }
    }

    /// Gives back the failed account's slot, marks it, and picks another
    /// account in the same round trip. `None` when no other can serve.
    pub async fn fail_over(
        &self,
        snapshot: &Snapshot,
        ask: &Ask<'_>,
        lease: &mut Lease,
        tried: &[i64],
        mark: Option<Mark>,
    ) -> Option<Arc<AccountEntry>> {
        let (candidates, _) = Self::candidates(snapshot, ask);
        let lease_id = lease.held.lease.clone();
        let mut req = Self::request(&snapshot.settings, ask, &lease_id, &candidates, None);
        req.now_ms = now_ms();
        req.exclude = tried;
        req.retry = Some(Retry {
            account_id: lease.held.account_id,
            mark,
        });
        let started = Instant::now();
        let outcome = self.store.schedule(&req).await;
        self.metrics.store_call("fail_over", started.elapsed());
        let picked = match outcome {
            Ok(Outcome::Picked {
                account_id,
                switched,
            }) => {
                log_switch(switched, account_id, ask.session);
                Some(account_id)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "state store failed during fail-over");
                None
            }
        };
        lease.held.account_id = picked.unwrap_or(0);
        self.live.locked().insert(lease_id, lease.held.clone());
        picked.and_then(|id| Self::account(snapshot, id))
    }

    /// Marks an account for every node (a failure with no fail-over call).
    pub async fn mark(&self, mark: &Mark) {
        if let Err(e) = aiproxy_shared::state::mark_account(&*self.store, mark, now_ms()).await {
            tracing::warn!(account_id = mark.account_id, error = %e, "could not mark an account");
        }
    }

    /// Renews this node's leases every third of their TTL, so requests that
    /// outlive `concurrency_ttl` keep their slots while a dead node's lapse.
    /// `settings` are the settings in force, as the snapshot holder announces them.
    pub async fn run_renewals(
        self: Arc<Self>,
        mut settings: watch::Receiver<Effective>,
        cancel: CancellationToken,
    ) {
        // False once the holder is gone (at shutdown): the last TTL holds.
        let mut listening = true;
        loop {
            let every = (settings.borrow().lease_ttl / 3).max(Duration::from_secs(1));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                // A shorter TTL must not wait out a sleep timed for the old one.
                changed = settings.changed(), if listening => listening = changed.is_ok(),
            }
            let held: Vec<Held> = self.live.locked().values().cloned().collect();
            if held.is_empty() {
                continue;
            }
            let ttl = settings.borrow().lease_ttl.as_millis() as u64;
            let started = Instant::now();
            let renewed = self.store.renew(&held, now_ms(), ttl).await;
            self.metrics.store_call("renew", started.elapsed());
            if let Err(e) = renewed {
                tracing::warn!(error = %e, leases = held.len(), "could not renew leases");
            }
        }
    }
}

/// Uniform in [0, 1) from a cheap thread-local generator (no crypto needed).
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::getrandom(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use aiproxy_shared::state::{
        Filter, InUse, MarkKind, MemoryStore, Scope, SessionEntry, StoreFuture,
    };

    use super::*;

    /// Counts the calls that would each be one Redis round trip.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        schedules: AtomicUsize,
        releases: AtomicUsize,
        renewals: AtomicUsize,
    }

    impl StateStore for Counting {
        fn schedule<'a>(&'a self, req: &'a ScheduleRequest<'a>) -> StoreFuture<'a, Outcome> {
            self.schedules.fetch_add(1, Ordering::SeqCst);
            self.inner.schedule(req)
        }
        fn release<'a>(&'a self, end: &'a Release<'a>) -> StoreFuture<'a, ()> {
            self.releases.fetch_add(1, Ordering::SeqCst);
            self.inner.release(end)
        }
        fn renew<'a>(&'a self, held: &'a [Held], now_ms: i64, ttl_ms: u64) -> StoreFuture<'a, ()> {
            self.renewals.fetch_add(1, Ordering::SeqCst);
            self.inner.renew(held, now_ms, ttl_ms)
        }
        fn leave_queue<'a>(&'a self, queue: &'a str, lease: &'a str) -> StoreFuture<'a, ()> {
            self.inner.leave_queue(queue, lease)
        }
        fn sessions(&self, key_id: Option<i64>, now_ms: i64) -> StoreFuture<'_, Vec<SessionEntry>> {
            self.inner.sessions(key_id, now_ms)
        }
        fn clear_sessions<'a>(&'a self, filter: &'a Filter) -> StoreFuture<'a, u64> {
            self.inner.clear_sessions(filter)
        }
        fn in_use(&self, now_ms: i64) -> StoreFuture<'_, Vec<InUse>> {
            self.inner.in_use(now_ms)
        }
        fn clear_in_use(&self, scope: Option<Scope>, id: Option<i64>) -> StoreFuture<'_, u64> {
            self.inner.clear_in_use(scope, id)
        }
        fn marks(&self, now_ms: i64) -> StoreFuture<'_, Vec<Mark>> {
            self.inner.marks(now_ms)
        }
        fn clear_marks(
            &self,
            kind: Option<MarkKind>,
            account_id: Option<i64>,
        ) -> StoreFuture<'_, u64> {
            self.inner.clear_marks(kind, account_id)
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.inner.ping()
        }
    }

    fn snapshot(accounts: Vec<AccountEntry>) -> Snapshot {
        Snapshot {
            accounts: accounts.into_iter().map(Arc::new).collect(),
            ..Snapshot::for_tests()
        }
    }

    fn account(id: i64, bound_keys: Vec<i64>) -> AccountEntry {
        AccountEntry {
            id,
            bound_key_ids: bound_keys,
            ..AccountEntry::for_tests(AccountKind::ClaudeApi)
        }
    }

    fn key(id: i64) -> KeyEntry {
        KeyEntry::for_tests(id, 1)
    }

    fn user() -> UserEntry {
        UserEntry {
            id: 1,
            active: true,
            price_rate: rust_decimal::Decimal::ONE,
            max_concurrency: 0,
        }
    }

    fn scheduler(store: Arc<dyn StateStore>) -> Arc<Scheduler> {
        Arc::new(Scheduler::new(store, "node", Default::default()))
    }

    fn ask<'a>(key: &'a KeyEntry, user: &'a UserEntry) -> Ask<'a> {
        Ask {
            key,
            user,
            kinds: &[AccountKind::ClaudeApi],
            session: None,
            pool: "anthropic_messages",
            now_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    #[tokio::test]
    async fn one_store_call_before_the_upstream_and_one_after() {
        let store = Arc::new(Counting::default());
        let sched = scheduler(store.clone());
        let s = snapshot(vec![account(1, vec![]), account(2, vec![])]);
        let (k, u) = (key(5), user());
        let (picked, lease) = sched.acquire(&s, &ask(&k, &u)).await.unwrap();
        assert_eq!(picked.id, lease.account_id());
        assert_eq!(store.schedules.load(Ordering::SeqCst), 1);
        assert_eq!(store.releases.load(Ordering::SeqCst), 0);
        drop(lease);
        for _ in 0..50 {
            if store.releases.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(store.releases.load(Ordering::SeqCst), 1);
        assert_eq!(store.schedules.load(Ordering::SeqCst), 1);
        assert!(store.in_use(0).await.unwrap().is_empty(), "all given back");
    }

    #[tokio::test]
    async fn dedicated_accounts_serve_only_their_keys() {
        let sched = scheduler(Arc::new(MemoryStore::default()));
        let s = snapshot(vec![account(1, vec![]), account(2, vec![7])]);
        let u = user();
        let (owner, other) = (key(7), key(8));
        for _ in 0..4 {
            let (a, _lease) = sched.acquire(&s, &ask(&owner, &u)).await.unwrap();
            assert_eq!(a.id, 2, "a bound key uses its own account");
            let (b, _lease) = sched.acquire(&s, &ask(&other, &u)).await.unwrap();
            assert_eq!(b.id, 1, "other keys never get a dedicated account");
        }
        // A fail-over from the only shared account finds nothing else.
        let (_, mut lease) = sched.acquire(&s, &ask(&other, &u)).await.unwrap();
        assert!(
            sched
                .fail_over(&s, &ask(&other, &u), &mut lease, &[1], None)
                .await
                .is_none()
        );
        assert_eq!(lease.account_id(), 0);
    }

    #[tokio::test]
    async fn a_shorter_lease_ttl_is_followed_at_once() {
        let store = Arc::new(Counting::default());
        let sched = scheduler(store.clone());
        let s = snapshot(vec![account(1, vec![])]);
        let (k, u) = (key(5), user());
        let (_, _lease) = sched.acquire(&s, &ask(&k, &u)).await.unwrap();
        // Renewals every 20 s under a one-minute TTL…
        let (settings, announced) = watch::channel(Effective::for_tests());
        let cancel = CancellationToken::new();
        let renewals = tokio::spawn(sched.clone().run_renewals(announced, cancel.clone()));
        tokio::task::yield_now().await;
        assert_eq!(store.renewals.load(Ordering::SeqCst), 0);
        // …until the TTL drops to 3 s: the lease is renewed now, not in 20 s.
        settings.send_modify(|s| s.lease_ttl = Duration::from_secs(3));
        tokio::time::timeout(Duration::from_secs(2), async {
            while store.renewals.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the lease was renewed at once under the shorter TTL");
        cancel.cancel();
        renewals.await.unwrap();
    }
}
