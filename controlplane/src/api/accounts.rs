//! `/accounts`: admin CRUD of upstream accounts; credentials are write-only.
use std::collections::BTreeMap;

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::http::{ProxyUrl, mask_proxy_url};
use aiproxy_shared::state::MarkKind;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody, PathId, double_option};
use crate::store::{Account, AccountPatch, NewAccount};

type Credentials = BTreeMap<String, String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    base_url: Option<String>,
    proxy_url: Option<String>,
    credentials: Credentials,
    #[serde(default = "default_priority")]
    priority: i32,
    #[serde(default)]
    max_concurrency: i32,
    #[serde(default = "default_weight")]
    weight: i32,
    #[serde(default)]
    bound_api_key_ids: Vec<i64>,
    #[serde(default)]
    bound_user_ids: Vec<i64>,
    #[serde(default = "default_true")]
    enabled: bool,
}

fn default_weight() -> i32 {
    1
}

fn check_weight(weight: i32) -> ApiResult<()> {
    if !(1..=1000).contains(&weight) {
        return Err(ApiError::BadRequest(
            "weight must be between 1 and 1000".into(),
        ));
    }
    Ok(())
}

fn default_priority() -> i32 {
    50
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    name: Option<String>,
    enabled: Option<bool>,
    status: Option<String>,
    /// Merged into the stored credentials; a field set to "" is removed.
    credentials: Option<Credentials>,
    #[serde(default, deserialize_with = "double_option")]
    base_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    proxy_url: Option<Option<String>>,
    priority: Option<i32>,
    max_concurrency: Option<i32>,
    weight: Option<i32>,
    bound_api_key_ids: Option<Vec<i64>>,
    bound_user_ids: Option<Vec<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_limit_reset_at: Option<Option<DateTime<Utc>>>,
    consecutive_error_count: Option<i32>,
}

fn check_url(field: &str, url: &Option<String>, schemes: &[&str]) -> ApiResult<()> {
    if let Some(url) = url {
        let ok = schemes.iter().any(|s| {
            url.strip_prefix(s)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|h| !h.is_empty())
        });
        if !ok || url.len() > 512 {
            return Err(ApiError::BadRequest(format!(
                "{field} must be a {} URL",
                schemes.join("/")
            )));
        }
    }
    Ok(())
}

fn check_credentials(kind: AccountKind, creds: &Credentials) -> ApiResult<()> {
    if let Some(problem) = aiproxy_shared::domain::credentials_problem(creds) {
        return Err(ApiError::BadRequest(problem));
    }
    for field in kind.required_credentials() {
        if creds.get(*field).is_none_or(|v| v.trim().is_empty()) {
            return Err(ApiError::BadRequest(format!(
                "credentials.{field} is required for {} accounts",
                kind.as_str()
            )));
        }
    }
    Ok(())
}

/// Shows which credential fields are set, never their values: at most the
/// last four characters of a long one.
fn mask(creds: &Credentials) -> Value {
    let masked: BTreeMap<&str, String> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), aiproxy_shared::keys::mask_tail(v)))
        .collect();
    json!(masked)
}

/// Checks a proxy URL with the parser the relay uses, and seals it: it may
/// carry a password.
fn seal_proxy(state: &ApiState, url: &str) -> ApiResult<String> {
    let url = url.trim();
    if url.len() > 512 {
        return Err(ApiError::BadRequest(
            "proxy_url must be at most 512 characters".into(),
        ));
    }
    ProxyUrl::parse(url).map_err(|e| ApiError::BadRequest(format!("proxy_url: {e}")))?;
    Ok(state.sealer.seal(url.as_bytes()))
}

fn open(state: &ApiState, account: &Account) -> ApiResult<Credentials> {
    let plain = state
        .sealer
        .open(&account.credentials_sealed)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    serde_json::from_slice(&plain).map_err(|e| ApiError::Internal(e.to_string()))
}

