//! Model prices (USD per million tokens): each change a new version, kept
//! in a history; LiteLLM's price file imported exactly.
use std::collections::HashSet;
use std::str::FromStr;

use aiproxy_shared::money::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services};
use crate::store::{PriceRow, PriceVersion, StoreError};

/// Prices as an operator writes them, USD per million tokens. A field left
/// out keeps the model's current value (0 for a model not priced yet), so
/// changing one price cannot zero the others.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    pub input_price: Option<Money>,
    pub output_price: Option<Money>,
    pub cache_write_5m_price: Option<Money>,
    pub cache_write_1h_price: Option<Money>,
    pub cache_read_price: Option<Money>,
    /// Prompt tokens above which the `long_*` prices apply; 0 is no tier.
    pub long_context_threshold: Option<i64>,
    pub long_input_price: Option<Money>,
    pub long_output_price: Option<Money>,
    pub long_cache_write_5m_price: Option<Money>,
    pub long_cache_write_1h_price: Option<Money>,
    pub long_cache_read_price: Option<Money>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PriceList {
    pub items: Vec<PriceRow>,
    pub total: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PriceHistory {
    pub items: Vec<PriceVersion>,
    pub total: usize,
}

/// Which models an import prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportScope {
    /// Every model in the file.
    #[default]
    All,
    /// Only models already priced.
    Existing,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped: usize,
}

/// `given` if the operator sent it, else `current`.
fn price(field: &str, given: Option<Money>, current: Decimal) -> ServiceResult<Decimal> {
    let Some(Money(d)) = given else {
        return Ok(current);
    };
    if d.is_sign_negative() || d > Decimal::from(100_000) {
        return Err(ServiceError::BadRequest(format!(
            "{field} must be between 0 and 100000 (USD per million tokens)"
        )));
    }
    Ok(d)
}

