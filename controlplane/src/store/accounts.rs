//! `accounts`: upstream accounts with sealed credentials and scheduling state.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use aiproxy_shared::domain::{AccountKind, AccountStatus, HealthStatus};

use super::db::{Usd, impl_from_row, list_from_column, list_to_column, named, readable, with_pool};
use super::{BUMP_VERSION, LastId, Store, StoreError, StoreResult};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AccountKind,
    pub enabled: bool,
    pub status: AccountStatus,
    /// Encrypted credential JSON; never leaves the control plane as is.
    #[serde(skip)]
    pub credentials_sealed: String,
    pub base_url: Option<String>,
    /// The outbound proxy URL, sealed like credentials (it may hold a password).
    #[serde(skip)]
    pub proxy_sealed: Option<String>,
    pub priority: i32,
    pub max_concurrency: i32,
    /// Share of picks among accounts of equal priority when weights differ.
    pub weight: i32,
    /// When set, the account serves only these keys and users.
    pub bound_api_key_ids: Vec<i64>,
    pub bound_user_ids: Vec<i64>,
    pub rate_limit_reset_at: Option<DateTime<Utc>>,
    pub total_cost: Decimal,
    pub current_load: i32,
    pub daily_requests: i64,
    pub consecutive_error_count: i32,
    pub disabled_reason: Option<String>,
    /// `unchecked`, `ok`, `failed` (credentials refused) or `unknown`
    /// (the check could not tell: network, 5xx).
    pub health_status: HealthStatus,
    pub health_message: Option<String>,
    pub health_checked_at: Option<DateTime<Utc>>,
    /// What the OAuth usage endpoint last reported (utilization 0–100).
    pub usage_5h_utilization: Option<f64>,
    pub usage_5h_resets_at: Option<DateTime<Utc>>,
    pub usage_7d_utilization: Option<f64>,
    pub usage_7d_resets_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl_from_row!(Account, |r| {
    Ok(Account {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: named("type", r.try_get("type")?)?,
        enabled: r.try_get("enabled")?,
        status: named("status", r.try_get("status")?)?,
        credentials_sealed: r.try_get("credentials")?,
        base_url: r.try_get("base_url")?,
        proxy_sealed: r.try_get("proxy_url")?,
        priority: r.try_get("priority")?,
        max_concurrency: r.try_get("max_concurrency")?,
        weight: r.try_get("weight")?,
        bound_api_key_ids: list_from_column(r.try_get("bound_api_key_ids")?),
        bound_user_ids: list_from_column(r.try_get("bound_user_ids")?),
        rate_limit_reset_at: r.try_get("rate_limit_reset_at")?,
        total_cost: r.try_get::<Usd, _>("total_cost")?.0,
        current_load: r.try_get("current_load")?,
        daily_requests: r.try_get("daily_requests")?,
        consecutive_error_count: r.try_get("consecutive_error_count")?,
        disabled_reason: r.try_get("disabled_reason")?,
        health_status: named("health_status", r.try_get("health_status")?)?,
        health_message: r.try_get("health_message")?,
        health_checked_at: r.try_get("health_checked_at")?,
        usage_5h_utilization: r.try_get("usage_5h_utilization")?,
        usage_5h_resets_at: r.try_get("usage_5h_resets_at")?,
        usage_7d_utilization: r.try_get("usage_7d_utilization")?,
        usage_7d_resets_at: r.try_get("usage_7d_resets_at")?,
        last_used_at: r.try_get("last_used_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
});

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub name: String,
    pub kind: AccountKind,
    pub credentials_sealed: String,
    pub base_url: Option<String>,
    pub proxy_sealed: Option<String>,
    pub priority: i32,
    pub max_concurrency: i32,
    pub weight: i32,
    pub bound_api_key_ids: Vec<i64>,
    pub bound_user_ids: Vec<i64>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub status: Option<AccountStatus>,
    pub credentials_sealed: Option<String>,
    pub base_url: Option<Option<String>>,
    pub proxy_sealed: Option<Option<String>>,
    pub priority: Option<i32>,
    pub max_concurrency: Option<i32>,
    pub weight: Option<i32>,
    pub bound_api_key_ids: Option<Vec<i64>>,
    pub bound_user_ids: Option<Vec<i64>>,
    pub rate_limit_reset_at: Option<Option<DateTime<Utc>>>,
    pub consecutive_error_count: Option<i32>,
    pub disabled_reason: Option<Option<String>>,
}

macro_rules! select_accounts {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, type, enabled, status, credentials, base_url, proxy_url, priority, max_concurrency, \
             weight, bound_api_key_ids, bound_user_ids, rate_limit_reset_at, total_cost, current_load, daily_requests, consecutive_error_count, disabled_reason, \
             health_status, health_message, health_checked_at, usage_5h_utilization, usage_5h_resets_at, usage_7d_utilization, usage_7d_resets_at, \
             last_used_at, created_at, updated_at FROM accounts",
            $tail
        )
    };
}

