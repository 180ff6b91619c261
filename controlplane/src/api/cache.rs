//! `/cache`: the scheduling state every node shares (sessions, concurrency,
//! unavailable and rate-limited accounts), listed and cleared by operators.
use std::collections::HashMap;

use aiproxy_shared::state::{Filter, MarkKind, Scope, StateError};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, AuthUser, QueryParams};

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        ApiError::Unavailable(e.to_string())
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

#[derive(Deserialize)]
pub struct SessionQuery {
    key_id: Option<i64>,
    session: Option<String>,
}

pub async fn sessions(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<SessionQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let items: Vec<Value> = state
        .state
        .sessions(q.key_id, now_ms())
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "key_id": s.key_id,
                "session": s.session,
                "account_id": s.account_id,
                "ttl_seconds": ttl_seconds(s.ttl_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn clear_sessions(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<SessionQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let cleared = state
        .state
        .clear_sessions(&Filter {
            id: q.key_id,
            session: q.session,
        })
        .await?;
    tracing::info!(key_id = ?q.key_id, cleared, "sessions cleared by an operator");
    Ok(Json(json!({ "cleared": cleared })))
}

pub async fn concurrency(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let limits: HashMap<i64, (i32, String)> = state
        .store
        .list_accounts()
        .await?
        .into_iter()
        .map(|a| (a.id, (a.max_concurrency, a.name)))
        .collect();
    let (mut accounts, mut users, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for u in state.state.in_use(now_ms()).await? {
        match u.scope {
            Scope::Account => accounts.push(json!({
                "account_id": u.id,
                "in_use": u.count,
                "name": limits.get(&u.id).map(|l| &l.1),
                "max_concurrency": limits.get(&u.id).map(|l| l.0),
            })),
            Scope::User => users.push(json!({ "user_id": u.id, "in_use": u.count })),
            Scope::Key => keys.push(json!({ "key_id": u.id, "in_use": u.count })),
        }
    }
    Ok(Json(
        json!({ "accounts": accounts, "users": users, "keys": keys }),
    ))
}

#[derive(Deserialize)]
pub struct ConcurrencyQuery {
    scope: Option<String>,
    id: Option<i64>,
}

pub async fn clear_concurrency(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<ConcurrencyQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let scope = match q.scope.as_deref() {
        None => None,
        Some("account") => Some(Scope::Account),
        Some("user") => Some(Scope::User),
        Some("key") => Some(Scope::Key),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "scope must be account, user or key".into(),
            ));
        }
    };
    let cleared = state.state.clear_in_use(scope, q.id).await?;
    tracing::info!(scope = ?q.scope, id = ?q.id, cleared, "concurrency counters cleared by an operator");
    Ok(Json(json!({ "cleared": cleared })))
}

pub async fn unavailable(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let now = now_ms();
    let items: Vec<Value> = state
        .state
        .marks(now)
        .await?
        .into_iter()
        .filter(|m| m.kind == MarkKind::Unavailable)
        .map(|m| {
            json!({
                "account_id": m.account_id,
                "reason": m.reason,
                "until": time(m.until_ms),
                "ttl_seconds": ttl_seconds(m.until_ms - now),
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

#[derive(Deserialize)]
pub struct AccountQuery {
    account_id: Option<i64>,
}

pub async fn clear_unavailable(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<AccountQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let cleared = state
        .state
        .clear_marks(Some(MarkKind::Unavailable), q.account_id)
        .await?;
    tracing::info!(account_id = ?q.account_id, cleared, "unavailable marks cleared by an operator");
    Ok(Json(json!({ "cleared": cleared })))
}

/// Rate-limited accounts: the reset stored on the account, and the shared
/// mark the nodes act on (they agree unless one is being cleared).
pub async fn rate_limited(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let now = Utc::now();
    let marks: HashMap<i64, (i64, String)> = state
        .state
        .marks(now.timestamp_millis())
        .await?
        .into_iter()
        .filter(|m| m.kind == MarkKind::RateLimited)
        .map(|m| (m.account_id, (m.until_ms, m.reason)))
        .collect();
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for a in state.store.list_accounts().await? {
        let stored = a.rate_limit_reset_at.filter(|t| *t > now);
        let mark = marks.get(&a.id);
        if stored.is_none() && mark.is_none() {
            continue;
        }
        seen.insert(a.id);
        let reset_at = stored.max(mark.and_then(|(until, _)| time(*until)));
        items.push(json!({
            "account_id": a.id,
            "name": a.name,
            "reset_at": reset_at,
            "reason": mark.map(|(_, r)| r.as_str()),
        }));
    }
    for (id, (until, reason)) in marks.iter().filter(|(id, _)| !seen.contains(id)) {
        items.push(
            json!({ "account_id": id, "name": null, "reset_at": time(*until), "reason": reason }),
        );
    }
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn clear_rate_limited(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<AccountQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let cleared = state.store.clear_rate_limits(q.account_id).await?;
    let marks = state
        .state
        .clear_marks(Some(MarkKind::RateLimited), q.account_id)
        .await?;
    tracing::info!(account_id = ?q.account_id, cleared, marks, "rate limits cleared by an operator");
    Ok(Json(json!({ "cleared": cleared.max(marks) })))
}

/// After an operator puts an account back through the account itself, the
/// nodes must stop honouring the shared mark as well.
pub(super) async fn clear_account_marks(state: &ApiState, account_id: i64, kind: MarkKind) {
    if let Err(e) = state.state.clear_marks(Some(kind), Some(account_id)).await {
        tracing::warn!(account_id, error = %e, "could not clear the account's shared mark");
    }
}

/// `POST /cache/refresh`: every replica rebuilds the snapshot and every data
/// plane reloads it (the old system's scheduler refresh).
pub async fn refresh(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let version = state.store.bump_snapshot_version().await?;
    state.publisher.refresh().await?;
    tracing::info!(version, user = %auth.user.username, "snapshot refresh forced");
    Ok(Json(json!({ "version": version })))
}

/// `GET /nodes`: the data planes watching this control plane, the snapshot
/// version each applied (or why it refused one), and when it last answered.
pub async fn nodes(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let version = state.store.snapshot_version().await?;
    let items: Vec<Value> = crate::grpc::list_nodes(&state.nodes)
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(&n).unwrap_or_default();
            v["current"] = json!(n.applied_version == version);
            v
        })
        .collect();
    Ok(Json(
        json!({ "snapshot_version": version, "total": items.len(), "items": items }),
    ))
}
