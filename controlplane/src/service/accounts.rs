//! Upstream accounts: creating and changing them with their credentials
//! sealed (write-only: answers show which fields are set, never values),
//! taking them in and out of service, resetting and testing them.

use aiproxy_shared::domain::{AccountKind, AccountStatus};
use aiproxy_shared::http::{ProxyUrl, mask_proxy_url};
use aiproxy_shared::state::MarkKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services, double_option};
use crate::store::{Account, AccountPatch, NewAccount};

/// Credential fields by name (`api_key`, `access_token`, `refresh_token`, …).
pub use crate::oauth::Credentials;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1 to 128 characters.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AccountKind,
    /// The upstream's address, when not the platform's own.
    pub base_url: Option<String>,
    /// `http://`, `https://` or `socks5://` proxy for this account's calls.
    pub proxy_url: Option<String>,
    /// The fields the kind needs (e.g. `api_key`, or `access_token` and
    /// `refresh_token`).
    #[schema(inline)]
    pub credentials: Credentials,
    /// Lower is tried first; 50 when left out.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// Requests in flight at once; 0 is no limit.
    #[serde(default)]
    pub max_concurrency: i32,
    /// Share of picks among accounts of equal priority (1 to 1000).
    #[serde(default = "default_weight")]
    pub weight: i32,
    /// When set, the account serves only these keys…
    #[serde(default)]
    pub bound_api_key_ids: Vec<i64>,
    /// …and these users.
    #[serde(default)]
    pub bound_user_ids: Vec<i64>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl CreateAccount {
    /// An account with every optional field at its default.
    pub fn new(name: String, kind: AccountKind, credentials: Credentials) -> CreateAccount {
        CreateAccount {
            name,
            kind,
            base_url: None,
            proxy_url: None,
            credentials,
            priority: default_priority(),
            max_concurrency: 0,
            weight: default_weight(),
            bound_api_key_ids: Vec::new(),
            bound_user_ids: Vec::new(),
            enabled: true,
        }
    }
}

fn default_weight() -> i32 {
    1
}

fn default_priority() -> i32 {
    50
}

fn default_true() -> bool {
    true
}

/// Fields to change; a field left out stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub status: Option<AccountStatus>,
    /// Merged into the stored credentials; a field set to "" is removed.
    #[schema(inline)]
    pub credentials: Option<Credentials>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub base_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub proxy_url: Option<Option<String>>,
    pub priority: Option<i32>,
    pub max_concurrency: Option<i32>,
    pub weight: Option<i32>,
    pub bound_api_key_ids: Option<Vec<i64>>,
    pub bound_user_ids: Option<Vec<i64>>,
    /// `null` lifts a rate limit now.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub rate_limit_reset_at: Option<Option<DateTime<Utc>>>,
    pub consecutive_error_count: Option<i32>,
}

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    /// Which credential fields are set, each masked to at most its last four
    /// characters (or `error` when unreadable with the current secret key).
    #[schema(inline)]
    pub credentials: Credentials,
    /// The proxy with its password masked.
    pub proxy_url: Option<String>,
    /// Why data planes are not sent this account, if they are not.
    pub publish_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    pub items: Vec<AccountView>,
    pub total: usize,
}

/// How many accounts a reset touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetCount {
    pub reset: u64,
}

fn check_weight(weight: i32) -> ServiceResult<()> {
    if !(1..=1000).contains(&weight) {
        return Err(ServiceError::BadRequest(
            "weight must be between 1 and 1000".into(),
        ));
    }
    Ok(())
}

fn check_base_url(url: &str) -> ServiceResult<()> {
    let ok = ["http", "https"].iter().any(|s| {
        url.strip_prefix(s)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|h| !h.is_empty())
    });
    if !ok || url.len() > 512 {
        return Err(ServiceError::BadRequest(
            "base_url must be a http/https URL".into(),
        ));
    }
    Ok(())
}

