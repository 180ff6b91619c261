//! Redis with a node-local fallback: while Redis is unreachable, scheduling
//! state lives in this node's memory, a warning is logged once per interval,
//! and Redis is tried again every second until it answers.
use crate::sync::LockExt;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    Filter, Held, InUse, Mark, MarkKind, MemoryStore, Outcome, RedisStore, Release,
    ScheduleRequest, Scope, SessionEntry, StateError, StateStore, StoreFuture,
};

const RETRY_EVERY: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(30);

pub struct Resilient {
    redis: RedisStore,
    local: MemoryStore,
    health: Mutex<Health>,
    /// Leases taken from the local store, released there too.
    local_leases: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Health {
    /// While set, calls go to the local store until this instant.
    retry_at: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Resilient {
    pub fn new(redis: RedisStore) -> Self {
        Resilient {
            redis,
            local: MemoryStore::default(),
            health: Mutex::new(Health::default()),
            local_leases: Mutex::new(HashSet::new()),
        }
    }

    /// Whether calls currently go to the node-local store.
    pub fn degraded(&self) -> bool {
        self.health.locked().retry_at.is_some()
    }

    fn try_redis(&self) -> bool {
        let health = self.health.locked();
        health.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    fn failed(&self, e: &StateError) {
        let now = Instant::now();
        let mut health = self.health.locked();
        health.retry_at = Some(now + RETRY_EVERY);
        if health
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            health.last_warning = Some(now);
            tracing::warn!(error = %e, "Redis unreachable: stickiness, concurrency and limits are node-local until it returns");
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.locked();
        if health.retry_at.take().is_some() {
            health.last_warning = None;
            tracing::info!("Redis reachable again: scheduling state is shared across nodes");
        }
    }

    fn is_local(&self, lease: &str) -> bool {
        self.local_leases.locked().contains(lease)
    }
}

impl StateStore for Resilient {
    fn schedule<'a>(&'a self, req: &'a ScheduleRequest<'a>) -> StoreFuture<'a, Outcome> {
        Box::pin(async move {
            if self.try_redis() && !self.is_local(req.lease) {
                match self.redis.schedule(req).await {
                    Ok(outcome) => {
                        self.succeeded();
                        return Ok(outcome);
                    }
                    Err(e) => self.failed(&e),
                }
            }
            let outcome = self.local.schedule(req).await?;
            if matches!(outcome, Outcome::Picked { .. }) {
                self.local_leases.locked().insert(req.lease.to_string());
            }
            Ok(outcome)
        })
    }

    fn release<'a>(&'a self, end: &'a Release<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let local = end
                .held
                .is_some_and(|h| self.local_leases.locked().remove(&h.lease));
            if local || !self.try_redis() {
                return self.local.release(end).await;
            }
            match self.redis.release(end).await {
                Ok(()) => {
                    self.succeeded();
                    Ok(())
                }
                // Redis leases expire by themselves; marks apply locally.
                Err(e) => {
                    self.failed(&e);
                    self.local.release(end).await
                }
            }
        })
    }

    fn renew<'a>(&'a self, held: &'a [Held], now_ms: i64, ttl_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (local, shared): (Vec<Held>, Vec<Held>) =
                held.iter().cloned().partition(|h| self.is_local(&h.lease));
            self.local.renew(&local, now_ms, ttl_ms).await?;
            if !shared.is_empty() && self.try_redis() {
                match self.redis.renew(&shared, now_ms, ttl_ms).await {
                    Ok(()) => self.succeeded(),
                    Err(e) => self.failed(&e),
                }
            }
            Ok(())
        })
    }

    fn leave_queue<'a>(&'a self, queue: &'a str, lease: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local.leave_queue(queue, lease).await?;
            if self.try_redis()
                && let Err(e) = self.redis.leave_queue(queue, lease).await
            {
                self.failed(&e);
            }
            Ok(())
        })
    }

    // The operator's views read the shared store only: a node's fallback
    // memory is not what the cluster does.
    fn sessions(&self, key_id: Option<i64>, now_ms: i64) -> StoreFuture<'_, Vec<SessionEntry>> {
        self.redis.sessions(key_id, now_ms)
    }

    fn clear_sessions<'a>(&'a self, filter: &'a Filter) -> StoreFuture<'a, u64> {
        self.redis.clear_sessions(filter)
    }

    fn in_use(&self, now_ms: i64) -> StoreFuture<'_, Vec<InUse>> {
        self.redis.in_use(now_ms)
    }

    fn clear_in_use(&self, scope: Option<Scope>, id: Option<i64>) -> StoreFuture<'_, u64> {
        self.redis.clear_in_use(scope, id)
    }

    fn marks(&self, now_ms: i64) -> StoreFuture<'_, Vec<Mark>> {
        self.redis.marks(now_ms)
    }

    fn clear_marks(&self, kind: Option<MarkKind>, account_id: Option<i64>) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let local = self.local.clear_marks(kind, account_id).await?;
            Ok(local + self.redis.clear_marks(kind, account_id).await?)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.redis.ping()
    }

    fn degraded(&self) -> bool {
        Resilient::degraded(self)
    }
}
