//! `/prices`: model prices (USD per million tokens), each change a new
//! version; import from LiteLLM's `model_prices_and_context_window.json`.
use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody, QueryParams};
use crate::store::PriceRow;

/// Prices as an operator writes them: decimal strings, USD per million
/// tokens. A field left out keeps the model's current value (0 for a model
/// not priced yet), so changing one price cannot zero the others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    input_price: Option<String>,
    output_price: Option<String>,
    cache_write_5m_price: Option<String>,
    cache_write_1h_price: Option<String>,
    cache_read_price: Option<String>,
    long_context_threshold: Option<i64>,
    long_input_price: Option<String>,
    long_output_price: Option<String>,
    long_cache_write_5m_price: Option<String>,
    long_cache_write_1h_price: Option<String>,
    long_cache_read_price: Option<String>,
}

/// `given` if the operator sent it, else `current`.
fn price(field: &str, given: Option<&str>, current: Decimal) -> ApiResult<Decimal> {
    let Some(v) = given else {
        return Ok(current);
    };
    let d = Decimal::from_str(v.trim())
        .map_err(|_| ApiError::BadRequest(format!("{field} must be a decimal string")))?;
    if d.is_sign_negative() || d > Decimal::from(100_000) {
        return Err(ApiError::BadRequest(format!(
            "{field} must be between 0 and 100000 (USD per million tokens)"
        )));
    }
    Ok(d)
}

fn check_model(model: &str) -> ApiResult<()> {
    if model.trim().is_empty() || model.len() > 128 {
        return Err(ApiError::BadRequest(
            "model must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

pub async fn list(State(state): State<ApiState>, _auth: AuthUser) -> ApiResult<Json<Value>> {
    let items = state.store.list_prices().await?;
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn history(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let items = state.store.price_history(&model).await?;
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

pub async fn put(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(model): Path<String>,
    JsonBody(req): JsonBody<PriceInput>,
) -> ApiResult<Json<PriceRow>> {
    auth.require_admin()?;
    check_model(&model)?;
    let current = match state.store.get_price(&model).await {
        Ok(row) => row,
        Err(crate::store::StoreError::NotFound) => {
            if req.input_price.is_none() || req.output_price.is_none() {
                return Err(ApiError::BadRequest(
                    "a model priced for the first time needs input_price and output_price".into(),
                ));
            }
            PriceRow {
                model: model.clone(),
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let threshold = req
        .long_context_threshold
        .unwrap_or(current.long_context_threshold);
    if threshold < 0 {
        return Err(ApiError::BadRequest(
            "long_context_threshold must not be negative".into(),
        ));
    }
    let row = PriceRow {
        model: model.clone(),
        input_price: price(
            "input_price",
            req.input_price.as_deref(),
            current.input_price,
        )?,
        output_price: price(
            "output_price",
            req.output_price.as_deref(),
            current.output_price,
        )?,
        cache_write_5m_price: price(
            "cache_write_5m_price",
            req.cache_write_5m_price.as_deref(),
            current.cache_write_5m_price,
        )?,
        cache_write_1h_price: price(
            "cache_write_1h_price",
            req.cache_write_1h_price.as_deref(),
            current.cache_write_1h_price,
        )?,
        cache_read_price: price(
            "cache_read_price",
            req.cache_read_price.as_deref(),
            current.cache_read_price,
        )?,
        long_context_threshold: threshold,
        long_input_price: price(
            "long_input_price",
            req.long_input_price.as_deref(),
            current.long_input_price,
        )?,
        long_output_price: price(
            "long_output_price",
            req.long_output_price.as_deref(),
            current.long_output_price,
        )?,
        long_cache_write_5m_price: price(
            "long_cache_write_5m_price",
            req.long_cache_write_5m_price.as_deref(),
            current.long_cache_write_5m_price,
        )?,
        long_cache_write_1h_price: price(
            "long_cache_write_1h_price",
            req.long_cache_write_1h_price.as_deref(),
            current.long_cache_write_1h_price,
        )?,
        long_cache_read_price: price(
            "long_cache_read_price",
            req.long_cache_read_price.as_deref(),
            current.long_cache_read_price,
        )?,
        ..Default::default()
    };
    let versions = state.store.set_prices(&[row], &auth.user.username).await?;
    tracing::info!(model = %model, version = versions[0], by = %auth.user.username, "price set");
    Ok(Json(state.store.get_price(&model).await?))
}

pub async fn remove(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(model): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state
        .store
        .delete_price(&model, &auth.user.username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ImportQuery {
    /// `all` (default) or `existing`: only models already priced.
    only: Option<String>,
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

/// Imports LiteLLM's price file (the JSON object itself as the body).
pub async fn import(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<ImportQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let only_existing = match q.only.as_deref() {
        None | Some("all") => false,
        Some("existing") => true,
        Some(_) => {
            return Err(ApiError::BadRequest("only must be all or existing".into()));
        }
    };
    let existing: std::collections::HashSet<String> = if only_existing {
        state
            .store
            .list_prices()
            .await?
            .into_iter()
            .map(|p| p.model)
            .collect()
    } else {
        Default::default()
    };
    let mut rows = Vec::new();
    let mut skipped = 0;
    for (model, entry) in &body {
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
    state
        .store
        .set_prices(&rows, &format!("{} (LiteLLM import)", auth.user.username))
        .await?;
    tracing::info!(imported = rows.len(), skipped, "prices imported");
    Ok(Json(json!({ "imported": rows.len(), "skipped": skipped })))
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
