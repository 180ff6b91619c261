//! Users: operators and their customers, their roles, price rates and
//! passwords (hashed with argon2, a few at a time).
use aiproxy_shared::domain::{ActiveStatus, Role};
use aiproxy_shared::money::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services, double_option};
use crate::crypto::hash_password;
use crate::store::{NewUser, User, UserPatch};

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 characters; matched trimmed and in lower case.
    pub username: String,
    /// 8 to 256 characters.
    pub password: String,
    #[serde(default = "default_role")]
    pub role: Role,
    /// What the user pays per USD of upstream cost (0 to 1000); 1 when left out.
    pub price_rate: Option<Money>,
    pub email: Option<String>,
    /// Requests in flight at once across the user's keys; 0 is no limit.
    #[serde(default)]
    pub max_concurrency: i32,
}

fn default_role() -> Role {
    Role::User
}

/// Fields to change; a field left out stays as it is.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// A new password; tokens issued before stop working.
    pub password: Option<String>,
    pub role: Option<Role>,
    pub status: Option<ActiveStatus>,
    pub price_rate: Option<Money>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub max_concurrency: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<User>,
    pub total: usize,
}

fn check_rate(rate: Money) -> ServiceResult<Decimal> {
    let value = rate.0;
    if value.is_sign_negative() || value > Decimal::from(1000) {
        return Err(ServiceError::BadRequest(
            "price_rate must be between 0 and 1000".into(),
        ));
    }
    Ok(value)
}

pub(crate) fn check_password(password: &str) -> ServiceResult<()> {
    if password.len() < 8 || password.len() > 256 {
        return Err(ServiceError::BadRequest(
            "password must be 8 to 256 characters".into(),
        ));
    }
    Ok(())
}

impl Services {
    /// An argon2 hash, computed when a slot is free.
    pub(crate) async fn hash_password(&self, password: String) -> ServiceResult<String> {
        self.login_gate
            .run(move || hash_password(&password))
            .await?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    pub async fn list_users(&self, actor: &Actor) -> ServiceResult<UserList> {
        actor.require_admin()?;
        let items = self.store.list_users().await?;
        Ok(UserList {
            total: items.len(),
            items,
        })
    }

    pub async fn get_user(&self, actor: &Actor, id: i64) -> ServiceResult<User> {
        actor.require_self_or_admin(id)?;
        Ok(self.store.get_user(id).await?)
    }

    pub async fn create_user(&self, actor: &Actor, req: CreateUser) -> ServiceResult<User> {
        actor.require_admin()?;
        let username = req.username.trim().to_string();
        if username.is_empty() || username.len() > 64 || username.chars().any(char::is_control) {
            return Err(ServiceError::BadRequest(
                "username must be 1 to 64 characters, none of them control characters".into(),
            ));
        }
        check_password(&req.password)?;
        let price_rate = req
            .price_rate
            .map(check_rate)
            .transpose()?
            .unwrap_or(Decimal::ONE);
        Ok(self
            .store
            .create_user(&NewUser {
                username,
                password_hash: self.hash_password(req.password).await?,
                role: req.role,
                price_rate,
                email: req.email,
                max_concurrency: req.max_concurrency.max(0),
            })
            .await?)
    }

    pub async fn update_user(
        &self,
        actor: &Actor,
        id: i64,
        req: UpdateUser,
    ) -> ServiceResult<User> {
        actor.require_admin()?;
        if actor.user_id() == Some(id) && req.status == Some(ActiveStatus::Disabled) {
            return Err(ServiceError::BadRequest(
                "you cannot disable yourself".into(),
            ));
        }
        let password_hash = match req.password {
            Some(p) => {
                check_password(&p)?;
                Some(self.hash_password(p).await?)
            }
            None => None,
        };
        let patch = UserPatch {
            password_hash,
            role: req.role,
            status: req.status,
            price_rate: req.price_rate.map(check_rate).transpose()?,
            email: req.email,
            max_concurrency: req.max_concurrency.map(|c| c.max(0)),
        };
        Ok(self.store.update_user(id, &patch).await?)
    }

    pub async fn delete_user(&self, actor: &Actor, id: i64) -> ServiceResult<()> {
        actor.require_admin()?;
        if actor.user_id() == Some(id) {
            return Err(ServiceError::BadRequest(
                "you cannot delete yourself".into(),
            ));
        }
        Ok(self.store.delete_user(id).await?)
    }
}
