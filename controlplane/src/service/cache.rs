//! The scheduling state every node shares (sticky sessions, requests in
//! flight, unavailable and rate-limited accounts), listed and cleared by
//! operators; forcing a snapshot push; the data planes watching.
use std::collections::{HashMap, HashSet};

use aiproxy_shared::state::{Filter, MarkKind, Scope, StateError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services};

impl From<StateError> for ServiceError {
    fn from(e: StateError) -> Self {
        ServiceError::Unavailable(e.to_string())
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn ttl_seconds(ms: i64) -> i64 {
    (ms + 999) / 1000
}

/// A conversation bound to an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBinding {
    pub key_id: i64,
    pub session: String,
    pub account_id: i64,
    pub ttl_seconds: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionBinding>,
    pub total: usize,
}

/// How many entries an operation cleared.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cleared {
    pub cleared: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountLoad {
    pub account_id: i64,
    pub in_use: u32,
    pub name: Option<String>,
    pub max_concurrency: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserLoad {
    pub user_id: i64,
    pub in_use: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyLoad {
    pub key_id: i64,
    pub in_use: u32,
}

/// Requests in flight across nodes, by account, user and key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Concurrency {
    pub accounts: Vec<AccountLoad>,
    pub users: Vec<UserLoad>,
    pub keys: Vec<KeyLoad>,
}

/// Whose counters to clear.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadScope {
    Account,
    User,
    Key,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnavailableAccount {
    pub account_id: i64,
    pub reason: String,
    pub until: Option<DateTime<Utc>>,
    pub ttl_seconds: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnavailableList {
    pub items: Vec<UnavailableAccount>,
    pub total: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitedAccount {
    pub account_id: i64,
    pub name: Option<String>,
    pub reset_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitedList {
    pub items: Vec<RateLimitedAccount>,
    pub total: usize,
}

/// The snapshot version every node is now asked to apply.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refreshed {
    pub version: u64,
}

/// A data plane watching this control plane.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub applied_version: u64,
    /// It applied the latest snapshot.
    pub current: bool,
    /// Why it refused the last snapshot it was sent.
    pub last_error: String,
    /// Entries of the applied snapshot it could not use and left out (or
    /// fenced off), with reasons.
    pub dropped: Vec<String>,
    pub last_seen: DateTime<Utc>,
    /// What it last reported of itself (release, snapshot age, load,
    /// undelivered usage); absent until its first report.
    pub report: Option<crate::grpc::NodeReportView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub snapshot_version: u64,
    pub items: Vec<NodeView>,
    pub total: usize,
}

impl Services {
    pub async fn cached_sessions(
        &self,
        actor: &Actor,
        key_id: Option<i64>,
    ) -> ServiceResult<SessionList> {
        actor.require_admin()?;
        let items: Vec<SessionBinding> = self
            .state
            .sessions(key_id, now_ms())
            .await?
            .into_iter()
            .map(|s| SessionBinding {
                key_id: s.key_id,
                session: s.session,
                account_id: s.account_id,
                ttl_seconds: ttl_seconds(s.ttl_ms),
            })
            .collect();
        Ok(SessionList {
            total: items.len(),
            items,
        })
    }

    /// Clears every binding, a key's, or one session.
    pub async fn clear_sessions(
        &self,
        actor: &Actor,
        key_id: Option<i64>,
        session: Option<String>,
    ) -> ServiceResult<Cleared> {
        actor.require_admin()?;
        let cleared = self
            .state
            .clear_sessions(&Filter {
                id: key_id,
                session,
            })
            .await?;
        tracing::info!(key_id = ?key_id, cleared, "sessions cleared by an operator");
        Ok(Cleared { cleared })
    }

    pub async fn concurrency(&self, actor: &Actor) -> ServiceResult<Concurrency> {
        actor.require_admin()?;
        let limits: HashMap<i64, (i32, String)> = self
            .store
            .list_accounts()
            .await?
            .into_iter()
            .map(|a| (a.id, (a.max_concurrency, a.name)))
            .collect();
        let mut load = Concurrency {
            accounts: Vec::new(),
            users: Vec::new(),
            keys: Vec::new(),
        };
        for u in self.state.in_use(now_ms()).await? {
            match u.scope {
                Scope::Account => load.accounts.push(AccountLoad {
                    account_id: u.id,
                    in_use: u.count,
                    name: limits.get(&u.id).map(|l| l.1.clone()),
                    max_concurrency: limits.get(&u.id).map(|l| l.0),
                }),
                Scope::User => load.users.push(UserLoad {
                    user_id: u.id,
                    in_use: u.count,
                }),
                Scope::Key => load.keys.push(KeyLoad {
                    key_id: u.id,
                    in_use: u.count,
                }),
            }
        }
        Ok(load)
    }

    pub async fn clear_concurrency(
        &self,
        actor: &Actor,
        scope: Option<LoadScope>,
        id: Option<i64>,
    ) -> ServiceResult<Cleared> {
        actor.require_admin()?;
        let scope = scope.map(|s| match s {
            LoadScope::Account => Scope::Account,
            LoadScope::User => Scope::User,
            LoadScope::Key => Scope::Key,
        });
        let cleared = self.state.clear_in_use(scope, id).await?;
        tracing::info!(scope = ?scope, id = ?id, cleared, "concurrency counters cleared by an operator");
        Ok(Cleared { cleared })
    }

    pub async fn unavailable_accounts(&self, actor: &Actor) -> ServiceResult<UnavailableList> {
        actor.require_admin()?;
        let now = now_ms();
        let items: Vec<UnavailableAccount> = self
            .state
            .marks(now)
            .await?
            .into_iter()
            .filter(|m| m.kind == MarkKind::Unavailable)
            .map(|m| UnavailableAccount {
                account_id: m.account_id,
                reason: m.reason,
                until: time(m.until_ms),
                ttl_seconds: ttl_seconds(m.until_ms - now),
            })
            .collect();
        Ok(UnavailableList {
            total: items.len(),
            items,
        })
    }

    pub async fn clear_unavailable(
        &self,
        actor: &Actor,
        account_id: Option<i64>,
    ) -> ServiceResult<Cleared> {
        actor.require_admin()?;
        let cleared = self
            .state
            .clear_marks(Some(MarkKind::Unavailable), account_id)
            .await?;
        tracing::info!(account_id = ?account_id, cleared, "unavailable marks cleared by an operator");
        Ok(Cleared { cleared })
    }

    /// Rate-limited accounts: the reset stored on the account, and the
    /// shared mark the nodes act on (they agree unless one is being cleared).
    pub async fn rate_limited_accounts(&self, actor: &Actor) -> ServiceResult<RateLimitedList> {
        actor.require_admin()?;
        let now = Utc::now();
        let marks: HashMap<i64, (i64, String)> = self
            .state
            .marks(now.timestamp_millis())
            .await?
            .into_iter()
            .filter(|m| m.kind == MarkKind::RateLimited)
            .map(|m| (m.account_id, (m.until_ms, m.reason)))
            .collect();
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        for a in self.store.list_accounts().await? {
            let stored = a.rate_limit_reset_at.filter(|t| *t > now);
            let mark = marks.get(&a.id);
            if stored.is_none() && mark.is_none() {
                continue;
            }
            seen.insert(a.id);
            items.push(RateLimitedAccount {
                account_id: a.id,
                name: Some(a.name),
                reset_at: stored.max(mark.and_then(|(until, _)| time(*until))),
                reason: mark.map(|(_, r)| r.clone()),
            });
        }
        for (id, (until, reason)) in marks.iter().filter(|(id, _)| !seen.contains(id)) {
            items.push(RateLimitedAccount {
                account_id: *id,
                name: None,
                reset_at: time(*until),
                reason: Some(reason.clone()),
            });
        }
        Ok(RateLimitedList {
            total: items.len(),
            items,
        })
    }

    pub async fn clear_rate_limited(
        &self,
        actor: &Actor,
        account_id: Option<i64>,
    ) -> ServiceResult<Cleared> {
        actor.require_admin()?;
        let cleared = self.store.clear_rate_limits(account_id).await?;
        let marks = self
            .state
            .clear_marks(Some(MarkKind::RateLimited), account_id)
            .await?;
        tracing::info!(account_id = ?account_id, cleared, marks, "rate limits cleared by an operator");
        Ok(Cleared {
            cleared: cleared.max(marks),
        })
    }

    /// After an operator puts an account back through the account itself,
    /// the nodes must stop honouring the shared mark as well.
    pub(crate) async fn clear_account_marks(&self, account_id: i64, kind: MarkKind) {
        if let Err(e) = self.state.clear_marks(Some(kind), Some(account_id)).await {
            tracing::warn!(account_id, error = %e, "could not clear the account's shared mark");
        }
    }

    /// Every replica rebuilds the snapshot and every data plane reloads it
    /// (the old system's scheduler refresh).
    pub async fn refresh_snapshot(&self, actor: &Actor) -> ServiceResult<Refreshed> {
        actor.require_admin()?;
        let version = self.store.bump_snapshot_version().await?;
        self.publisher.refresh().await?;
        tracing::info!(version, user = %actor.name(), "snapshot refresh forced");
        Ok(Refreshed { version })
    }

    /// The data planes watching this control plane, the snapshot version
    /// each applied (or why it refused one), and when it last answered.
    pub async fn nodes(&self, actor: &Actor) -> ServiceResult<NodeList> {
        actor.require_admin()?;
        let version = self.store.snapshot_version().await?;
        let items: Vec<NodeView> = crate::grpc::list_nodes(&self.nodes)
            .into_iter()
            .map(|n| NodeView {
                current: n.applied_version == version,
                node_id: n.node_id,
                applied_version: n.applied_version,
                last_error: n.last_error,
                dropped: n.dropped,
                last_seen: n.last_seen,
                report: n.report,
            })
            .collect();
        Ok(NodeList {
            snapshot_version: version,
            total: items.len(),
            items,
        })
    }
}
