//! `/packages`, `/users/{id}/packages` and `/packages/{id}`: the REST face
//! of packages.
use aiproxy_shared::billing::PackageKind;
use aiproxy_shared::domain::ActiveStatus;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{JsonBody, PathId, QueryParams};
use crate::service::packages::{
    CreatePackage, PackageFilter, PackageList, ResetCount, UpdatePackage,
};
use crate::service::{Actor, ServiceResult, Services};
use crate::store::Package;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    user_id: Option<i64>,
    status: Option<ActiveStatus>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<PackageKind>,
}

/// Every user's packages for an admin (`?user_id=&status=&type=`), a user's own otherwise.
#[utoipa::path(get, path = "/packages", tag = "packages", params(ListQuery),
    responses((status = 200, body = PackageList), super::Failures))]
pub async fn list(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<ListQuery>,
) -> ServiceResult<Json<PackageList>> {
    let filter = PackageFilter {
        user_id: q.user_id,
        status: q.status,
        kind: q.kind,
    };
    Ok(Json(s.list_packages(&actor, filter).await?))
}

/// A user's packages.
#[utoipa::path(get, path = "/users/{id}/packages", tag = "packages", params(("id" = i64, Path)),
    responses((status = 200, body = PackageList), super::Failures))]
pub async fn list_for_user(
    State(s): State<Services>,
    actor: Actor,
    PathId(user_id): PathId,
) -> ServiceResult<Json<PackageList>> {
    Ok(Json(s.user_packages(&actor, user_id).await?))
}

/// Give a user a package (admins).
#[utoipa::path(post, path = "/users/{id}/packages", tag = "packages", params(("id" = i64, Path)),
    request_body = CreatePackage, responses((status = 201, body = Package), super::Failures))]
pub async fn create(
    State(s): State<Services>,
    actor: Actor,
    PathId(user_id): PathId,
    JsonBody(req): JsonBody<CreatePackage>,
) -> ServiceResult<(StatusCode, Json<Package>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.create_package(&actor, user_id, req).await?),
    ))
}

/// One package.
#[utoipa::path(get, path = "/packages/{id}", tag = "packages", params(("id" = i64, Path)),
    responses((status = 200, body = Package), super::Failures))]
pub async fn get_one(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<Package>> {
    Ok(Json(s.get_package(&actor, id).await?))
}

/// Change a package (admins).
#[utoipa::path(patch, path = "/packages/{id}", tag = "packages", params(("id" = i64, Path)),
    request_body = UpdatePackage, responses((status = 200, body = Package), super::Failures))]
pub async fn update(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdatePackage>,
) -> ServiceResult<Json<Package>> {
    Ok(Json(s.update_package(&actor, id, req).await?))
}

/// Delete a package (admins).
#[utoipa::path(delete, path = "/packages/{id}", tag = "packages", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), super::Failures))]
pub async fn remove(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<StatusCode> {
    s.delete_package(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Zero one package's usage (admins).
#[utoipa::path(post, path = "/packages/{id}/reset", tag = "packages", params(("id" = i64, Path)),
    responses((status = 200, body = Package), super::Failures))]
pub async fn reset(
    State(s): State<Services>,
    actor: Actor,
    PathId(id): PathId,
) -> ServiceResult<Json<Package>> {
    Ok(Json(s.reset_package(&actor, id).await?))
}

/// Zero the usage of every package of a user (admins).
#[utoipa::path(post, path = "/users/{id}/packages/reset", tag = "packages",
    params(("id" = i64, Path)), responses((status = 200, body = ResetCount), super::Failures))]
pub async fn reset_for_user(
    State(s): State<Services>,
    actor: Actor,
    PathId(user_id): PathId,
) -> ServiceResult<Json<ResetCount>> {
    Ok(Json(s.reset_user_packages(&actor, user_id).await?))
}
