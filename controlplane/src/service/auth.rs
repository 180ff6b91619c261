//! Signing in: passwords checked (throttled, a few at a time), sessions as
//! JWTs with the user's role, and who a bearer token stands for.
use std::net::IpAddr;

use aiproxy_shared::domain::ActiveStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services};
use crate::store::{StoreError, User, UserPatch};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// A signed-in session: send `token` as `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub expires_at: Option<DateTime<Utc>>,
    pub user: User,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    /// 8 to 256 characters.
    pub new_password: String,
}

/// A real argon2id hash, verified when the user does not exist so that
/// response time does not reveal which usernames exist.
fn dummy_hash() -> ServiceResult<String> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash.clone());
    }
    let hash = crate::crypto::hash_password(&aiproxy_shared::keys::random_hex(16))
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(DUMMY.get_or_init(|| hash).clone())
}

impl Services {
    /// Who a bearer token (the part after `Bearer `) stands for: an active
    /// user whose password has not changed since it was issued.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Actor> {
        let claims = self.jwt.verify(token.trim()).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ServiceError::Unauthorized("token expired")
            }
            _ => ServiceError::Unauthorized("invalid token"),
        })?;
        let user = match self.store.get_user(claims.sub).await {
            Ok(u) => u,
            Err(StoreError::NotFound) => return Err(ServiceError::Unauthorized("invalid token")),
            Err(e) => return Err(e.into()),
        };
        if user.status != ActiveStatus::Active {
            return Err(ServiceError::Unauthorized("user is disabled"));
        }
        if claims.generation != user.token_generation {
            return Err(ServiceError::Unauthorized(
                "password changed since this sign-in; sign in again",
            ));
        }
        Ok(Actor::User(user))
    }

    /// Signs in from `from` (the client's address, when it came over the
    /// network); wrong passwords count against the name and the address.
    pub async fn login(&self, req: LoginRequest, from: Option<IpAddr>) -> ServiceResult<Session> {
        if let Some(wait) = self.password_throttle.wait(&req.username, from) {
            return Err(ServiceError::Throttled(wait));
        }
        let user = self.store.find_user_by_name(&req.username).await?;
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => dummy_hash()?,
        };
        let valid = self.login_gate.verify(from, req.password, hash).await?;
        let user = match user {
            Some(u) if valid => u,
            _ => {
                self.password_throttle.failed(&req.username, from);
                tracing::warn!(username = %req.username, from = ?from, "admin login refused: wrong password");
                return Err(ServiceError::Unauthorized("invalid username or password"));
            }
        };
        self.password_throttle.succeeded(&req.username, from);
        if user.status != ActiveStatus::Active {
            return Err(ServiceError::Unauthorized("user is disabled"));
        }
        tracing::info!(user_id = user.id, "admin login");
        Ok(self.session(user))
    }

    fn session(&self, user: User) -> Session {
        let (token, claims) =
            self.jwt
                .issue(user.id, &user.username, user.role, user.token_generation);
        Session {
            token,
            token_type: "Bearer",
            expires_at: DateTime::from_timestamp(claims.exp, 0),
            user,
        }
    }

    /// Any signed-in user changes their own password with the current one.
    /// Tokens issued before stop working; the answer is a new session.
    pub async fn change_own_password(
        &self,
        actor: &Actor,
        req: ChangePassword,
        from: Option<IpAddr>,
    ) -> ServiceResult<Session> {
        let Actor::User(me) = actor else {
            return Err(ServiceError::BadRequest(
                "the management token has no password".into(),
            ));
        };
        // Guesses here count with the account's logins.
        let name = &me.username;
        if let Some(wait) = self.password_throttle.wait(name, from) {
            return Err(ServiceError::Throttled(wait));
        }
        super::users::check_password(&req.new_password)?;
        let hash = me.password_hash.clone();
        let valid = self
            .login_gate
            .verify(from, req.current_password, hash)
            .await?;
        if !valid {
            self.password_throttle.failed(name, from);
            return Err(ServiceError::BadRequest(
                "current_password is not your password".into(),
            ));
        }
        self.password_throttle.succeeded(name, from);
        let patch = UserPatch {
            password_hash: Some(self.hash_password(req.new_password).await?),
            ..Default::default()
        };
        let user = self.store.update_user(me.id, &patch).await?;
        tracing::info!(user_id = user.id, "password changed by its owner");
        Ok(self.session(user))
    }
}
