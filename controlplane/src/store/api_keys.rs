//! `api_keys`: the keys users call the relay with, stored only as sha256 hashes.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use aiproxy_shared::domain::{ActiveStatus, BillingType, ClientName, FilterMode};

use super::db::{
    Usd, impl_from_row, list_from_column, list_to_column, named, named_list, with_pool,
};
use super::{BUMP_VERSION, LastId, Store, StoreError, StoreResult};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[serde(skip)]
    pub key_hash: String,
    /// The fixed prefix and four characters of a generated key; four
    /// characters of an operator-supplied one.
    pub key_prefix: String,
    pub billing_type: BillingType,
    pub status: ActiveStatus,
    /// Disabled by an administrator: only an administrator enables it again.
    pub disabled_by_admin: bool,
    pub request_count: i64,
    pub cost_used: Decimal,
    pub cost_limit: Option<Decimal>,
    pub rate_limit: i32,
    pub allowed_models: Vec<String>,
    pub max_concurrency: i32,
    /// Overrides the global client filter: off, simple or strict.
    pub client_filter: Option<FilterMode>,
    /// With `client_filter`: the clients admitted (empty keeps the global list).
    pub allowed_clients: Vec<ClientName>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl_from_row!(ApiKey, |r| {
    Ok(ApiKey {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        key_prefix: r.try_get("key_prefix")?,
        billing_type: named("billing_type", r.try_get("billing_type")?)?,
        status: named("status", r.try_get("status")?)?,
        disabled_by_admin: r.try_get("disabled_by_admin")?,
        request_count: r.try_get("request_count")?,
        cost_used: r.try_get::<Usd, _>("cost_used")?.0,
        cost_limit: r.try_get::<Option<Usd>, _>("cost_limit")?.map(|u| u.0),
        rate_limit: r.try_get("rate_limit")?,
        allowed_models: list_from_column(r.try_get("allowed_models")?),
        max_concurrency: r.try_get("max_concurrency")?,
        client_filter: r
            .try_get::<Option<String>, _>("client_filter")?
            .map(|f| named("client_filter", f))
            .transpose()?,
        allowed_clients: named_list("allowed_clients", r.try_get("allowed_clients")?)?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
});

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub user_id: i64,
    pub name: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub billing_type: BillingType,
    pub cost_limit: Option<Decimal>,
    pub rate_limit: i32,
    pub allowed_models: Vec<String>,
    pub max_concurrency: i32,
    pub client_filter: Option<FilterMode>,
    pub allowed_clients: Vec<ClientName>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub status: Option<ActiveStatus>,
    pub disabled_by_admin: Option<bool>,
    /// The change is the key's owner's (not an administrator's): it never
    /// moves the status of a key an administrator disabled.
    pub by_owner: bool,
    pub billing_type: Option<BillingType>,
    pub cost_limit: Option<Option<Decimal>>,
    pub rate_limit: Option<i32>,
    pub allowed_models: Option<Vec<String>>,
    pub max_concurrency: Option<i32>,
    pub client_filter: Option<Option<FilterMode>>,
    pub allowed_clients: Option<Vec<ClientName>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

macro_rules! select_keys {
    ($tail:literal) => {
        concat!(
            "SELECT id, user_id, name, key_hash, key_prefix, billing_type, status, disabled_by_admin, request_count, cost_used, cost_limit, \
             rate_limit, allowed_models, max_concurrency, client_filter, allowed_clients, expires_at, last_used_at, created_at, updated_at FROM api_keys",
            $tail
        )
    };
}

impl Store {
    pub async fn create_api_key(&self, new: &NewApiKey) -> StoreResult<ApiKey> {
        let now = Utc::now();
        let id = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let user: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
                .bind(new.user_id)
                .fetch_optional(&mut *tx)
                .await?;
            if user.is_none() {
                return Err(StoreError::Conflict(format!("user {} does not exist", new.user_id)));
            }
            let done = sqlx::query(
                "INSERT INTO api_keys (user_id, name, key_hash, key_prefix, billing_type, status, cost_limit, rate_limit, \
                 allowed_models, max_concurrency, client_filter, allowed_clients, expires_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(new.user_id)
            .bind(&new.name)
            .bind(&new.key_hash)
            .bind(&new.key_prefix)
            .bind(new.billing_type.as_str())
            .bind(new.cost_limit.map(Usd))
            .bind(new.rate_limit)
            .bind(list_to_column(&new.allowed_models))
            .bind(new.max_concurrency)
            .bind(new.client_filter.map(FilterMode::as_str))
            .bind(list_to_column(&new.allowed_clients))
            .bind(new.expires_at)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_write(e, "api key"))?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            done.last_id()
        });
        self.get_api_key(id).await
    }

    pub async fn get_api_key(&self, id: i64) -> StoreResult<ApiKey> {
        with_pool!(self, p => sqlx::query_as::<_, ApiKey>(select_keys!(" WHERE id = ?"))
            .bind(id)
            .fetch_optional(p)
            .await?
            .ok_or(StoreError::NotFound))
    }

    /// All keys, or one user's.
    pub async fn list_api_keys(&self, user_id: Option<i64>) -> StoreResult<Vec<ApiKey>> {
        with_pool!(self, p => Ok(match user_id {
            Some(uid) => sqlx::query_as::<_, ApiKey>(select_keys!(" WHERE user_id = ? ORDER BY id"))
                .bind(uid)
                .fetch_all(p)
                .await?,
            None => sqlx::query_as::<_, ApiKey>(select_keys!(" ORDER BY id")).fetch_all(p).await?,
        }))
    }

    /// Applies `patch` in one statement: fields it leaves out keep
    /// whatever they hold when it runs.
    pub async fn update_api_key(&self, id: i64, patch: &ApiKeyPatch) -> StoreResult<ApiKey> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE api_keys SET name = COALESCE(?, name), \
                 status = CASE WHEN ? AND disabled_by_admin THEN status ELSE COALESCE(?, status) END, \
                 disabled_by_admin = CASE WHEN ? THEN disabled_by_admin ELSE COALESCE(?, disabled_by_admin) END, \
                 billing_type = COALESCE(?, billing_type), cost_limit = CASE WHEN ? THEN ? ELSE cost_limit END, \
                 rate_limit = COALESCE(?, rate_limit), allowed_models = CASE WHEN ? THEN ? ELSE allowed_models END, \
                 max_concurrency = COALESCE(?, max_concurrency), client_filter = CASE WHEN ? THEN ? ELSE client_filter END, \
                 allowed_clients = CASE WHEN ? THEN ? ELSE allowed_clients END, \
                 expires_at = CASE WHEN ? THEN ? ELSE expires_at END, updated_at = ? WHERE id = ?",
            )
            .bind(&patch.name)
            // An owner's change never moves a key an administrator disabled.
            .bind(patch.by_owner)
            .bind(patch.status.map(ActiveStatus::as_str))
            .bind(patch.by_owner)
            .bind(patch.disabled_by_admin)
            .bind(patch.billing_type.map(BillingType::as_str))
            .bind(patch.cost_limit.is_some())
            .bind(patch.cost_limit.flatten().map(Usd))
            .bind(patch.rate_limit)
            .bind(patch.allowed_models.is_some())
            .bind(patch.allowed_models.as_deref().and_then(list_to_column))
            .bind(patch.max_concurrency)
            .bind(patch.client_filter.is_some())
            .bind(patch.client_filter.flatten().map(FilterMode::as_str))
            .bind(patch.allowed_clients.is_some())
            .bind(patch.allowed_clients.as_deref().and_then(list_to_column))
            .bind(patch.expires_at.is_some())
            .bind(patch.expires_at.flatten())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let key = sqlx::query_as::<_, ApiKey>(select_keys!(" WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(key)
        })
    }

    pub async fn delete_api_key(&self, id: i64) -> StoreResult<()> {
        self.delete_by_id("DELETE FROM api_keys WHERE id = ?", id)
            .await
    }

    /// Keys whose usage changed at or after `since`, with their cost used.
    pub async fn keys_used_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<(i64, Decimal)>> {
        let rows: Vec<(i64, Usd)> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, cost_used FROM api_keys WHERE usage_updated_at >= ? ORDER BY id",
        )
        .bind(since)
        .fetch_all(p)
        .await?);
        Ok(rows.into_iter().map(|(id, c)| (id, c.0)).collect())
    }

    /// What the snapshot carries of every key, read with as little as possible.
    pub async fn snapshot_keys(&self) -> StoreResult<Vec<SnapshotKey>> {
        if let super::db::Pool::Sqlite(p) = &self.pool {
            // SQLite hands rows over one by one between threads; with 100,000
            // keys that handover is most of the time, so ask for one JSON row.
            let json: Option<String> = sqlx::query_scalar(
                "SELECT json_group_array(json_array(id, user_id, key_hash, billing_type, status, cost_used, cost_limit, \
                 rate_limit, allowed_models, max_concurrency, expires_at, client_filter, allowed_clients)) FROM api_keys",
            )
            .fetch_one(p)
            .await?;
            return sqlite_keys(json.as_deref().unwrap_or("[]"));
        }
        with_pool!(self, p => Ok(sqlx::query_as::<_, SnapshotKey>(
            "SELECT id, user_id, key_hash, billing_type, status, cost_used, cost_limit, rate_limit, allowed_models, \
             max_concurrency, expires_at, client_filter, allowed_clients FROM api_keys",
        )
        .fetch_all(p)
        .await?))
    }
}