fn view(state: &ApiState, account: &Account) -> ApiResult<Value> {
    let mut body = serde_json::to_value(account).map_err(|e| ApiError::Internal(e.to_string()))?;
    let proxy = account
        .proxy_sealed
        .as_deref()
        .map(|p| state.sealer.open_text(p))
        .transpose();
    let (credentials, problem) = match (open(state, account), &proxy) {
        (Ok(creds), Ok(proxy)) => (
            mask(&creds),
            aiproxy_shared::domain::account_problem(&creds, proxy.as_deref()),
        ),
        (creds, _) => (
            creds.map_or_else(
                |_| json!({ "error": "unreadable with the current secret key" }),
                |c| mask(&c),
            ),
            Some("credentials or proxy are unreadable with the current secret key".into()),
        ),
    };
    body["credentials"] = credentials;
    body["proxy_url"] = json!(proxy.ok().flatten().map(|p| mask_proxy_url(&p)));
    // Why data planes are not sent this account, if they are not.
    body["publish_error"] = json!(problem);
    Ok(body)
}

/// A token written by hand may already be close to expiry: refresh it now
/// rather than at the next scan.
fn refresh_if_due(state: &ApiState, kind: AccountKind, id: i64) {
    if kind.is_oauth() {
        let refresher = state.refresher.clone();
        tokio::spawn(async move {
            if let Err(e) = refresher.refresh(id, None).await {
                tracing::warn!(account_id = id, error = %e, "token refresh after account change failed");
            }
        });
    }
}

fn seal(state: &ApiState, creds: &Credentials) -> String {
    state
        .sealer
        .seal(&serde_json::to_vec(creds).expect("map serializes"))
}

pub async fn list(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let accounts = state.store.list_accounts().await?;
    let items = accounts
        .iter()
        .map(|a| view(&state, a))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn get_one(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    Ok(Json(view(&state, &state.store.get_account(id).await?)?))
}

pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<CreateAccount>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require_admin()?;
    let kind = AccountKind::parse(&req.kind).ok_or_else(|| {
        let kinds: Vec<_> = AccountKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::BadRequest(format!("type must be one of {}", kinds.join(", ")))
    })?;
    if req.name.trim().is_empty() || req.name.len() > 128 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    check_url("base_url", &req.base_url, &["http", "https"])?;
    let proxy_sealed = req
        .proxy_url
        .as_deref()
        .map(|url| seal_proxy(&state, url))
        .transpose()?;
    check_weight(req.weight)?;
    let mut credentials = req.credentials;
    check_credentials(kind, &credentials)?;
    crate::oauth::complete_credentials(kind, &mut credentials);
    let account = state
        .store
        .create_account(&NewAccount {
            name: req.name.trim().to_string(),
            kind: kind.as_str().to_string(),
            credentials_sealed: seal(&state, &credentials),
            base_url: req.base_url.map(|u| u.trim_end_matches('/').to_string()),
            proxy_sealed,
            priority: req.priority,
            max_concurrency: req.max_concurrency.max(0),
            weight: req.weight,
            bound_api_key_ids: req.bound_api_key_ids,
            bound_user_ids: req.bound_user_ids,
            enabled: req.enabled,
        })
        .await?;
    tracing::info!(
        account_id = account.id,
        kind = kind.as_str(),
        "account created"
    );
    refresh_if_due(&state, kind, account.id);
    Ok((StatusCode::CREATED, Json(view(&state, &account)?)))
}

