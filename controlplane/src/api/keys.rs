//! `/api-keys`: the REST face of relay keys.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{JsonBody, PathId, QueryParams};
use crate::service::keys::{CreateKey, KeyCreated, KeyList, UpdateKey};
use crate::service::{Actor, ServiceResult, Services};
use crate::store::ApiKey;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins: one user's keys.
    pub(crate) user_id: Option<i64>,
}

/// List API keys (admins: all or `?user_id`; users: their own).
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", params(ListQuery),
    responses((status = 200, body = KeyList), super::Failures))]
pub async fn list(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<ListQuery>,
) -> ServiceResult<Json<KeyList>> {
    Ok(Json(s.list_keys(&actor, q.user_id).await?))
}

/// One API key.
#[utoipa::path(get, path = "/api-keys/{id}", tag = "api-keys", params(("id" = i64, Path)),
    responses((status = 200, body = ApiKey), super::Failures))]
pub async fn get_one(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<ApiKey>> {
    Ok(Json(s.get_key(&actor, id).await?))
}

/// Create an API key; the answer's `key` is the only time the plaintext is shown.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body = CreateKey,
    responses((status = 201, body = KeyCreated), super::Failures))]
pub async fn create(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<CreateKey>,
) -> ServiceResult<(StatusCode, Json<KeyCreated>)> {
    Ok((StatusCode::CREATED, Json(s.create_key(&actor, req).await?)))
}

/// Change an API key.
#[utoipa::path(patch, path = "/api-keys/{id}", tag = "api-keys", params(("id" = i64, Path)),
    request_body = UpdateKey, responses((status = 200, body = ApiKey), super::Failures))]
pub async fn update(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateKey>,
) -> ServiceResult<Json<ApiKey>> {
    Ok(Json(s.update_key(&actor, id, req).await?))
}

/// Delete an API key.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), super::Failures))]
pub async fn remove(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<StatusCode> {
    s.delete_key(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
