//! `/auth/login`, `/me`, `/me/password`, and the bearer-token extractor
//! every other route acts through.
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;

use super::JsonBody;
use crate::service::auth::{ChangePassword, LoginRequest, Session};
use crate::service::{Actor, ServiceError, ServiceResult, Services};
use crate::store::User;

impl FromRequestParts<Services> for Actor {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        services: &Services,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        services.authenticate(token).await
    }
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &http::HeaderMap) -> ServiceResult<&str> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ServiceError::Unauthorized("missing bearer token"))?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ServiceError::Unauthorized("invalid token"))
}

/// The client's address as the admin port reckoned it (behind a trusted
/// proxy, the one `X-Forwarded-For` names), when the call came over the network.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

type Peer = Option<axum::Extension<ClientIp>>;

fn peer_ip(peer: &Peer) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.0.0)
}

/// Sign in with a username and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    security(()),
    responses((status = 200, body = Session), super::Failures,
        (status = 429, description = "Too many wrong passwords: wait `Retry-After` seconds",
            body = super::ErrorBody)))]
pub async fn login(
    State(s): State<Services>,
    peer: Peer,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ServiceResult<Json<Session>> {
    Ok(Json(s.login(req, peer_ip(&peer)).await?))
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "auth",
    responses((status = 200, body = User), super::Failures))]
pub async fn me(actor: Actor) -> ServiceResult<Json<User>> {
    match actor {
        Actor::User(user) => Ok(Json(user)),
        Actor::Service(_) => Err(ServiceError::NotFound("the management token is no user")),
    }
}

/// Change one's own password; tokens issued before stop working and the
/// answer is a new session.
#[utoipa::path(post, path = "/me/password", tag = "auth", request_body = ChangePassword,
    responses((status = 200, body = Session), super::Failures,
        (status = 429, description = "Too many wrong passwords: wait `Retry-After` seconds",
            body = super::ErrorBody)))]
pub async fn change_password(
    State(s): State<Services>,
    actor: Actor,
    peer: Peer,
    JsonBody(req): JsonBody<ChangePassword>,
) -> ServiceResult<Json<Session>> {
    Ok(Json(
        s.change_own_password(&actor, req, peer_ip(&peer)).await?,
    ))
}
