//! Cross-node scheduling state: sticky sessions, concurrency leases, account
//! marks and key request rates, behind one trait with in-memory and Redis
//! backends that keep the same contract.
use std::future::Future;
use std::pin::Pin;

pub mod memory;
pub mod redis;
pub mod resilient;
pub mod sentinel;

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod contract;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use resilient::Resilient;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store unreachable: {0}")]
    Unreachable(String),
    #[error("state store answered unexpectedly: {0}")]
    Protocol(String),
}

pub type StoreResult<T> = Result<T, StateError>;
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// An account the request may use, as the snapshot describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    /// Lower is preferred.
    pub priority: i32,
    /// 0 is unlimited.
    pub max_concurrency: u32,
    /// Share of picks within its priority level when weights differ;
    /// equal weights mean least recently used.
    pub weight: u32,
}

/// Why an account is kept out of picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkKind {
    /// Failing (5xx, overloaded, refused credentials) for a short TTL.
    Unavailable,
    /// The upstream said when its limit resets.
    RateLimited,
}

impl MarkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKind::Unavailable => "unavailable",
            MarkKind::RateLimited => "rate_limited",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub account_id: i64,
    pub kind: MarkKind,
    /// Epoch ms at which the mark lapses.
    pub until_ms: i64,
    /// Error class, for the operator.
    pub reason: String,
}

/// A fail-over: the account slot to give back, and how to mark the account.
/// The key and user slots taken by the first call are kept.
#[derive(Clone, Debug)]
pub struct Retry {
    pub account_id: i64,
    pub mark: Option<Mark>,
}

/// One scheduling step: everything checked and taken in one round trip.
#[derive(Clone, Debug)]
pub struct ScheduleRequest<'a> {
    pub now_ms: i64,
    /// Unique per request; names its leases.
    pub lease: &'a str,
    pub lease_ttl_ms: u64,
    pub key_id: i64,
    /// Requests per minute; 0 is unlimited.
    pub key_rpm: u32,
    pub key_concurrency: u32,
    pub user_id: i64,
    pub user_concurrency: u32,
    /// Session hash; a binding is per key.
    pub session: Option<&'a str>,
    pub session_ttl_ms: u64,
    /// Ordered by priority, lower first.
    pub candidates: &'a [Candidate],
    /// Accounts that already failed this request.
    pub exclude: &'a [i64],
    /// Wait line of the accounts' pool: when every account is full the
    /// request queues here and later calls are served first come first served.
    pub queue: Option<&'a str>,
    /// How long a queued request keeps its place without calling again.
    pub queue_ttl_ms: u64,
    pub retry: Option<Retry>,
    /// Uniform in [0, 1), for weighted picks.
    pub random: f64,
}

/// Why a session left its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchReason {
    /// Disabled, removed, or not of a kind this request can use.
    NotSchedulable,
    /// Failed earlier in this same request.
    Failed,
    Unavailable,
    RateLimited,
}

impl SwitchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::NotSchedulable => "not_schedulable",
            SwitchReason::Failed => "failed",
            SwitchReason::Unavailable => "unavailable",
            SwitchReason::RateLimited => "rate_limited",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            SwitchReason::NotSchedulable,
            SwitchReason::Failed,
            SwitchReason::Unavailable,
            SwitchReason::RateLimited,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub from: i64,
    pub reason: SwitchReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Leases taken (account, and on a first call key, user and the RPM slot).
    Picked {
        account_id: i64,
        switched: Option<Switch>,
    },
    KeyRateLimited {
        retry_after_ms: u64,
    },
    KeyBusy,
    UserBusy,
    /// Usable accounts exist but all are at their limit (or others wait first).
    Full,
    /// No account can serve the request.
    NoAccount,
}

/// The leases one request holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub lease: String,
    /// 0 while no account slot is held.
    pub account_id: i64,
    pub user_id: i64,
    pub key_id: i64,
}

/// How a request ends, applied in one round trip: its leases given back, a
/// session bound, its account marked. With no `held`, only marks/binds.
#[derive(Clone, Debug, Default)]
pub struct Release<'a> {
    pub now_ms: i64,
    pub held: Option<&'a Held>,
    pub bind: Option<&'a Bind>,
    pub mark: Option<&'a Mark>,
}

/// A session binding to make when a request ends (a Responses id that a
/// later `previous_response_id` will name). The key is the held lease's.
#[derive(Clone, Debug)]
pub struct Bind {
    pub session: String,
    pub account_id: i64,
    pub ttl_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Account,
    User,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::User => "user",
            Scope::Key => "key",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Scope::Account => "ca",
            Scope::User => "cu",
            Scope::Key => "ck",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub key_id: i64,
    pub session: String,
    pub account_id: i64,
    pub ttl_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUse {
    pub scope: Scope,
    pub id: i64,
    pub count: u32,
}

/// What to clear: everything, or one id (and for sessions, one session).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub id: Option<i64>,
    pub session: Option<String>,
}

/// Shared scheduling state. Every method is one round trip to the backend.
pub trait StateStore: Send + Sync {
    /// Picks an account and takes the leases (see `ScheduleRequest`).
    fn schedule<'a>(&'a self, req: &'a ScheduleRequest<'a>) -> StoreFuture<'a, Outcome>;
    /// Ends a request (see `Release`).
    fn release<'a>(&'a self, end: &'a Release<'a>) -> StoreFuture<'a, ()>;
    /// Extends live leases (a node's heartbeat for its long requests).
    fn renew<'a>(&'a self, held: &'a [Held], now_ms: i64, ttl_ms: u64) -> StoreFuture<'a, ()>;
    /// A queued request that gives up leaves the line.
    fn leave_queue<'a>(&'a self, queue: &'a str, lease: &'a str) -> StoreFuture<'a, ()>;

    fn sessions(&self, key_id: Option<i64>, now_ms: i64) -> StoreFuture<'_, Vec<SessionEntry>>;
    fn clear_sessions<'a>(&'a self, filter: &'a Filter) -> StoreFuture<'a, u64>;
    fn in_use(&self, now_ms: i64) -> StoreFuture<'_, Vec<InUse>>;
    fn clear_in_use(&self, scope: Option<Scope>, id: Option<i64>) -> StoreFuture<'_, u64>;
    fn marks(&self, now_ms: i64) -> StoreFuture<'_, Vec<Mark>>;
    fn clear_marks(&self, kind: Option<MarkKind>, account_id: Option<i64>) -> StoreFuture<'_, u64>;
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Whether calls go to a node-local fallback now (Redis is away).
    fn degraded(&self) -> bool {
        false
    }
    /// Whether every call completes on its first poll (no I/O), so callers
    /// may run it inline instead of on a task.
    fn is_immediate(&self) -> bool {
        false
    }
}

/// Marks an account on its own (an operator, or a failure with no lease).
pub async fn mark_account(store: &dyn StateStore, mark: &Mark, now_ms: i64) -> StoreResult<()> {
    store
        .release(&Release {
            now_ms,
            mark: Some(mark),
            ..Default::default()
        })
        .await
}
