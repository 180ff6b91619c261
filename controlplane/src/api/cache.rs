//! `/cache` and `/nodes`: the REST face of the shared scheduling state and
//! the data planes.
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::QueryParams;
use crate::service::cache::{
    Cleared, Concurrency, LoadScope, NodeList, RateLimitedList, Refreshed, SessionList,
    UnavailableList,
};
use crate::service::{Actor, ServiceResult, Services};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    pub(crate) key_id: Option<i64>,
    /// One session hash (with `key_id`).
    pub(crate) session: Option<String>,
}

/// Sticky sessions: key, session hash, account, seconds left (admins).
#[utoipa::path(get, path = "/cache/sessions", tag = "cache", params(SessionQuery),
    responses((status = 200, body = SessionList), super::Failures))]
pub async fn sessions(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<SessionQuery>,
) -> ServiceResult<Json<SessionList>> {
    Ok(Json(s.cached_sessions(&actor, q.key_id).await?))
}

/// Clear all sessions, a key's, or one (admins).
#[utoipa::path(delete, path = "/cache/sessions", tag = "cache", params(SessionQuery),
    responses((status = 200, body = Cleared), super::Failures))]
pub async fn clear_sessions(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<SessionQuery>,
) -> ServiceResult<Json<Cleared>> {
    Ok(Json(s.clear_sessions(&actor, q.key_id, q.session).await?))
}

/// Requests in flight per account (with its limit), user and key, across nodes (admins).
#[utoipa::path(get, path = "/cache/concurrency", tag = "cache",
    responses((status = 200, body = Concurrency), super::Failures))]
pub async fn concurrency(
    State(s): State<Services>,
    actor: Actor,
) -> ServiceResult<Json<Concurrency>> {
    Ok(Json(s.concurrency(&actor).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConcurrencyQuery {
    #[param(inline)]
    pub(crate) scope: Option<LoadScope>,
    pub(crate) id: Option<i64>,
}

/// Reset concurrency counters (admins).
#[utoipa::path(delete, path = "/cache/concurrency", tag = "cache", params(ConcurrencyQuery),
    responses((status = 200, body = Cleared), super::Failures))]
pub async fn clear_concurrency(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<ConcurrencyQuery>,
) -> ServiceResult<Json<Cleared>> {
    Ok(Json(s.clear_concurrency(&actor, q.scope, q.id).await?))
}

/// Accounts marked unavailable, why and until when (admins).
#[utoipa::path(get, path = "/cache/unavailable", tag = "cache",
    responses((status = 200, body = UnavailableList), super::Failures))]
pub async fn unavailable(
    State(s): State<Services>,
    actor: Actor,
) -> ServiceResult<Json<UnavailableList>> {
    Ok(Json(s.unavailable_accounts(&actor).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    pub(crate) account_id: Option<i64>,
}

/// Put unavailable accounts back (admins).
#[utoipa::path(delete, path = "/cache/unavailable", tag = "cache", params(AccountQuery),
    responses((status = 200, body = Cleared), super::Failures))]
pub async fn clear_unavailable(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<AccountQuery>,
) -> ServiceResult<Json<Cleared>> {
    Ok(Json(s.clear_unavailable(&actor, q.account_id).await?))
}

/// Rate-limited accounts and their reset times (admins).
#[utoipa::path(get, path = "/cache/rate-limited", tag = "cache",
    responses((status = 200, body = RateLimitedList), super::Failures))]
pub async fn rate_limited(
    State(s): State<Services>,
    actor: Actor,
) -> ServiceResult<Json<RateLimitedList>> {
    Ok(Json(s.rate_limited_accounts(&actor).await?))
}

/// Lift rate limits, stored and shared (admins).
#[utoipa::path(delete, path = "/cache/rate-limited", tag = "cache", params(AccountQuery),
    responses((status = 200, body = Cleared), super::Failures))]
pub async fn clear_rate_limited(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<AccountQuery>,
) -> ServiceResult<Json<Cleared>> {
    Ok(Json(s.clear_rate_limited(&actor, q.account_id).await?))
}

/// Rebuild the snapshot and push it to every data plane (admins).
#[utoipa::path(post, path = "/cache/refresh", tag = "cache",
    responses((status = 200, body = Refreshed), super::Failures))]
pub async fn refresh(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<Refreshed>> {
    Ok(Json(s.refresh_snapshot(&actor).await?))
}

/// The data planes watching this control plane and the snapshot each applied (admins).
#[utoipa::path(get, path = "/nodes", tag = "cache",
    responses((status = 200, body = NodeList), super::Failures))]
pub async fn nodes(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<NodeList>> {
    Ok(Json(s.nodes(&actor).await?))
}
