//! `/api-keys`: CRUD of relay keys; the plaintext is returned once, at creation.
use std::str::FromStr;

use aiproxy_shared::keys::{hash_key_hex, new_api_key, visible_prefix};
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
use crate::store::{ApiKey, ApiKeyPatch, NewApiKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    user_id: Option<i64>,
    name: String,
    #[serde(default = "default_billing")]
    billing_type: String,
    cost_limit: Option<String>,
    #[serde(default)]
    rate_limit: i32,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    max_concurrency: i32,
    expires_at: Option<DateTime<Utc>>,
    /// Overrides the global client filter for this key (admins only).
    client_filter: Option<String>,
    #[serde(default)]
    allowed_clients: Vec<String>,
    /// The plaintext key, when an operator brings their own (admins only,
    /// e.g. from declarative configuration); otherwise one is generated.
    key: Option<String>,
}

fn default_billing() -> String {
    "package".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    name: Option<String>,
    status: Option<String>,
    billing_type: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    cost_limit: Option<Option<String>>,
    rate_limit: Option<i32>,
    allowed_models: Option<Vec<String>>,
    max_concurrency: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    client_filter: Option<Option<String>>,
    allowed_clients: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    user_id: Option<i64>,
}

fn check_billing(billing: &str) -> ApiResult<()> {
    match billing {
        "package" | "standalone" => Ok(()),
        _ => Err(ApiError::BadRequest(
            "billing_type must be package or standalone".into(),
        )),
    }
}

fn parse_limit(limit: &str) -> ApiResult<Decimal> {
    let v = Decimal::from_str(limit.trim())
        .map_err(|_| ApiError::BadRequest("cost_limit must be a decimal".into()))?;
    if v.is_sign_negative() {
        return Err(ApiError::BadRequest(
            "cost_limit must not be negative".into(),
        ));
    }
    Ok(v)
}

fn check_client_filter(mode: Option<&str>, clients: &[String]) -> ApiResult<()> {
    if let Some(mode) = mode
        && !matches!(mode, "off" | "simple" | "strict")
    {
        return Err(ApiError::BadRequest(
            "client_filter must be off, simple or strict (or null to follow the settings)".into(),
        ));
    }
    if let Some(bad) = clients
        .iter()
        .find(|c| !crate::settings::CLIENTS.contains(&c.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "allowed_clients entry {bad} is not one of {}",
            crate::settings::CLIENTS.join(", ")
        )));
    }
    Ok(())
}

/// A key an operator brings: long enough to be unguessable, printable ASCII.
fn check_plaintext(key: &str) -> ApiResult<()> {
    if !(24..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "key must be 24 to 128 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

/// Loads a key the caller may see: any for admins, their own for users.
async fn visible_key(state: &ApiState, auth: &AuthUser, id: i64) -> ApiResult<ApiKey> {
    let key = state.store.get_api_key(id).await?;
    if !auth.is_admin() && key.user_id != auth.user.id {
        return Err(ApiError::NotFound("not found"));
    }
    Ok(key)
}

pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let user_id = auth.listing_scope(q.user_id);
    let items = state.store.list_api_keys(user_id).await?;
    let total = items.len();
    Ok(Json(json!({ "items": items, "total": total })))
}

pub async fn get_one(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(visible_key(&state, &auth, id).await?))
}

pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The management token acts as no user: it must say whose key it is.
    let user_id = match (req.user_id, auth.user.id) {
        (Some(id), _) => id,
        (None, 0) => return Err(ApiError::BadRequest("user_id is required".into())),
        (None, own) => own,
    };
    auth.require_self_or_admin(user_id)?;
    check_name(&req.name)?;
    check_billing(&req.billing_type)?;
    check_models(&req.allowed_models)?;
    if req.rate_limit < 0 || req.max_concurrency < 0 {
        return Err(ApiError::BadRequest(
            "rate_limit and max_concurrency must not be negative".into(),
        ));
    }
    check_client_filter(req.client_filter.as_deref(), &req.allowed_clients)?;
    // Limits and billing are the operator's: a user's own key draws on
    // their packages, with no other terms.
    let sets_terms = req.billing_type != default_billing()
        || req.cost_limit.is_some()
        || req.rate_limit != 0
        || !req.allowed_models.is_empty()
        || req.max_concurrency != 0
        || req.client_filter.is_some()
        || !req.allowed_clients.is_empty()
        || req.key.is_some();
    if sets_terms {
        auth.require_admin()?;
    }
    let plaintext = match req.key {
        Some(k) => {
            check_plaintext(&k)?;
            k
        }
        None => new_api_key(),
    };
    let key = state
        .store
        .create_api_key(&NewApiKey {
            user_id,
            name: req.name.trim().to_string(),
            key_hash: hash_key_hex(&plaintext),
            key_prefix: visible_prefix(&plaintext),
            billing_type: req.billing_type,
            cost_limit: req.cost_limit.as_deref().map(parse_limit).transpose()?,
            rate_limit: req.rate_limit,
            allowed_models: req.allowed_models,
            max_concurrency: req.max_concurrency,
            client_filter: req.client_filter,
            allowed_clients: req.allowed_clients,
            expires_at: req.expires_at,
        })
        .await?;
    let mut body = serde_json::to_value(&key).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["key"] = Value::String(plaintext);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn update(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateKey>,
) -> ApiResult<Json<ApiKey>> {
    let current = visible_key(&state, &auth, id).await?;
    // An administrator's disable holds until an administrator lifts it.
    let enabling = req.status.as_deref() == Some("active");
    if enabling && !auth.is_admin() && current.disabled_by_admin {
        return Err(ApiError::Forbidden(
            "this key was disabled by an administrator; only an administrator can enable it",
        ));
    }
    let disabled_by_admin = match req.status.as_deref() {
        Some(status) if auth.is_admin() => Some(status == "disabled"),
        _ => None,
    };
    if let Some(name) = &req.name {
        check_name(name)?;
    }
    if let Some(status) = &req.status {
        check_status(status)?;
    }
    if let Some(b) = &req.billing_type {
        check_billing(b)?;
    }
    if let Some(m) = &req.allowed_models {
        check_models(m)?;
    }
    // Limits are the operator's to set; a user may rename, disable or re-enable their key.
    let changes_limits = req.billing_type.is_some()
        || req.cost_limit.is_some()
        || req.rate_limit.is_some()
        || req.allowed_models.is_some()
        || req.max_concurrency.is_some()
        || req.expires_at.is_some()
        || req.client_filter.is_some()
        || req.allowed_clients.is_some();
    check_client_filter(
        req.client_filter.as_ref().and_then(|m| m.as_deref()),
        req.allowed_clients.as_deref().unwrap_or_default(),
    )?;
    if changes_limits {
        auth.require_admin()?;
    }
    let patch = ApiKeyPatch {
        name: req.name.map(|n| n.trim().to_string()),
        status: req.status,
        disabled_by_admin,
        by_owner: !auth.is_admin(),
        billing_type: req.billing_type,
        cost_limit: req
            .cost_limit
            .map(|c| c.as_deref().map(parse_limit).transpose())
            .transpose()?,
        rate_limit: req.rate_limit.map(|r| r.max(0)),
        allowed_models: req.allowed_models,
        max_concurrency: req.max_concurrency.map(|c| c.max(0)),
        client_filter: req.client_filter,
        allowed_clients: req.allowed_clients,
        expires_at: req.expires_at,
    };
    let key = state.store.update_api_key(id, &patch).await?;
    Ok(Json(key))
}

pub async fn remove(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    visible_key(&state, &auth, id).await?;
    state.store.delete_api_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
