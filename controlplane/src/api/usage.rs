//! `/usage`: totals by user, key, model, account or day; the consistency
//! check of every aggregate against the request logs; re-rating after a price fix.
use std::collections::HashMap;

use aiproxy_shared::pricing::{LongContext, ModelPrice, PriceTable};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::logs::{LogQuery, filter};
use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody, QueryParams};
use crate::store::{ConsistencyReport, GroupBy, PriceRow, RerateReport, RerateScope};

pub async fn totals(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<LogQuery>,
) -> ApiResult<Json<Value>> {
    let group_name = q.group_by.clone().unwrap_or_else(|| "model".into());
    let group = GroupBy::parse(&group_name).ok_or_else(|| {
        ApiError::BadRequest("group_by must be user, key, model, account or day".into())
    })?;
    if !auth.is_admin() && group == GroupBy::Account {
        return Err(ApiError::Forbidden("only admins see usage by account"));
    }
    let f = filter(&auth, q);
    let items = state
        .store
        .usage_totals(&f, group, state.billing_tz)
        .await?;
    let zone = match state.billing_tz.local_minus_utc() {
        0 => "UTC".to_string(),
        _ => state.billing_tz.to_string(),
    };
    let mut items = json!(items);
    if !auth.is_admin() {
        super::logs::hide_the_pool(&mut items);
    }
    Ok(Json(
        json!({ "group_by": group_name, "billing_timezone": zone, "items": items }),
    ))
}

pub async fn consistency(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> ApiResult<Json<ConsistencyReport>> {
    auth.require_admin()?;
    let report = state.store.consistency(state.billing_tz).await?;
    if !report.clean {
        tracing::warn!(
            differences = report.differences.len(),
            "consistency check found differences"
        );
    }
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerateRequest {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    model: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// The stored prices as the billing maths reads them.
pub fn price_table(rows: Vec<PriceRow>) -> PriceTable {
    PriceTable::new(
        rows.into_iter()
            .map(|p| {
                let long_context = (p.long_context_threshold > 0).then_some(LongContext {
                    threshold: p.long_context_threshold as u64,
                    input: p.long_input_price,
                    output: p.long_output_price,
                    cache_write_5m: p.long_cache_write_5m_price,
                    cache_write_1h: p.long_cache_write_1h_price,
                    cache_read: p.long_cache_read_price,
                });
                let price = ModelPrice {
                    input: p.input_price,
                    output: p.output_price,
                    cache_write_5m: p.cache_write_5m_price,
                    cache_write_1h: p.cache_write_1h_price,
                    cache_read: p.cache_read_price,
                    long_context,
                    version: p.version as u64,
                };
                (p.model, price)
            })
            .collect(),
    )
}

pub async fn rerate(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<RerateRequest>,
) -> ApiResult<Json<RerateReport>> {
    auth.require_admin()?;
    if req.to <= req.from {
        return Err(ApiError::BadRequest("to must be after from".into()));
    }
    let prices = price_table(state.store.list_prices().await?);
    let rates: HashMap<i64, _> = state
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.price_rate))
        .collect();
    let scope = RerateScope {
        from: req.from,
        to: req.to,
        model: req.model.clone(),
        dry_run: req.dry_run,
    };
    let report = state
        .store
        .rerate(&scope, &prices, &rates, state.billing_tz)
        .await?;
    tracing::info!(
        from = %req.from, to = %req.to, requests = report.requests, changed = report.changed,
        before = %report.before_cost, after = %report.after_cost, applied = report.applied,
        by = %auth.user.username, "re-rated"
    );
    if report.applied {}
    Ok(Json(report))
}
