//! `/accounts`: the REST face of upstream accounts.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{JsonBody, PathId, QueryParams};
use crate::health::CheckReport;
use crate::service::accounts::{
    AccountList, AccountView, CreateAccount, ResetCount, UpdateAccount,
};
use crate::service::{Actor, ServiceResult, Services};

/// List accounts (admins).
#[utoipa::path(get, path = "/accounts", tag = "accounts",
    responses((status = 200, body = AccountList), super::Failures))]
pub async fn list(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<AccountList>> {
    Ok(Json(s.list_accounts(&actor).await?))
}

/// One account (admins).
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts", params(("id" = i64, Path)),
    responses((status = 200, body = AccountView), super::Failures))]
pub async fn get_one(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<AccountView>> {
    Ok(Json(s.get_account(&actor, id).await?))
}

/// Add an account (admins); its credentials are sealed and never shown again.
#[utoipa::path(post, path = "/accounts", tag = "accounts", request_body = CreateAccount,
    responses((status = 201, body = AccountView), super::Failures))]
pub async fn create(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<CreateAccount>,
) -> ServiceResult<(StatusCode, Json<AccountView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.create_account(&actor, req).await?),
    ))
}

/// Change an account (admins).
#[utoipa::path(patch, path = "/accounts/{id}", tag = "accounts", params(("id" = i64, Path)),
    request_body = UpdateAccount, responses((status = 200, body = AccountView), super::Failures))]
pub async fn update(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateAccount>,
) -> ServiceResult<Json<AccountView>> {
    Ok(Json(s.update_account(&actor, id, req).await?))
}

/// Delete an account (admins).
#[utoipa::path(delete, path = "/accounts/{id}", tag = "accounts", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), super::Failures))]
pub async fn remove(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<StatusCode> {
    s.delete_account(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Back in service: reason cleared, shared unavailable mark lifted (admins).
#[utoipa::path(post, path = "/accounts/{id}/enable", tag = "accounts", params(("id" = i64, Path)),
    responses((status = 200, body = AccountView), super::Failures))]
pub async fn enable(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<AccountView>> {
    Ok(Json(s.set_account_enabled(&actor, id, true).await?))
}

/// Out of service until enabled again (admins).
#[utoipa::path(post, path = "/accounts/{id}/disable", tag = "accounts", params(("id" = i64, Path)),
    responses((status = 200, body = AccountView), super::Failures))]
pub async fn disable(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<AccountView>> {
    Ok(Json(s.set_account_enabled(&actor, id, false).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResetQuery {
    /// Also put the account(s) back in service.
    #[serde(default)]
    pub enable: bool,
}

/// Error count to 0 and rate limit lifted, stored and shared (admins).
#[utoipa::path(post, path = "/accounts/{id}/reset", tag = "accounts",
    params(("id" = i64, Path), ResetQuery),
    responses((status = 200, body = AccountView), super::Failures))]
pub async fn reset(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
    QueryParams(q): QueryParams<ResetQuery>,
) -> ServiceResult<Json<AccountView>> {
    Ok(Json(s.reset_account(&actor, id, q.enable).await?))
}

/// The same reset for every account (admins).
#[utoipa::path(post, path = "/accounts/reset", tag = "accounts", params(ResetQuery),
    responses((status = 200, body = ResetCount), super::Failures))]
pub async fn reset_all(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<ResetQuery>,
) -> ServiceResult<Json<ResetCount>> {
    Ok(Json(s.reset_all_accounts(&actor, q.enable).await?))
}

/// Runs the account's health check now and records it (admins).
#[utoipa::path(post, path = "/accounts/{id}/test", tag = "accounts", params(("id" = i64, Path)),
    responses((status = 200, body = CheckReport), super::Failures))]
pub async fn test(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<CheckReport>> {
    Ok(Json(s.test_account(&actor, id).await?))
}
