//! `model_prices`: USD per million tokens by model, seeded from the shipped
//! price file; every change is kept in `model_price_history`, whose row id is
//! the price version a request is billed with.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::db::{Usd, impl_from_row, with_pool};
use super::{BUMP_VERSION, LastId, Store, StoreError, StoreResult};

/// Prices shipped with the binary, used to seed an empty `model_prices`.
const SHIPPED_PRICES: &str = include_str!("../../prices.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct PriceRow {
    pub model: String,
    pub input_price: Decimal,
    pub output_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub cache_write_5m_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub cache_write_1h_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub cache_read_price: Decimal,
    /// Prompt tokens above which the `long_*` prices apply; 0 is no tier.
    #[serde(default)]
    #[schema(required = true)]
    pub long_context_threshold: i64,
    #[serde(default)]
    #[schema(required = true)]
    pub long_input_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub long_output_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub long_cache_write_5m_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub long_cache_write_1h_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub long_cache_read_price: Decimal,
    #[serde(default)]
    #[schema(required = true)]
    pub version: i64,
    #[serde(default = "Utc::now")]
    #[schema(required = true)]
    pub updated_at: DateTime<Utc>,
}

/// A `PriceRow` from a row whose timestamp column is `$at` (both tables).
macro_rules! price_row {
    ($r:ident, $at:literal, $version:literal) => {
        PriceRow {
            model: $r.try_get("model")?,
            input_price: $r.try_get::<Usd, _>("input_price")?.0,
            output_price: $r.try_get::<Usd, _>("output_price")?.0,
            cache_write_5m_price: $r.try_get::<Usd, _>("cache_write_5m_price")?.0,
            cache_write_1h_price: $r.try_get::<Usd, _>("cache_write_1h_price")?.0,
            cache_read_price: $r.try_get::<Usd, _>("cache_read_price")?.0,
            long_context_threshold: $r.try_get("long_context_threshold")?,
            long_input_price: $r.try_get::<Usd, _>("long_input_price")?.0,
            long_output_price: $r.try_get::<Usd, _>("long_output_price")?.0,
            long_cache_write_5m_price: $r.try_get::<Usd, _>("long_cache_write_5m_price")?.0,
            long_cache_write_1h_price: $r.try_get::<Usd, _>("long_cache_write_1h_price")?.0,
            long_cache_read_price: $r.try_get::<Usd, _>("long_cache_read_price")?.0,
            version: $r.try_get($version)?,
            updated_at: $r.try_get($at)?,
        }
    };
}

impl_from_row!(PriceRow, |r| { Ok(price_row!(r, "updated_at", "version")) });

/// One entry of a model's price history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PriceVersion {
    #[serde(flatten)]
    pub prices: PriceRow,
    pub deleted: bool,
    pub changed_by: String,
}

impl_from_row!(PriceVersion, |r| {
    Ok(PriceVersion {
        prices: price_row!(r, "created_at", "id"),
        deleted: r.try_get("deleted")?,
        changed_by: r.try_get("changed_by")?,
    })
});

/// The shipped price file, parsed.
#[allow(
    clippy::expect_used,
    reason = "embedded at build time and read by the tests"
)]
pub fn shipped_prices() -> Vec<PriceRow> {
    serde_json::from_str(SHIPPED_PRICES).expect("prices.json is valid")
}

const PRICE_COLUMNS: &str = "model, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, \
     long_context_threshold, long_input_price, long_output_price, long_cache_write_5m_price, long_cache_write_1h_price, \
     long_cache_read_price";

/// Binds a row's values in `PRICE_COLUMNS` order.
macro_rules! bind_prices {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.model)
            .bind(Usd($row.input_price))
            .bind(Usd($row.output_price))
            .bind(Usd($row.cache_write_5m_price))
            .bind(Usd($row.cache_write_1h_price))
            .bind(Usd($row.cache_read_price))
            .bind($row.long_context_threshold)
            .bind(Usd($row.long_input_price))
            .bind(Usd($row.long_output_price))
            .bind(Usd($row.long_cache_write_5m_price))
            .bind(Usd($row.long_cache_write_1h_price))
            .bind(Usd($row.long_cache_read_price))
    };
}

impl Store {
    pub async fn list_prices(&self) -> StoreResult<Vec<PriceRow>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, PriceRow>(&format!(
            "SELECT {PRICE_COLUMNS}, version, updated_at FROM model_prices ORDER BY model"
        ))
        .fetch_all(p)
        .await?))
    }

    pub async fn get_price(&self, model: &str) -> StoreResult<PriceRow> {
        with_pool!(self, p => sqlx::query_as::<_, PriceRow>(&format!(
            "SELECT {PRICE_COLUMNS}, version, updated_at FROM model_prices WHERE model = ?"
        ))
        .bind(model)
        .fetch_optional(p)
        .await?
        .ok_or(StoreError::NotFound))
    }

    /// A model's price versions, newest first.
    pub async fn price_history(&self, model: &str) -> StoreResult<Vec<PriceVersion>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, PriceVersion>(&format!(
            "SELECT id, {PRICE_COLUMNS}, deleted, changed_by, created_at FROM model_price_history \
             WHERE model = ? ORDER BY id DESC"
        ))
        .bind(model)
        .fetch_all(p)
        .await?))
    }

    /// Sets the prices of each model (creating it if new) as new versions,
    /// in one transaction. Returns the versions, in order.
    pub async fn set_prices(&self, rows: &[PriceRow], changed_by: &str) -> StoreResult<Vec<i64>> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut versions = Vec::with_capacity(rows.len());
            for row in rows {
                let sql = format!(
                    "INSERT INTO model_price_history ({PRICE_COLUMNS}, deleted, changed_by, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)");
                let query = sqlx::query(&sql);
                let done = bind_prices!(query, row)
                    .bind(changed_by)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let version = done.last_id();
                sqlx::query("DELETE FROM model_prices WHERE model = ?")
                    .bind(&row.model)
                    .execute(&mut *tx)
                    .await?;
                let sql = format!(
                    "INSERT INTO model_prices ({PRICE_COLUMNS}, version, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                let query = sqlx::query(&sql);
                bind_prices!(query, row)
                    .bind(version)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                versions.push(version);
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(versions)
        })
    }

    /// Removes a model's price (kept in its history as a deleted version).
    pub async fn delete_price(&self, model: &str, changed_by: &str) -> StoreResult<()> {
        let current = self.get_price(model).await?;
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let sql = format!(
                "INSERT INTO model_price_history ({PRICE_COLUMNS}, deleted, changed_by, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)");
            let query = sqlx::query(&sql);
            bind_prices!(query, current)
                .bind(changed_by)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM model_prices WHERE model = ?")
                .bind(model)
                .execute(&mut *tx)
                .await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
        });
        Ok(())
    }

    /// Fills `model_prices` from the shipped file when it is empty; an
    /// operator's edits and deletions are never overwritten.
    pub async fn seed_prices_if_empty(&self) -> StoreResult<usize> {
        let count: i64 = with_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM model_price_history")
            .fetch_one(p)
            .await?);
        if count > 0 {
            return Ok(0);
        }
        let rows = shipped_prices();
        self.set_prices(&rows, "shipped price file").await?;
        Ok(rows.len())
    }
}
