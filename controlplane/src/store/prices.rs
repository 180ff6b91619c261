//! `model_prices`: USD per million tokens by model, seeded from the shipped price file.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::db::{Usd, impl_from_row, with_pool};
use super::{BUMP_VERSION, Store, StoreResult};

/// Prices shipped with the binary, used to seed an empty `model_prices`.
const SHIPPED_PRICES: &str = include_str!("../../prices.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceRow {
    pub model: String,
    pub input_price: Decimal,
    pub output_price: Decimal,
    pub cache_write_5m_price: Decimal,
    pub cache_write_1h_price: Decimal,
    pub cache_read_price: Decimal,
    #[serde(default = "first_version")]
    pub version: i64,
    #[serde(default = "Utc::now")]
    pub updated_at: DateTime<Utc>,
}

fn first_version() -> i64 {
    1
}

impl_from_row!(PriceRow, |r| {
    Ok(PriceRow {
        model: r.try_get("model")?,
        input_price: r.try_get::<Usd, _>("input_price")?.0,
        output_price: r.try_get::<Usd, _>("output_price")?.0,
        cache_write_5m_price: r.try_get::<Usd, _>("cache_write_5m_price")?.0,
        cache_write_1h_price: r.try_get::<Usd, _>("cache_write_1h_price")?.0,
        cache_read_price: r.try_get::<Usd, _>("cache_read_price")?.0,
        version: r.try_get("version")?,
        updated_at: r.try_get("updated_at")?,
    })
});

/// The shipped price file, parsed.
pub fn shipped_prices() -> Vec<PriceRow> {
    serde_json::from_str(SHIPPED_PRICES).expect("prices.json is valid")
}

impl Store {
    pub async fn list_prices(&self) -> StoreResult<Vec<PriceRow>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, PriceRow>(
            "SELECT model, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, version, updated_at \
             FROM model_prices ORDER BY model",
        )
        .fetch_all(p)
        .await?))
    }

    /// Fills `model_prices` from the shipped file when it is empty; an
    /// operator's edits and deletions are never overwritten.
    pub async fn seed_prices_if_empty(&self) -> StoreResult<usize> {
        let rows = shipped_prices();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM model_prices").fetch_one(&mut *tx).await?;
            if count > 0 {
                return Ok(0);
            }
            for row in &rows {
                sqlx::query(
                    "INSERT INTO model_prices (model, input_price, output_price, cache_write_5m_price, cache_write_1h_price, \
                     cache_read_price, version, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                )
                .bind(&row.model)
                .bind(Usd(row.input_price))
                .bind(Usd(row.output_price))
                .bind(Usd(row.cache_write_5m_price))
                .bind(Usd(row.cache_write_1h_price))
                .bind(Usd(row.cache_read_price))
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(rows.len())
    }
}
