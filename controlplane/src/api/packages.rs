//! `/packages`, `/users/{id}/packages` and `/packages/{id}`: users'
//! subscriptions and quota packages, and resetting what they have used.
use std::str::FromStr;

use aiproxy_shared::billing::PackageKind;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, ApiState, AuthUser, JsonBody, PathId, QueryParams, check_models,
    check_status, double_option,
};
use crate::store::{NewPackage, Package, PackagePatch};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePackage {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    daily_quota: Option<String>,
    weekly_quota: Option<String>,
    monthly_quota: Option<String>,
    quota_total: Option<String>,
    #[serde(default)]
    allowed_models: Vec<String>,
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackage {
    name: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    daily_quota: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    weekly_quota: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    monthly_quota: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    quota_total: Option<Option<String>>,
    allowed_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    expires_at: Option<Option<DateTime<Utc>>>,
}

fn amount(field: &str, v: Option<&str>) -> ApiResult<Option<Decimal>> {
    let Some(v) = v else { return Ok(None) };
    let d = Decimal::from_str(v.trim())
        .map_err(|_| ApiError::BadRequest(format!("{field} must be a decimal string (USD)")))?;
    if d.is_sign_negative() {
        return Err(ApiError::BadRequest(format!(
            "{field} must not be negative"
        )));
    }
    Ok(Some(d))
}

/// A package must be able to limit something.
fn check_shape(p: &Package) -> ApiResult<()> {
    match p.kind.parse::<PackageKind>() {
        Ok(PackageKind::Subscription)
            if p.daily_quota.is_none() && p.weekly_quota.is_none() && p.monthly_quota.is_none() =>
        {
            Err(ApiError::BadRequest(
                "a subscription needs daily_quota, weekly_quota or monthly_quota".into(),
            ))
        }
        Ok(PackageKind::Quota) if p.quota_total.is_none() => Err(ApiError::BadRequest(
            "a quota package needs quota_total".into(),
        )),
        Ok(_) => Ok(()),
        Err(refusal) => Err(ApiError::BadRequest(refusal.into())),
    }
}

/// Loads a package the caller may see: any for admins, their own for users.
async fn visible(state: &ApiState, auth: &AuthUser, id: i64) -> ApiResult<Package> {
    let package = state.store.get_package(id).await?;
    if !auth.is_admin() && package.user_id != auth.user.id {
        return Err(ApiError::NotFound("not found"));
    }
    Ok(package)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user_id: Option<i64>,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `GET /packages?user_id=&status=&type=`: every user's packages for an
/// admin, a user's own otherwise.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let user_id = auth.listing_scope(q.user_id);
    let items: Vec<Package> = state
        .store
        .list_packages(user_id)
        .await?
        .into_iter()
        .filter(|p| q.status.as_ref().is_none_or(|s| &p.status == s))
        .filter(|p| q.kind.as_ref().is_none_or(|k| &p.kind == k))
        .collect();
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn list_for_user(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(user_id): PathId,
) -> ApiResult<Json<Value>> {
    auth.require_self_or_admin(user_id)?;
    let items = state.store.list_packages(Some(user_id)).await?;
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(user_id): PathId,
    JsonBody(req): JsonBody<CreatePackage>,
) -> ApiResult<(StatusCode, Json<Package>)> {
    auth.require_admin()?;
    state.store.get_user(user_id).await?;
    if req.name.trim().is_empty() || req.name.len() > 128 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    check_models(&req.allowed_models)?;
    let new = NewPackage {
        user_id,
        name: req.name.trim().to_string(),
        kind: req.kind,
        daily_quota: amount("daily_quota", req.daily_quota.as_deref())?,
        weekly_quota: amount("weekly_quota", req.weekly_quota.as_deref())?,
        monthly_quota: amount("monthly_quota", req.monthly_quota.as_deref())?,
        quota_total: amount("quota_total", req.quota_total.as_deref())?,
        allowed_models: req.allowed_models,
        starts_at: req.starts_at,
        expires_at: req.expires_at,
    };
    let shape = Package {
        id: 0,
        user_id,
        name: new.name.clone(),
        kind: new.kind.clone(),
        status: "active".into(),
        daily_quota: new.daily_quota,
        weekly_quota: new.weekly_quota,
        monthly_quota: new.monthly_quota,
        daily_used: Decimal::ZERO,
        weekly_used: Decimal::ZERO,
        monthly_used: Decimal::ZERO,
        quota_total: new.quota_total,
        quota_used: Decimal::ZERO,
        last_reset_day: None,
        last_reset_week: None,
        last_reset_month: None,
        allowed_models: Vec::new(),
        starts_at: None,
        expires_at: None,
        usage_reset_at: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    check_shape(&shape)?;
    let package = state.store.create_package(&new).await?;
    tracing::info!(package_id = package.id, user_id, "package created");
    Ok((StatusCode::CREATED, Json(package)))
}

pub async fn get_one(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    Ok(Json(visible(&state, &auth, id).await?))
}

pub async fn update(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdatePackage>,
) -> ApiResult<Json<Package>> {
    auth.require_admin()?;
    let current = state.store.get_package(id).await?;
    if let Some(status) = &req.status {
        check_status(status)?;
    }
    if let Some(models) = &req.allowed_models {
        check_models(models)?;
    }
    let opt = |field: &str, v: &Option<Option<String>>| -> ApiResult<Option<Option<Decimal>>> {
        match v {
            None => Ok(None),
            Some(v) => Ok(Some(amount(field, v.as_deref())?)),
        }
    };
    let patch = PackagePatch {
        name: req.name.map(|n| n.trim().to_string()),
        status: req.status,
        daily_quota: opt("daily_quota", &req.daily_quota)?,
        weekly_quota: opt("weekly_quota", &req.weekly_quota)?,
        monthly_quota: opt("monthly_quota", &req.monthly_quota)?,
        quota_total: opt("quota_total", &req.quota_total)?,
        allowed_models: req.allowed_models,
        starts_at: req.starts_at,
        expires_at: req.expires_at,
    };
    let mut shape = current.clone();
    shape.daily_quota = patch.daily_quota.unwrap_or(shape.daily_quota);
    shape.weekly_quota = patch.weekly_quota.unwrap_or(shape.weekly_quota);
    shape.monthly_quota = patch.monthly_quota.unwrap_or(shape.monthly_quota);
    shape.quota_total = patch.quota_total.unwrap_or(shape.quota_total);
    check_shape(&shape)?;
    let package = state.store.update_package(id, &patch).await?;
    Ok(Json(package))
}

pub async fn remove(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state.store.delete_package(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Zeroes one package's usage (periods and quota).
pub async fn reset(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    auth.require_admin()?;
    state.store.reset_package_usage(Some(id), None).await?;
    tracing::info!(package_id = id, by = %auth.user.username, "package usage reset");
    Ok(Json(state.store.get_package(id).await?))
}

/// Zeroes the usage of every package of a user (the seed's reset recipe).
pub async fn reset_for_user(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(user_id): PathId,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let reset = state.store.reset_package_usage(None, Some(user_id)).await?;
    tracing::info!(user_id, reset, by = %auth.user.username, "package usage reset");
    Ok(Json(json!({ "reset": reset })))
}
