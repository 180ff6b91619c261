//! Relay keys: who may create, change and see them; the plaintext exists
//! once, in the answer to its creation.
use aiproxy_shared::domain::{ActiveStatus, BillingType, ClientName, FilterMode};
use aiproxy_shared::keys::{hash_key_hex, new_api_key, visible_prefix};
use aiproxy_shared::money::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services, check_models, double_option};
use crate::store::{ApiKey, ApiKeyPatch, NewApiKey};

/// A new key. Limits, billing, the client filter and a key of one's own are
/// an administrator's to set; a user creates plain keys for themselves.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Whose key; the caller's own when left out (required with the
    /// management token, which is no user).
    pub user_id: Option<i64>,
    pub name: String,
    #[serde(default = "default_billing")]
    pub billing_type: BillingType,
    /// USD the key may spend in all; none when left out.
    pub cost_limit: Option<Money>,
    /// Requests per minute; 0 is no limit.
    #[serde(default)]
    pub rate_limit: i32,
    /// Models the key may use; empty allows every model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Requests in flight at once; 0 is no limit.
    #[serde(default)]
    pub max_concurrency: i32,
    pub expires_at: Option<DateTime<Utc>>,
    /// Overrides the global client filter for this key.
    pub client_filter: Option<FilterMode>,
    /// With `client_filter`: the clients admitted (empty keeps the global list).
    #[serde(default)]
    pub allowed_clients: Vec<ClientName>,
    /// The plaintext key, when an operator brings their own (24 to 128
    /// printable ASCII characters); otherwise one is generated.
    pub key: Option<String>,
}

fn default_billing() -> BillingType {
    BillingType::Package
}

/// A key just created: the only answer that carries its plaintext.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The plaintext key; never shown again.
    pub key: String,
}

/// Fields to change; a field left out stays as it is, `null` clears it.
/// A user may rename, disable or enable their own key (unless an
/// administrator disabled it); the rest is an administrator's.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    pub status: Option<ActiveStatus>,
    pub billing_type: Option<BillingType>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub cost_limit: Option<Option<Money>>,
    pub rate_limit: Option<i32>,
    pub allowed_models: Option<Vec<String>>,
    pub max_concurrency: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<FilterMode>)]
    pub client_filter: Option<Option<FilterMode>>,
    pub allowed_clients: Option<Vec<ClientName>>,
}

/// A list of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
    pub total: usize,
}

fn check_limit(limit: Option<Money>) -> ServiceResult<Option<rust_decimal::Decimal>> {
    match limit {
        Some(m) if m.is_negative() => Err(ServiceError::BadRequest(
            "cost_limit must not be negative".into(),
        )),
        other => Ok(other.map(Into::into)),
    }
}