fn check_credentials(kind: AccountKind, creds: &Credentials) -> ServiceResult<()> {
    if let Some(problem) = aiproxy_shared::domain::credentials_problem(creds) {
        return Err(ServiceError::BadRequest(problem));
    }
    for field in kind.required_credentials() {
        if creds.get(*field).is_none_or(|v| v.trim().is_empty()) {
            return Err(ServiceError::BadRequest(format!(
                "credentials.{field} is required for {} accounts",
                kind.as_str()
            )));
        }
    }
    Ok(())
}

fn masked(creds: &Credentials) -> Credentials {
    creds
        .iter()
        .map(|(k, v)| (k.clone(), aiproxy_shared::keys::mask_tail(v)))
        .collect()
}

impl Services {
    /// Checks a proxy URL with the parser the relay uses, and seals it: it
    /// may carry a password.
    fn seal_proxy(&self, url: &str) -> ServiceResult<String> {
        let url = url.trim();
        if url.len() > 512 {
            return Err(ServiceError::BadRequest(
                "proxy_url must be at most 512 characters".into(),
            ));
        }
        ProxyUrl::parse(url).map_err(|e| ServiceError::BadRequest(format!("proxy_url: {e}")))?;
        Ok(self.sealer.seal(url.as_bytes()))
    }