impl Store {
    /// Replaces an account's stored proxy URL (to seal one kept in clear
    /// text by an earlier version); the snapshot does not change.
    pub async fn reseal_account_proxy(&self, id: i64, sealed: &str) -> StoreResult<()> {
        with_pool!(self, p => {
            sqlx::query("UPDATE accounts SET proxy_url = ? WHERE id = ?")
                .bind(sealed)
                .bind(id)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Replaces an account's sealed credentials and proxy URL (the same
    /// plaintext under another key) if its credentials are still `expected`;
    /// whether they were.
    pub async fn replace_account_seals(
        &self,
        id: i64,
        expected: &str,
        credentials: &str,
        proxy: Option<&str>,
    ) -> StoreResult<bool> {
        let done = with_pool!(self, p => {
            sqlx::query("UPDATE accounts SET credentials = ?, proxy_url = ? WHERE id = ? AND credentials = ?")
                .bind(credentials)
                .bind(proxy)
                .bind(id)
                .bind(expected)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    pub async fn create_account(&self, new: &NewAccount) -> StoreResult<Account> {
        let now = Utc::now();
        let id = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "INSERT INTO accounts (name, type, enabled, status, credentials, base_url, proxy_url, priority, max_concurrency, \
                 weight, bound_api_key_ids, bound_user_ids, created_at, updated_at) VALUES (?, ?, ?, 'valid', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&new.name)
            .bind(new.kind.as_str())
            .bind(new.enabled)
            .bind(&new.credentials_sealed)
            .bind(&new.base_url)
            .bind(&new.proxy_sealed)
            .bind(new.priority)
            .bind(new.max_concurrency)
            .bind(new.weight)
            .bind(list_to_column(&new.bound_api_key_ids))
            .bind(list_to_column(&new.bound_user_ids))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_write(e, "account"))?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            done.last_id()
        });
        self.get_account(id).await
    }

    pub async fn get_account(&self, id: i64) -> StoreResult<Account> {
        with_pool!(self, p => sqlx::query_as::<_, Account>(select_accounts!(" WHERE id = ?"))
            .bind(id)
            .fetch_optional(p)
            .await?
            .ok_or(StoreError::NotFound))
    }

    pub async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        with_pool!(self, p => {
            let rows = sqlx::query(select_accounts!(" ORDER BY id")).fetch_all(p).await?;
            Ok(readable("accounts", &rows))
        })
    }

    /// Applies `patch` in one statement: fields it leaves out keep
    /// whatever they hold when it runs (a token rotated meanwhile, a disable
    /// by the health check), never a value read earlier.
    pub async fn update_account(&self, id: i64, patch: &AccountPatch) -> StoreResult<Account> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE accounts SET name = COALESCE(?, name), enabled = COALESCE(?, enabled), status = COALESCE(?, status), \
                 credentials = COALESCE(?, credentials), base_url = CASE WHEN ? THEN ? ELSE base_url END, \
                 proxy_url = CASE WHEN ? THEN ? ELSE proxy_url END, priority = COALESCE(?, priority), \
                 max_concurrency = COALESCE(?, max_concurrency), weight = COALESCE(?, weight), \
                 bound_api_key_ids = CASE WHEN ? THEN ? ELSE bound_api_key_ids END, \
                 bound_user_ids = CASE WHEN ? THEN ? ELSE bound_user_ids END, \
                 rate_limit_reset_at = CASE WHEN ? THEN ? ELSE rate_limit_reset_at END, \
                 consecutive_error_count = COALESCE(?, consecutive_error_count), \
                 disabled_reason = CASE WHEN ? THEN ? ELSE disabled_reason END, updated_at = ? WHERE id = ?",
            )
            .bind(&patch.name)
            .bind(patch.enabled)
            .bind(patch.status.map(AccountStatus::as_str))
            .bind(&patch.credentials_sealed)
            .bind(patch.base_url.is_some())
            .bind(patch.base_url.clone().flatten())
            .bind(patch.proxy_sealed.is_some())
            .bind(patch.proxy_sealed.clone().flatten())
            .bind(patch.priority)
            .bind(patch.max_concurrency)
            .bind(patch.weight)
            .bind(patch.bound_api_key_ids.is_some())
            .bind(patch.bound_api_key_ids.as_deref().and_then(list_to_column))
            .bind(patch.bound_user_ids.is_some())
            .bind(patch.bound_user_ids.as_deref().and_then(list_to_column))
            .bind(patch.rate_limit_reset_at.is_some())
            .bind(patch.rate_limit_reset_at.flatten())
            .bind(patch.consecutive_error_count)
            .bind(patch.disabled_reason.is_some())
            .bind(patch.disabled_reason.clone().flatten())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let account = sqlx::query_as::<_, Account>(select_accounts!(" WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(account)
        })
    }