/// The fields of a key a data plane needs. The billing type and client
/// filter travel as stored: the node validates them and fences off a key
/// whose value it cannot read, so one hand-edited row never stops a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotKey {
    pub id: i64,
    pub user_id: i64,
    pub key_hash: String,
    pub billing_type: String,
    /// Only a status that reads as `active` lets the key in.
    pub active: bool,
    pub cost_used: Decimal,
    pub cost_limit: Option<Decimal>,
    pub rate_limit: i32,
    pub allowed_models: Vec<String>,
    pub max_concurrency: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub client_filter: Option<String>,
    pub allowed_clients: Vec<String>,
}

fn is_active(status: &str) -> bool {
    status.parse::<ActiveStatus>() == Ok(ActiveStatus::Active)
}

impl_from_row!(SnapshotKey, |r| {
    Ok(SnapshotKey {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        key_hash: r.try_get("key_hash")?,
        billing_type: r.try_get("billing_type")?,
        active: is_active(r.try_get("status")?),
        cost_used: r.try_get::<Usd, _>("cost_used")?.0,
        cost_limit: r.try_get::<Option<Usd>, _>("cost_limit")?.map(|u| u.0),
        rate_limit: r.try_get("rate_limit")?,
        allowed_models: list_from_column(r.try_get("allowed_models")?),
        max_concurrency: r.try_get("max_concurrency")?,
        expires_at: r.try_get("expires_at")?,
        client_filter: r.try_get("client_filter")?,
        allowed_clients: list_from_column(r.try_get("allowed_clients")?),
    })
});

