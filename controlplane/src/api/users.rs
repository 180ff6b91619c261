//! `/users`: admin CRUD of users.
use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{
    ApiError, ApiResult, ApiState, AuthUser, JsonBody, PathId, check_status, double_option,
};
use crate::crypto::hash_password;
use crate::store::{NewUser, User, UserPatch};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    password: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default)]
    price_rate: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    max_concurrency: i32,
}

fn default_role() -> String {
    "user".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    password: Option<String>,
    role: Option<String>,
    status: Option<String>,
    price_rate: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    email: Option<Option<String>>,
    max_concurrency: Option<i32>,
}

fn check_role(role: &str) -> ApiResult<()> {
    match role {
        "admin" | "user" => Ok(()),
        _ => Err(ApiError::BadRequest("role must be admin or user".into())),
    }
}

fn parse_rate(rate: &str) -> ApiResult<Decimal> {
    let value = Decimal::from_str(rate.trim())
        .map_err(|_| ApiError::BadRequest("price_rate must be a decimal".into()))?;
    if value.is_sign_negative() || value > Decimal::from(1000) {
        return Err(ApiError::BadRequest(
            "price_rate must be between 0 and 1000".into(),
        ));
    }
    Ok(value)
}

pub(super) fn check_password(password: &str) -> ApiResult<()> {
    if password.len() < 8 || password.len() > 256 {
        return Err(ApiError::BadRequest(
            "password must be 8 to 256 characters".into(),
        ));
    }
    Ok(())
}

pub(super) async fn hash(state: &ApiState, password: String) -> ApiResult<String> {
    state
        .login_gate
        .run(move || hash_password(&password))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> ApiResult<Json<serde_json::Value>> {
    auth.require_admin()?;
    let items = state.store.list_users().await?;
    let total = items.len();
    Ok(Json(serde_json::json!({ "items": items, "total": total })))
}

pub async fn get_one(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<Json<User>> {
    auth.require_self_or_admin(id)?;
    Ok(Json(state.store.get_user(id).await?))
}

pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    auth.require_admin()?;
    let username = req.username.trim().to_string();
    if username.is_empty() || username.len() > 64 || username.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "username must be 1 to 64 characters, none of them control characters".into(),
        ));
    }
    check_role(&req.role)?;
    check_password(&req.password)?;
    let price_rate = req
        .price_rate
        .as_deref()
        .map(parse_rate)
        .transpose()?
        .unwrap_or(Decimal::ONE);
    let user = state
        .store
        .create_user(&NewUser {
            username,
            password_hash: hash(&state, req.password).await?,
            role: req.role,
            price_rate,
            email: req.email,
            max_concurrency: req.max_concurrency.max(0),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn update(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
    JsonBody(req): JsonBody<UpdateUser>,
) -> ApiResult<Json<User>> {
    auth.require_admin()?;
    if let Some(role) = &req.role {
        check_role(role)?;
    }
    if let Some(status) = &req.status {
        check_status(status)?;
        if id == auth.user.id && status != "active" {
            return Err(ApiError::BadRequest("you cannot disable yourself".into()));
        }
    }
    let password_hash = match req.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash(&state, p).await?)
        }
        None => None,
    };
    let patch = UserPatch {
        password_hash,
        role: req.role,
        status: req.status,
        price_rate: req.price_rate.as_deref().map(parse_rate).transpose()?,
        email: req.email,
        max_concurrency: req.max_concurrency.map(|c| c.max(0)),
    };
    let user = state.store.update_user(id, &patch).await?;
    Ok(Json(user))
}

pub async fn remove(
    State(state): State<ApiState>,
    auth: AuthUser,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    if id == auth.user.id {
        return Err(ApiError::BadRequest("you cannot delete yourself".into()));
    }
    state.store.delete_user(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