    /// An account's credentials in clear.
    pub(crate) fn open_credentials(&self, account: &Account) -> ServiceResult<Credentials> {
        let plain = self
            .sealer
            .open(&account.credentials_sealed)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| ServiceError::Internal(e.to_string()))
    }

    fn seal_credentials(&self, creds: &Credentials) -> ServiceResult<String> {
        let plain = serde_json::to_vec(creds).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(self.sealer.seal(&plain))
    }

    fn account_view(&self, account: Account) -> AccountView {
        let proxy = account
            .proxy_sealed
            .as_deref()
            .map(|p| self.sealer.open_text(p))
            .transpose();
        let (credentials, publish_error) = match (self.open_credentials(&account), &proxy) {
            (Ok(creds), Ok(proxy)) => (
                masked(&creds),
                aiproxy_shared::domain::account_problem(&creds, proxy.as_deref()),
            ),
            (creds, _) => (
                creds.map_or_else(
                    |_| {
                        Credentials::from([(
                            "error".to_string(),
                            "unreadable with the current secret key".to_string(),
                        )])
                    },
                    |c| masked(&c),
                ),
                Some("credentials or proxy are unreadable with the current secret key".into()),
            ),
        };
        AccountView {
            credentials,
            proxy_url: proxy.ok().flatten().map(|p| mask_proxy_url(&p)),
            publish_error,
            account,
        }
    }

    /// A token written by hand may already be close to expiry: refresh it
    /// now rather than at the next scan.
    fn refresh_if_due(&self, kind: AccountKind, id: i64) {
        if kind.is_oauth() {
            let refresher = self.refresher.clone();
            self.tasks.spawn(async move {
                if let Err(e) = refresher.refresh(id, None).await {
                    tracing::warn!(account_id = id, error = %e, "token refresh after account change failed");
                }
            });
        }
    }

    pub async fn list_accounts(&self, actor: &Actor) -> ServiceResult<AccountList> {
        actor.require_admin()?;
        let items: Vec<_> = self
            .store
            .list_accounts()
            .await?
            .into_iter()
            .map(|a| self.account_view(a))
            .collect();
        Ok(AccountList {
            total: items.len(),
            items,
        })
    }

    pub async fn get_account(&self, actor: &Actor, id: i64) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        Ok(self.account_view(self.store.get_account(id).await?))
    }

    pub async fn create_account(
        &self,
        actor: &Actor,
        req: CreateAccount,
    ) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        let kind = req.kind;
        if req.name.trim().is_empty() || req.name.len() > 128 {
            return Err(ServiceError::BadRequest(
                "name must be 1 to 128 characters".into(),
            ));
        }
        if let Some(url) = &req.base_url {
            check_base_url(url)?;
        }
        let proxy_sealed = req
            .proxy_url
            .as_deref()
            .map(|url| self.seal_proxy(url))
            .transpose()?;
        check_weight(req.weight)?;
        let mut credentials = req.credentials;
        check_credentials(kind, &credentials)?;
        crate::oauth::complete_credentials(kind, &mut credentials);
        let account = self
            .store
            .create_account(&NewAccount {
                name: req.name.trim().to_string(),
                kind,
                credentials_sealed: self.seal_credentials(&credentials)?,
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
        self.refresh_if_due(account.kind, account.id);
        Ok(self.account_view(account))
    }

    pub async fn update_account(
        &self,
        actor: &Actor,
        id: i64,
        req: UpdateAccount,
    ) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        let current = self.store.get_account(id).await?;
        if let Some(Some(url)) = &req.base_url {
            check_base_url(url)?;
        }
        let proxy_sealed = match &req.proxy_url {
            Some(Some(url)) => Some(Some(self.seal_proxy(url)?)),
            Some(None) => Some(None),
            None => None,
        };
        if let Some(weight) = req.weight {
            check_weight(weight)?;
        }
        let credentials_sealed = match &req.credentials {
            Some(update) => {
                let kind = current.kind;
                let mut merged = self.open_credentials(&current).unwrap_or_default();
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
                Some(self.seal_credentials(&merged)?)
            }
            None => None,
        };
        let re_enabled = req.enabled == Some(true);
        let limit_cleared = matches!(req.rate_limit_reset_at, Some(None));
        let back_in_service = re_enabled || req.status == Some(AccountStatus::Valid);
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
        let account = self.store.update_account(id, &patch).await?;
        if limit_cleared {
            self.clear_account_marks(id, MarkKind::RateLimited).await;
        }
        if back_in_service {
            self.clear_account_marks(id, MarkKind::Unavailable).await;
        }
        self.refresh_if_due(account.kind, account.id);
        Ok(self.account_view(account))
    }

    pub async fn delete_account(&self, actor: &Actor, id: i64) -> ServiceResult<()> {
        actor.require_admin()?;
        Ok(self.store.delete_account(id).await?)
    }

    /// Enabling puts the account back in service whatever took it out (a
    /// failure threshold, a suspected ban; the audit log keeps why), and
    /// lifts its shared unavailable mark.
    pub async fn set_account_enabled(
        &self,
        actor: &Actor,
        id: i64,
        enabled: bool,
    ) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        let by = actor.name();
        let patch = AccountPatch {
            enabled: Some(enabled),
            status: enabled.then_some(AccountStatus::Valid),
            consecutive_error_count: enabled.then_some(0),
            disabled_reason: Some((!enabled).then(|| format!("disabled by {by}"))),
            ..AccountPatch::default()
        };
        let account = self.store.update_account(id, &patch).await?;
        if enabled {
            self.clear_account_marks(id, MarkKind::Unavailable).await;
        }
        tracing::info!(account_id = id, enabled, user = %by, "account enabled state changed");
        Ok(self.account_view(account))
    }

    /// Error count to 0, rate limit lifted (stored and shared), and with
    /// `enable` back in service: one account.
    pub async fn reset_account(
        &self,
        actor: &Actor,
        id: i64,
        enable: bool,
    ) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        self.reset_accounts(Some(id), enable).await?;
        Ok(self.account_view(self.store.get_account(id).await?))
    }

    /// The same for every account.
    pub async fn reset_all_accounts(
        &self,
        actor: &Actor,
        enable: bool,
    ) -> ServiceResult<ResetCount> {
        actor.require_admin()?;
        let reset = self.reset_accounts(None, enable).await?;
        Ok(ResetCount { reset })
    }

    async fn reset_accounts(&self, id: Option<i64>, enable: bool) -> ServiceResult<u64> {
        let reset = self.store.reset_accounts(id, enable).await?;
        let mut kinds = vec![MarkKind::RateLimited];
        if enable {
            kinds.push(MarkKind::Unavailable);
        }
        for kind in kinds {
            self.state.clear_marks(Some(kind), id).await?;
        }
        tracing::info!(account_id = ?id, enable, reset, "account errors and rate limits reset");
        Ok(reset)
    }

    /// Runs the account's health check now and records it.
    pub async fn test_account(
        &self,
        actor: &Actor,
        id: i64,
    ) -> ServiceResult<crate::health::CheckReport> {
        actor.require_admin()?;
        Ok(self.health.check(id).await?)
    }
}
