//! `/users`: the REST face of users.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{JsonBody, PathId};
use crate::service::users::{CreateUser, UpdateUser, UserList};
use crate::service::{Actor, ServiceResult, Services};
use crate::store::User;

/// List users (admins).
#[utoipa::path(get, path = "/users", tag = "users",
    responses((status = 200, body = UserList), super::Failures))]
pub async fn list(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<UserList>> {
    Ok(Json(s.list_users(&actor).await?))
}

/// One user (admins, or the user themselves).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = User), super::Failures))]
pub async fn get_one(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<User>> {
    Ok(Json(s.get_user(&actor, id).await?))
}

/// Create a user (admins).
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User), super::Failures))]
pub async fn create(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<CreateUser>,
) -> ServiceResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(s.create_user(&actor, req).await?)))
}

/// Change a user (admins).
#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = i64, Path)),
    request_body = UpdateUser, responses((status = 200, body = User), super::Failures))]
pub async fn update(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateUser>,
) -> ServiceResult<Json<User>> {
    Ok(Json(s.update_user(&actor, id, req).await?))
}

/// Delete a user (admins).
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), super::Failures))]
pub async fn remove(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<StatusCode> {
    s.delete_user(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