/// A key an operator brings: long enough to be unguessable, printable ASCII.
fn check_plaintext(key: &str) -> ServiceResult<()> {
    if !(24..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::BadRequest(
            "key must be 24 to 128 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> ServiceResult<()> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ServiceError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

impl Services {
    /// A key the caller may see: any for admins, their own for users.
    async fn visible_key(&self, actor: &Actor, id: i64) -> ServiceResult<ApiKey> {
        let key = self.store.get_api_key(id).await?;
        if !actor.is_admin() && Some(key.user_id) != actor.user_id() {
            return Err(ServiceError::NotFound("not found"));
        }
        Ok(key)
    }

    /// Every key for an admin (or one user's), the caller's own for a user.
    pub async fn list_keys(&self, actor: &Actor, user_id: Option<i64>) -> ServiceResult<KeyList> {
        let items = self
            .store
            .list_api_keys(actor.listing_scope(user_id))
            .await?;
        Ok(KeyList {
            total: items.len(),
            items,
        })
    }

    pub async fn get_key(&self, actor: &Actor, id: i64) -> ServiceResult<ApiKey> {
        self.visible_key(actor, id).await
    }

    pub async fn create_key(&self, actor: &Actor, req: CreateKey) -> ServiceResult<KeyCreated> {
        // The management token acts as no user: it must say whose key it is.
        let user_id = match (req.user_id, actor.user_id()) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => return Err(ServiceError::BadRequest("user_id is required".into())),
        };
        actor.require_self_or_admin(user_id)?;
        check_name(&req.name)?;
        check_models(&req.allowed_models)?;
        if req.rate_limit < 0 || req.max_concurrency < 0 {
            return Err(ServiceError::BadRequest(
                "rate_limit and max_concurrency must not be negative".into(),
            ));
        }
        // Limits and billing are the operator's: a user's own key draws on
        // their packages, with no other terms.
        let sets_terms = req.billing_type != BillingType::Package
            || req.cost_limit.is_some()
            || req.rate_limit != 0
            || !req.allowed_models.is_empty()
            || req.max_concurrency != 0
            || req.client_filter.is_some()
            || !req.allowed_clients.is_empty()
            || req.key.is_some();
        if sets_terms {
            actor.require_admin()?;
        }
        let plaintext = match req.key {
            Some(k) => {
                check_plaintext(&k)?;
                k
            }
            None => new_api_key(),
        };
        let api_key = self
            .store
            .create_api_key(&NewApiKey {
                user_id,
                name: req.name.trim().to_string(),
                key_hash: hash_key_hex(&plaintext),
                key_prefix: visible_prefix(&plaintext),
                billing_type: req.billing_type,
                cost_limit: check_limit(req.cost_limit)?,
                rate_limit: req.rate_limit,
                allowed_models: req.allowed_models,
                max_concurrency: req.max_concurrency,
                client_filter: req.client_filter,
                allowed_clients: req.allowed_clients,
                expires_at: req.expires_at,
            })
            .await?;
        Ok(KeyCreated {
            api_key,
            key: plaintext,
        })
    }

    pub async fn update_key(
        &self,
        actor: &Actor,
        id: i64,
        req: UpdateKey,
    ) -> ServiceResult<ApiKey> {
        let current = self.visible_key(actor, id).await?;
        // An administrator's disable holds until an administrator lifts it.
        let enabling = req.status == Some(ActiveStatus::Active);
        if enabling && !actor.is_admin() && current.disabled_by_admin {
            return Err(ServiceError::Forbidden(
                "this key was disabled by an administrator; only an administrator can enable it",
            ));
        }
        let disabled_by_admin = req
            .status
            .filter(|_| actor.is_admin())
            .map(|s| s == ActiveStatus::Disabled);
        if let Some(name) = &req.name {
            check_name(name)?;
        }
        if let Some(m) = &req.allowed_models {
            check_models(m)?;
        }
        // Limits are the operator's; a user may rename, disable or re-enable their key.
        let changes_limits = req.billing_type.is_some()
            || req.cost_limit.is_some()
            || req.rate_limit.is_some()
            || req.allowed_models.is_some()
            || req.max_concurrency.is_some()
            || req.expires_at.is_some()
            || req.client_filter.is_some()
            || req.allowed_clients.is_some();
        if changes_limits {
            actor.require_admin()?;
        }
        let patch = ApiKeyPatch {
            name: req.name.map(|n| n.trim().to_string()),
            status: req.status,
            disabled_by_admin,
            by_owner: !actor.is_admin(),
            billing_type: req.billing_type,
            cost_limit: req.cost_limit.map(check_limit).transpose()?,
            rate_limit: req.rate_limit.map(|r| r.max(0)),
            allowed_models: req.allowed_models,
            max_concurrency: req.max_concurrency.map(|c| c.max(0)),
            client_filter: req.client_filter,
            allowed_clients: req.allowed_clients,
            expires_at: req.expires_at,
        };
        Ok(self.store.update_api_key(id, &patch).await?)
    }

    pub async fn delete_key(&self, actor: &Actor, id: i64) -> ServiceResult<()> {
        self.visible_key(actor, id).await?;
        Ok(self.store.delete_api_key(id).await?)
    }
}
