//! Login, the current user, and the JWT bearer extractor with roles.
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody};
use crate::store::User;

impl FromRequestParts<ApiState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<super::audit::Principal>() {
            return Ok(AuthUser::service(&principal.name));
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthorized("invalid token"))?;
        let claims = state.jwt.verify(token.trim()).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ApiError::Unauthorized("token expired")
            }
            _ => ApiError::Unauthorized("invalid token"),
        })?;
        let user = match state.store.get_user(claims.sub).await {
            Ok(u) => u,
            Err(crate::store::StoreError::NotFound) => {
                return Err(ApiError::Unauthorized("invalid token"));
            }
            Err(e) => return Err(e.into()),
        };
        if user.status != "active" {
            return Err(ApiError::Unauthorized("user is disabled"));
        }
        if claims.generation != user.token_generation {
            return Err(ApiError::Unauthorized(
                "password changed since this sign-in; sign in again",
            ));
        }
        Ok(AuthUser { user })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A real argon2id hash, verified when the user does not exist so that
/// response time does not reveal which usernames exist.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            crate::crypto::hash_password(&aiproxy_shared::keys::random_hex(16))
                .expect("argon2 works")
        })
        .clone()
}

/// The client's address as the admin port reckoned it (behind a trusted
/// proxy, the one `X-Forwarded-For` names), when the call came over the network.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

pub(super) type Peer = Option<axum::Extension<ClientIp>>;

fn peer_ip(peer: &Peer) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.0.0)
}

pub async fn login(
    State(state): State<ApiState>,
    peer: Peer,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Json<Value>> {
    let from = peer_ip(&peer);
    if let Some(wait) = state.password_throttle.wait(&req.username, from) {
        return Err(ApiError::Throttled(wait));
    }
    let user = state.store.find_user_by_name(&req.username).await?;
    let hash = user
        .as_ref()
        .map_or_else(dummy_hash, |u| u.password_hash.clone());
    let valid = state.login_gate.verify(from, req.password, hash).await?;
    let user = match user {
        Some(u) if valid => u,
        _ => {
            state.password_throttle.failed(&req.username, from);
            tracing::warn!(username = %req.username, from = ?from, "admin login refused: wrong password");
            return Err(ApiError::Unauthorized("invalid username or password"));
        }
    };
    state.password_throttle.succeeded(&req.username, from);
    if user.status != "active" {
        return Err(ApiError::Unauthorized("user is disabled"));
    }
    tracing::info!(user_id = user.id, "admin login");
    Ok(Json(session(&state, user)))
}

/// A signed-in session as login answers it: a token for `user` and the user.
fn session(state: &ApiState, user: User) -> Value {
    let (token, claims) =
        state
            .jwt
            .issue(user.id, &user.username, &user.role, user.token_generation);
    json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": chrono::DateTime::from_timestamp(claims.exp, 0),
        "user": user,
    })
}

pub async fn me(auth: AuthUser) -> Json<User> {
    Json(auth.user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /me/password`: any signed-in user changes their own password with
/// the current one. Tokens issued before stop working; the answer carries a
/// new one, as a login does.
pub async fn change_password(
    State(state): State<ApiState>,
    auth: AuthUser,
    peer: Peer,
    JsonBody(req): JsonBody<ChangePassword>,
) -> ApiResult<Json<Value>> {
    if auth.user.id == 0 {
        return Err(ApiError::BadRequest(
            "the management token has no password".into(),
        ));
    }
    // Guesses here count with the account's logins.
    let from = peer_ip(&peer);
    if let Some(wait) = state.password_throttle.wait(&auth.user.username, from) {
        return Err(ApiError::Throttled(wait));
    }
    crate::service::users::check_password(&req.new_password)?;
    let hash = auth.user.password_hash.clone();
    let valid = state
        .login_gate
        .verify(from, req.current_password, hash)
        .await?;
    if !valid {
        state.password_throttle.failed(&auth.user.username, from);
        return Err(ApiError::BadRequest(
            "current_password is not your password".into(),
        ));
    }
    state.password_throttle.succeeded(&auth.user.username, from);
    let patch = crate::store::UserPatch {
        password_hash: Some(state.hash_password(req.new_password).await?),
        ..Default::default()
    };
    let user = state.store.update_user(auth.user.id, &patch).await?;
    tracing::info!(user_id = user.id, "password changed by its owner");
    Ok(Json(session(&state, user)))
}