fn check_model(model: &str) -> ServiceResult<()> {
    if model.trim().is_empty() || model.len() > 128 {
        return Err(ServiceError::BadRequest(
            "model must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

impl Services {
    /// Current prices and their versions (any signed-in user).
    pub async fn list_prices(&self, _actor: &Actor) -> ServiceResult<PriceList> {
        let items = self.store.list_prices().await?;
        Ok(PriceList {
            total: items.len(),
            items,
        })
    }

    pub async fn price_history(&self, actor: &Actor, model: &str) -> ServiceResult<PriceHistory> {
        actor.require_admin()?;
        let items = self.store.price_history(model).await?;
        Ok(PriceHistory {
            total: items.len(),
            items,
        })
    }

    /// Sets a model's prices as a new version.
    pub async fn set_price(
        &self,
        actor: &Actor,
        model: &str,
        req: PriceInput,
    ) -> ServiceResult<PriceRow> {
        actor.require_admin()?;
        check_model(model)?;
        let current = match self.store.get_price(model).await {
            Ok(row) => row,
            Err(StoreError::NotFound) => {
                if req.input_price.is_none() || req.output_price.is_none() {
                    return Err(ServiceError::BadRequest(
                        "a model priced for the first time needs input_price and output_price"
                            .into(),
                    ));
                }
                PriceRow {
                    model: model.to_string(),
                    ..Default::default()
                }
            }
            Err(e) => return Err(e.into()),
        };
        let threshold = req
            .long_context_threshold
            .unwrap_or(current.long_context_threshold);
        if threshold < 0 {
            return Err(ServiceError::BadRequest(
                "long_context_threshold must not be negative".into(),
            ));
        }
        let row = PriceRow {
            model: model.to_string(),
            input_price: price("input_price", req.input_price, current.input_price)?,
            output_price: price("output_price", req.output_price, current.output_price)?,
            cache_write_5m_price: price(
                "cache_write_5m_price",
                req.cache_write_5m_price,
                current.cache_write_5m_price,
            )?,
            cache_write_1h_price: price(
                "cache_write_1h_price",
                req.cache_write_1h_price,
                current.cache_write_1h_price,
            )?,
            cache_read_price: price(
                "cache_read_price",
                req.cache_read_price,
                current.cache_read_price,
            )?,
            long_context_threshold: threshold,
            long_input_price: price(
                "long_input_price",
                req.long_input_price,
                current.long_input_price,
            )?,
            long_output_price: price(
                "long_output_price",
                req.long_output_price,
                current.long_output_price,
            )?,
            long_cache_write_5m_price: price(
                "long_cache_write_5m_price",
                req.long_cache_write_5m_price,
                current.long_cache_write_5m_price,
            )?,
            long_cache_write_1h_price: price(
                "long_cache_write_1h_price",
                req.long_cache_write_1h_price,
                current.long_cache_write_1h_price,
            )?,
            long_cache_read_price: price(
                "long_cache_read_price",
                req.long_cache_read_price,
                current.long_cache_read_price,
            )?,
            ..Default::default()
        };
        let versions = self.store.set_prices(&[row], actor.name()).await?;
        tracing::info!(model = %model, version = versions[0], by = %actor.name(), "price set");
        Ok(self.store.get_price(model).await?)
    }

    pub async fn delete_price(&self, actor: &Actor, model: &str) -> ServiceResult<()> {
        actor.require_admin()?;
        Ok(self.store.delete_price(model, actor.name()).await?)
    }

    /// Imports LiteLLM's price file (its JSON object).
    pub async fn import_prices(
        &self,
        actor: &Actor,
        scope: ImportScope,
        file: &Map<String, Value>,
    ) -> ServiceResult<ImportReport> {
        actor.require_admin()?;
        let only_existing = scope == ImportScope::Existing;
        let existing: HashSet<String> = if only_existing {
            self.store
                .list_prices()
                .await?
                .into_iter()
                .map(|p| p.model)
                .collect()
        } else {
            HashSet::new()
        };
        let mut rows = Vec::new();
        let mut skipped = 0;
        for (model, entry) in file {
            let usable = model != "sample_spec"
                && model.len() <= 128
                && (!only_existing || existing.contains(model));
            match entry
                .as_object()
                .filter(|_| usable)
                .and_then(|e| from_litellm(model, e))
            {
                Some(row) => rows.push(row),
                None => skipped += 1,
            }
        }
        self.store
            .set_prices(&rows, &format!("{} (LiteLLM import)", actor.name()))
            .await?;
        tracing::info!(imported = rows.len(), skipped, "prices imported");
        Ok(ImportReport {
            imported: rows.len(),
            skipped,
        })
    }
}

/// A per-token price from LiteLLM, per million tokens, exactly.
fn per_million(entry: &Map<String, Value>, field: &str) -> Option<Decimal> {
    let n = entry.get(field)?.as_number()?;
    let per_token = Decimal::from_str(&n.to_string())
        .or_else(|_| Decimal::from_scientific(&n.to_string()))
        .ok()?;
    Some((per_token * Decimal::from(1_000_000)).normalize())
}

/// One LiteLLM entry as our prices; `None` when it has no token prices.
pub fn from_litellm(model: &str, entry: &Map<String, Value>) -> Option<PriceRow> {
    let input = per_million(entry, "input_cost_per_token")?;
    let output = per_million(entry, "output_cost_per_token")?;
    let long_input = per_million(entry, "input_cost_per_token_above_200k_tokens");
    let write_5m = per_million(entry, "cache_creation_input_token_cost").unwrap_or_default();
    let long_write_5m =
        per_million(entry, "cache_creation_input_token_cost_above_200k_tokens").unwrap_or(write_5m);
    let write_1h =
        per_million(entry, "cache_creation_input_token_cost_above_1hr").unwrap_or(write_5m);
    let long_write_1h = per_million(
        entry,
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens",
    )
    .unwrap_or(if write_5m.is_zero() {
        write_1h
    } else {
        write_1h * long_write_5m / write_5m
    });
    let read = per_million(entry, "cache_read_input_token_cost").unwrap_or_default();
    Some(PriceRow {
        model: model.to_string(),
        input_price: input,
        output_price: output,
        cache_write_5m_price: write_5m,
        cache_write_1h_price: write_1h,
        cache_read_price: read,
        long_context_threshold: if long_input.is_some() { 200_000 } else { 0 },
        long_input_price: long_input.unwrap_or_default(),
        long_output_price: per_million(entry, "output_cost_per_token_above_200k_tokens")
            .unwrap_or(output),
        long_cache_write_5m_price: if long_input.is_some() {
            long_write_5m
        } else {
            Decimal::ZERO
        },
        long_cache_write_1h_price: if long_input.is_some() {
            long_write_1h.normalize()
        } else {
            Decimal::ZERO
        },
        long_cache_read_price: per_million(entry, "cache_read_input_token_cost_above_200k_tokens")
            .unwrap_or(if long_input.is_some() {
                read
            } else {
                Decimal::ZERO
            }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_entries_convert_exactly() {
        let file: Value = serde_json::json!({
            "claude-sonnet-4-5": {
                "input_cost_per_token": 3e-06,
                "output_cost_per_token": 1.5e-05,
                "cache_creation_input_token_cost": 3.75e-06,
                "cache_creation_input_token_cost_above_1hr": 6e-06,
                "cache_read_input_token_cost": 3e-07,
                "input_cost_per_token_above_200k_tokens": 6e-06,
                "output_cost_per_token_above_200k_tokens": 2.25e-05,
                "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
                "cache_read_input_token_cost_above_200k_tokens": 6e-07
            },
            "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06}
        });
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let sonnet = from_litellm(
            "claude-sonnet-4-5",
            file["claude-sonnet-4-5"].as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                sonnet.input_price,
                sonnet.output_price,
                sonnet.cache_write_5m_price,
                sonnet.cache_write_1h_price,
                sonnet.cache_read_price
            ),
            (d("3"), d("15"), d("3.75"), d("6"), d("0.3"))
        );
        assert_eq!(sonnet.long_context_threshold, 200_000);
        assert_eq!(
            (
                sonnet.long_input_price,
                sonnet.long_output_price,
                sonnet.long_cache_write_5m_price,
                sonnet.long_cache_write_1h_price,
                sonnet.long_cache_read_price
            ),
            (d("6"), d("22.5"), d("7.5"), d("12"), d("0.6"))
        );
        let gpt = from_litellm("gpt-4o", file["gpt-4o"].as_object().unwrap()).unwrap();
        assert_eq!(
            (gpt.input_price, gpt.output_price, gpt.cache_read_price),
            (d("2.5"), d("10"), d("1.25"))
        );
        assert_eq!(gpt.long_context_threshold, 0);
        assert!(
            from_litellm(
                "x",
                serde_json::json!({"mode": "embedding"})
                    .as_object()
                    .unwrap()
            )
            .is_none()
        );
    }
}