/// Keys from SQLite's one-row JSON (money in 10⁻¹⁰ USD units, times as text).
fn sqlite_keys(json: &str) -> StoreResult<Vec<SnapshotKey>> {
    type Row = (
        i64,
        i64,
        String,
        String,
        String,
        i64,
        Option<i64>,
        i32,
        Option<String>,
        i32,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("api_keys: {e}")))?;
    let usd = |units: i64| Decimal::new(units, super::db::SQLITE_SCALE).normalize();
    rows.into_iter()
        .map(|r| {
            let expires_at = match r.10 {
                Some(t) => Some(
                    DateTime::parse_from_rfc3339(&t)
                        .or_else(|_| DateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f%:z"))
                        .map_err(|e| {
                            StoreError::Corrupt(format!("api_keys.expires_at {t:?}: {e}"))
                        })?
                        .with_timezone(&Utc),
                ),
                None => None,
            };
            Ok(SnapshotKey {
                id: r.0,
                user_id: r.1,
                key_hash: r.2,
                billing_type: r.3,
                active: is_active(&r.4),
                cost_used: usd(r.5),
                cost_limit: r.6.map(usd),
                rate_limit: r.7,
                allowed_models: list_from_column(r.8),
                max_concurrency: r.9,
                expires_at,
                client_filter: r.11,
                allowed_clients: list_from_column(r.12),
            })
        })
        .collect()
}
