//! Usage as operators and users read it: request logs (filtered, paged,
//! exported), totals by user, key, model, account or day, the consistency
//! check of every aggregate against the logs, and re-rating after a price fix.
use std::collections::HashMap;

use aiproxy_shared::pricing::{LongContext, ModelPrice, PriceTable};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services};
use crate::store::{
    ConsistencyReport, GroupBy, PriceRow, RequestLog, RequestLogFilter, RerateReport, RerateScope,
    UsageTotals,
};

/// Which request logs to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub request_id: Option<String>,
    pub user_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub account_id: Option<i64>,
    pub model: Option<String>,
    pub status_code: Option<i32>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub page: Option<u32>,
    pub page_size: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<RequestLog>,
    pub total: i64,
    pub page: u32,
    pub page_size: u32,
}

/// How usage totals are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    User,
    Key,
    #[default]
    Model,
    /// Administrators only.
    Account,
    /// By billing day.
    Day,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub group_by: Grouping,
    /// The zone days are counted in: `UTC` or an offset such as `+08:00`.
    pub billing_timezone: String,
    pub items: Vec<UsageTotals>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerateRequest {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this model.
    pub model: Option<String>,
    /// Report only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Most rows one CSV export holds; narrow the filters for more.
const EXPORT_MAX_ROWS: u32 = 100_000;

/// The columns of the CSV export, in order.
const COLUMNS: [&str; 25] = [
    "request_id",
    "created_at",
    "user_id",
    "api_key_id",
    "account_id",
    "node_id",
    "model",
    "platform",
    "endpoint",
    "status_code",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "total_tokens",
    "upstream_cost",
    "cost",
    "price_version",
    "duration_ms",
    "ttfb_ms",
    "stream",
    "error_class",
    "usage_source",
    "upstream_request_id",
];

/// What a user's own logs and usage never show: what the operator paid,
/// and which account and node served them.
const OPERATOR_COLUMNS: [&str; 3] = ["account_id", "node_id", "upstream_cost"];

impl LogQuery {
    /// The filter a caller may use: users see only their own requests,
    /// whatever they ask for, and never filter by account.
    fn filter(self, actor: &Actor) -> RequestLogFilter {
        RequestLogFilter {
            request_id: self
                .request_id
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            user_id: actor.listing_scope(self.user_id),
            api_key_id: self.api_key_id,
            account_id: if actor.is_admin() {
                self.account_id
            } else {
                None
            },
            model: self.model.filter(|m| !m.is_empty()),
            status_code: self.status_code,
            from: self.from,
            to: self.to,
            page: self.page.unwrap_or(1).max(1),
            page_size: self.page_size.unwrap_or(50).clamp(1, 500),
        }
    }
}

impl Services {
    pub async fn request_logs(&self, actor: &Actor, query: LogQuery) -> ServiceResult<LogPage> {
        let filter = query.filter(actor);
        let (mut items, total) = self.store.list_request_logs(&filter).await?;
        if !actor.is_admin() {
            items.iter_mut().for_each(|l| l.pool = None);
        }
        Ok(LogPage {
            items,
            total,
            page: filter.page,
            page_size: filter.page_size,
        })
    }

    /// The same filters as CSV (up to 100,000 rows); users' exports leave
    /// out the operator's columns.
    pub async fn export_request_logs(
        &self,
        actor: &Actor,
        query: LogQuery,
    ) -> ServiceResult<String> {
        let admin = actor.is_admin();
        let mut filter = query.filter(actor);
        filter.page_size = 500;
        let shown = |column: &str| admin || !OPERATOR_COLUMNS.contains(&column);
        let mut csv: String = COLUMNS
            .iter()
            .copied()
            .filter(|c| shown(c))
            .collect::<Vec<_>>()
            .join(",");
        csv.push('\n');
        let mut rows = 0u32;
        for page in 1.. {
            filter.page = page;
            let (items, _) = self.store.list_request_logs(&filter).await?;
            if items.is_empty() {
                break;
            }
            for r in &items {
                let pool = r.pool.as_ref();
                let fields = [
                    r.request_id.clone(),
                    r.created_at.to_rfc3339(),
                    r.user_id.to_string(),
                    r.api_key_id.to_string(),
                    pool.and_then(|p| p.account_id)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    pool.map(|p| p.node_id.clone()).unwrap_or_default(),
                    r.model.clone(),
                    r.platform.clone(),
                    r.endpoint.clone(),
                    r.status_code.to_string(),
                    r.tokens.input.to_string(),
                    r.tokens.output.to_string(),
                    r.tokens.cache_creation.to_string(),
                    r.tokens.cache_creation_1h.to_string(),
                    r.tokens.cache_read.to_string(),
                    r.total_tokens.to_string(),
                    pool.map(|p| p.upstream_cost.to_string())
                        .unwrap_or_default(),
                    r.cost.to_string(),
                    r.price_version.to_string(),
                    r.duration_ms.to_string(),
                    r.ttfb_ms.to_string(),
                    r.stream.to_string(),
                    r.error_class.clone(),
                    r.usage_source.clone(),
                    r.upstream_request_id.clone(),
                ];
                let line: Vec<String> = COLUMNS
                    .iter()
                    .zip(fields.iter())
                    .filter(|(column, _)| shown(column))
                    .map(|(_, f)| csv_field(f))
                    .collect();
                csv.push_str(&line.join(","));
                csv.push('\n');
            }
            rows += items.len() as u32;
            if rows >= EXPORT_MAX_ROWS {
                break;
            }
        }
        Ok(csv)
    }

    pub async fn usage(
        &self,
        actor: &Actor,
        group: Grouping,
        query: LogQuery,
    ) -> ServiceResult<UsageReport> {
        if !actor.is_admin() && group == Grouping::Account {
            return Err(ServiceError::Forbidden("only admins see usage by account"));
        }
        let by = match group {
            Grouping::User => GroupBy::User,
            Grouping::Key => GroupBy::Key,
            Grouping::Model => GroupBy::Model,
            Grouping::Account => GroupBy::Account,
            Grouping::Day => GroupBy::Day,
        };
        let mut items = self
            .store
            .usage_totals(&query.filter(actor), by, self.billing_tz)
            .await?;
        if !actor.is_admin() {
            items.iter_mut().for_each(|t| t.upstream_cost = None);
        }
        let zone = match self.billing_tz.local_minus_utc() {
            0 => "UTC".to_string(),
            _ => self.billing_tz.to_string(),
        };
        Ok(UsageReport {
            group_by: group,
            billing_timezone: zone,
            items,
        })
    }

    pub async fn consistency(&self, actor: &Actor) -> ServiceResult<ConsistencyReport> {
        actor.require_admin()?;
        let report = self.store.consistency(self.billing_tz).await?;
        if !report.clean {
            tracing::warn!(
                differences = report.differences.len(),
                "consistency check found differences"
            );
        }
        Ok(report)
    }

    /// Recomputes requests at today's prices (keeping each request's rate)
    /// and moves every aggregate by the difference.
    pub async fn rerate(&self, actor: &Actor, req: RerateRequest) -> ServiceResult<RerateReport> {
        actor.require_admin()?;
        if req.to <= req.from {
            return Err(ServiceError::BadRequest("to must be after from".into()));
        }
        let prices = price_table(self.store.list_prices().await?);
        let rates: HashMap<i64, _> = self
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
        let report = self
            .store
            .rerate(&scope, &prices, &rates, self.billing_tz)
            .await?;
        tracing::info!(
            from = %req.from, to = %req.to, requests = report.requests, changed = report.changed,
            before = %report.before_cost, after = %report.after_cost, applied = report.applied,
            by = %actor.name(), "re-rated"
        );
        Ok(report)
    }
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

/// A CSV field, quoted when it must be; a leading formula character is
/// neutralised so spreadsheets do not run it.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(super::csv_field("plain"), "plain");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(super::csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(super::csv_field("-1.5"), "-1.5");
    }
}