pub async fn update(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateAccount>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let current = state.store.get_account(id).await?;
    if let Some(Some(url)) = &req.base_url {
        check_url("base_url", &Some(url.clone()), &["http", "https"])?;
    }
    let proxy_sealed = match &req.proxy_url {
        Some(Some(url)) => Some(Some(seal_proxy(&state, url)?)),
        Some(None) => Some(None),
        None => None,
    };
    if let Some(weight) = req.weight {
        check_weight(weight)?;
    }
    if let Some(status) = &req.status
        && !matches!(status.as_str(), "valid" | "invalid" | "banned")
    {
        return Err(ApiError::BadRequest(
            "status must be valid, invalid or banned".into(),
        ));
    }
    let credentials_sealed = match &req.credentials {
        Some(update) => {
            let kind = AccountKind::parse(&current.kind).ok_or_else(|| {
                ApiError::Internal(format!("stored account type {} is unknown", current.kind))
            })?;
            let mut merged = open(&state, &current).unwrap_or_default();
            for (k, v) in update {
                if v.is_empty() {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
            check_credentials(kind, &merged)?;
            if update.contains_key("access_token") && !update.contains_key("expires_at") {
                merged.remove("expires_at");
            }
            crate::oauth::complete_credentials(kind, &mut merged);
            Some(seal(&state, &merged))
        }
        None => None,
    };
    let re_enabled = req.enabled == Some(true);
    let limit_cleared = matches!(req.rate_limit_reset_at, Some(None));
    let back_in_service = re_enabled || req.status.as_deref() == Some("valid");
    let patch = AccountPatch {
        name: req.name.map(|n| n.trim().to_string()),
        enabled: req.enabled,
        status: req.status,
        credentials_sealed,
        base_url: req
            .base_url
            .map(|u| u.map(|u| u.trim_end_matches('/').to_string())),
        proxy_sealed,
        priority: req.priority,
        max_concurrency: req.max_concurrency.map(|c| c.max(0)),
        weight: req.weight,
        bound_api_key_ids: req.bound_api_key_ids,
        bound_user_ids: req.bound_user_ids,
        rate_limit_reset_at: req.rate_limit_reset_at,
        // Re-enabling starts the failure count afresh.
        consecutive_error_count: req
            .consecutive_error_count
            .map(|c| c.max(0))
            .or(re_enabled.then_some(0)),
        disabled_reason: re_enabled.then_some(None),
    };
    let account = state.store.update_account(id, &patch).await?;
    if limit_cleared {
        state.clear_account_marks(id, MarkKind::RateLimited).await;
    }
    if back_in_service {
        state.clear_account_marks(id, MarkKind::Unavailable).await;
    }
    if let Some(kind) = AccountKind::parse(&account.kind) {
        refresh_if_due(&state, kind, account.id);
    }
    Ok(Json(view(&state, &account)?))
}

pub async fn remove(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state.store.delete_account(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /accounts/{id}/enable`: back in service (reason cleared, shared
/// unavailable mark lifted).
pub async fn enable(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<Value>> {
    set_enabled(state, auth, id, true).await
}

/// `POST /accounts/{id}/disable`.
pub async fn disable(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<Value>> {
    set_enabled(state, auth, id, false).await
}

async fn set_enabled(
    state: ApiState,
    auth: AuthUser,
    id: i64,
    enabled: bool,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    // Enabling puts the account back in service whatever took it out
    // (a failure threshold, a suspected ban); the audit log keeps why.
    let patch = AccountPatch {
        enabled: Some(enabled),
        status: enabled.then(|| "valid".to_string()),
        consecutive_error_count: enabled.then_some(0),
        disabled_reason: Some((!enabled).then(|| format!("disabled by {}", auth.user.username))),
        ..AccountPatch::default()
    };
    let account = state.store.update_account(id, &patch).await?;
    if enabled {
        state.clear_account_marks(id, MarkKind::Unavailable).await;
    }
    tracing::info!(account_id = id, enabled, user = %auth.user.username, "account enabled state changed");
    Ok(Json(view(&state, &account)?))
}

#[derive(Deserialize)]
pub struct ResetQuery {
    /// Also re-enable the account(s).
    #[serde(default)]
    enable: bool,
}

/// `POST /accounts/{id}/reset[?enable=true]`: error count to 0, rate limit
/// lifted (stored and shared), and with `enable` back in service.
pub async fn reset(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
    super::QueryParams(q): super::QueryParams<ResetQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    reset_accounts(&state, Some(id), q.enable).await?;
    Ok(Json(view(&state, &state.store.get_account(id).await?)?))
}

/// `POST /accounts/reset[?enable=true]`: the same for every account.
pub async fn reset_all(
    State(state): State<ApiState>,
    auth: AuthUser,
    super::QueryParams(q): super::QueryParams<ResetQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let reset = reset_accounts(&state, None, q.enable).await?;
    Ok(Json(json!({ "reset": reset })))
}

async fn reset_accounts(state: &ApiState, id: Option<i64>, enable: bool) -> ApiResult<u64> {
    let reset = state.store.reset_accounts(id, enable).await?;
    let mut kinds = vec![MarkKind::RateLimited];
    if enable {
        kinds.push(MarkKind::Unavailable);
    }
    for kind in kinds {
        state.state.clear_marks(Some(kind), id).await?;
    }
    tracing::info!(account_id = ?id, enable, reset, "account errors and rate limits reset");
    Ok(reset)
}

/// `POST /accounts/{id}/test`: runs the health check now and records it.
pub async fn test(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<crate::health::CheckReport>> {
    auth.require_admin()?;
    Ok(Json(state.health.check(id).await?))
}