    pub async fn delete_account(&self, id: i64) -> StoreResult<()> {
        self.delete_by_id("DELETE FROM accounts WHERE id = ?", id)
            .await
    }

    /// Records an upstream rate limit; a later reset already stored wins.
    pub async fn note_rate_limit(&self, id: i64, reset_at: DateTime<Utc>) -> StoreResult<bool> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE accounts SET rate_limit_reset_at = ?, updated_at = ? \
                 WHERE id = ? AND (rate_limit_reset_at IS NULL OR rate_limit_reset_at < ?)",
            )
            .bind(reset_at)
            .bind(Utc::now())
            .bind(id)
            .bind(reset_at)
            .execute(&mut *tx)
            .await?;
            let changed = done.rows_affected() > 0;
            if changed {
                sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            self.signal_change();
            Ok(changed)
        })
    }

    /// Clears rate limits whose reset time has passed; returns the accounts cleared.
    pub async fn clear_expired_rate_limits(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE accounts SET rate_limit_reset_at = NULL WHERE rate_limit_reset_at IS NOT NULL AND rate_limit_reset_at <= ?",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            self.signal_change();
            Ok(done.rows_affected())
        })
    }

    /// An operator lifts the stored rate limit of one account, or of all.
    pub async fn clear_rate_limits(&self, id: Option<i64>) -> StoreResult<u64> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = match id {
                Some(id) => sqlx::query("UPDATE accounts SET rate_limit_reset_at = NULL WHERE id = ? AND rate_limit_reset_at IS NOT NULL")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
                None => sqlx::query("UPDATE accounts SET rate_limit_reset_at = NULL WHERE rate_limit_reset_at IS NOT NULL")
                    .execute(&mut *tx)
                    .await?,
            };
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(done.rows_affected())
        })
    }

    /// Takes an account out of service as likely banned, for the operator to
    /// check; it stays out until re-enabled or set back to `valid`.
    pub async fn flag_suspected_ban(&self, id: i64, message: &str) -> StoreResult<()> {
        let patch = AccountPatch {
            status: Some(AccountStatus::Banned),
            disabled_reason: Some(Some(format!(
                "upstream refused the account (403 permission_error): {message}"
            ))),
            ..Default::default()
        };
        self.update_account(id, &patch).await.map(|_| ())
    }

    /// Records a health check or a relayed request that the upstream
    /// answered: `Passed` resets the error count, `Refused` counts one more
    /// and, at `threshold` (0 = never), takes the account out of service.
    pub async fn record_account_health(
        &self,
        id: i64,
        outcome: &HealthOutcome,
        threshold: u32,
    ) -> StoreResult<HealthEffect> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // A write first takes the row lock on MySQL and the write lock on
            // SQLite, so the read below cannot be overtaken by another writer.
            sqlx::query("UPDATE accounts SET consecutive_error_count = consecutive_error_count WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let row: Option<(bool, i32)> = sqlx::query_as("SELECT enabled, consecutive_error_count FROM accounts WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((enabled, count)) = row else {
                return Err(StoreError::NotFound);
            };
            let effect = match outcome {
                HealthOutcome::Passed { usage } => {
                    sqlx::query(
                        "UPDATE accounts SET consecutive_error_count = 0, health_status = 'ok', health_message = NULL, \
                         health_checked_at = ?, usage_5h_utilization = COALESCE(?, usage_5h_utilization), \
                         usage_5h_resets_at = COALESCE(?, usage_5h_resets_at), usage_7d_utilization = COALESCE(?, usage_7d_utilization), \
                         usage_7d_resets_at = COALESCE(?, usage_7d_resets_at) WHERE id = ?",
                    )
                    .bind(now)
                    .bind(usage.five_hour.map(|w| w.utilization))
                    .bind(usage.five_hour.and_then(|w| w.resets_at))
                    .bind(usage.seven_day.map(|w| w.utilization))
                    .bind(usage.seven_day.and_then(|w| w.resets_at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    HealthEffect::Counted(0)
                }
                HealthOutcome::Inconclusive { message } => {
                    sqlx::query("UPDATE accounts SET health_status = 'unknown', health_message = ?, health_checked_at = ? WHERE id = ?")
                        .bind(clip(message))
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    HealthEffect::Counted(count)
                }
                HealthOutcome::Refused { source, message } => {
                    let count = count.saturating_add(1);
                    let disable = enabled && threshold > 0 && count as i64 >= threshold as i64;
                    let reason = disable.then(|| {
                        clip(&format!("{source}: {count} consecutive failures, last: {message}"))
                    });
                    sqlx::query(
                        "UPDATE accounts SET consecutive_error_count = ?, health_status = 'failed', health_message = ?, \
                         health_checked_at = ?, enabled = CASE WHEN ? THEN FALSE ELSE enabled END, \
                         disabled_reason = COALESCE(?, disabled_reason), updated_at = ? WHERE id = ?",
                    )
                    .bind(count)
                    .bind(clip(message))
                    .bind(now)
                    .bind(disable)
                    .bind(&reason)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    if disable {
                        sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
                        HealthEffect::Disabled(count)
                    } else {
                        HealthEffect::Counted(count)
                    }
                }
            };
            tx.commit().await?;
            self.signal_change();
            Ok(effect)
        })
    }

    /// Relayed requests the upstream served reset their accounts' error counts.
    pub async fn clear_account_errors_served(&self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let marks = vec!["?"; ids.len()].join(", ");
        let sql = format!(
            "UPDATE accounts SET consecutive_error_count = 0 WHERE consecutive_error_count > 0 AND id IN ({marks})"
        );
        with_pool!(self, p => {
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(id);
            }
            q.execute(p).await?;
            Ok(())
        })
    }

    /// The operator's reset: error count to 0 and the stored rate limit
    /// lifted; with `enable`, the account is back in service (enabled,
    /// `valid`, no disabled reason). One account, or every one.
    pub async fn reset_accounts(&self, id: Option<i64>, enable: bool) -> StoreResult<u64> {
        let sql = match (id.is_some(), enable) {
            (true, false) => {
                "UPDATE accounts SET consecutive_error_count = 0, rate_limit_reset_at = NULL, updated_at = ? WHERE id = ?"
            }
            (true, true) => {
                "UPDATE accounts SET consecutive_error_count = 0, rate_limit_reset_at = NULL, enabled = TRUE, \
                             status = 'valid', disabled_reason = NULL, updated_at = ? WHERE id = ?"
            }
            (false, false) => {
                "UPDATE accounts SET consecutive_error_count = 0, rate_limit_reset_at = NULL, updated_at = ?"
            }
            (false, true) => {
                "UPDATE accounts SET consecutive_error_count = 0, rate_limit_reset_at = NULL, enabled = TRUE, \
                              status = 'valid', disabled_reason = NULL, updated_at = ?"
            }
        };
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut q = sqlx::query(sql).bind(Utc::now());
            if let Some(id) = id {
                q = q.bind(id);
            }
            let done = q.execute(&mut *tx).await?;
            if id.is_some() && done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(done.rows_affected())
        })
    }
}

/// What a health check or a relayed request learned of an account.
#[derive(Debug, Clone)]
pub enum HealthOutcome {
    /// The upstream accepted the credentials.
    Passed { usage: OAuthUsage },
    /// The upstream refused the credentials (401/403).
    Refused {
        source: &'static str,
        message: String,
    },
    /// Nothing can be told of the credentials (network error, 5xx, 429).
    Inconclusive { message: String },
}

/// The windows the Claude OAuth usage endpoint reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct OAuthUsage {
    pub five_hour: Option<UsageWindow>,
    pub seven_day: Option<UsageWindow>,
}

#[derive(Debug, Clone, Copy)]
pub struct UsageWindow {
    /// 0–100.
    pub utilization: f64,
    pub resets_at: Option<DateTime<Utc>>,
}

/// What recording an outcome did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEffect {
    /// The error count is now this.
    Counted(i32),
    /// The count reached the threshold and the account was disabled.
    Disabled(i32),
}

fn clip(message: &str) -> String {
    message.chars().take(480).collect()
}
