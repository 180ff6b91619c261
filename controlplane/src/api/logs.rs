//! `/request-logs`: filtered, paginated request history.
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ApiState, AuthUser, QueryParams};
use crate::store::RequestLogFilter;

#[derive(Deserialize)]
pub struct LogQuery {
    user_id: Option<i64>,
    api_key_id: Option<i64>,
    account_id: Option<i64>,
    model: Option<String>,
    status_code: Option<i32>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    page: Option<u32>,
    page_size: Option<u32>,
    /// `/usage` only: how totals are grouped.
    pub(super) group_by: Option<String>,
}

pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<LogQuery>,
) -> ApiResult<Json<Value>> {
    let filter = filter(&auth, q);
    let (items, total) = state.store.list_request_logs(&filter).await?;
    let mut items = json!(items);
    if !auth.is_admin() {
        hide_the_pool(&mut items);
    }
    Ok(Json(
        json!({ "items": items, "total": total, "page": filter.page, "page_size": filter.page_size }),
    ))
}

/// What a user's own logs and usage never show: what the operator paid,
/// and which account and node served them.
const OPERATOR_FIELDS: [&str; 3] = ["upstream_cost", "account_id", "node_id"];

/// Removes the operator's fields from every row of `rows`.
pub(super) fn hide_the_pool(rows: &mut Value) {
    if let Value::Array(rows) = rows {
        for row in rows.iter_mut().filter_map(Value::as_object_mut) {
            for field in OPERATOR_FIELDS {
                row.remove(field);
            }
        }
    }
}

/// The filter a caller may use: users see only their own requests, whatever they ask for.
pub(super) fn filter(auth: &AuthUser, q: LogQuery) -> RequestLogFilter {
    RequestLogFilter {
        user_id: auth.listing_scope(q.user_id),
        api_key_id: q.api_key_id,
        account_id: if auth.is_admin() { q.account_id } else { None },
        model: q.model.filter(|m| !m.is_empty()),
        status_code: q.status_code,
        from: q.from,
        to: q.to,
        page: q.page.unwrap_or(1).max(1),
        page_size: q.page_size.unwrap_or(50).clamp(1, 500),
    }
}

/// Most rows one CSV export holds; narrow the filters for more.
const EXPORT_MAX_ROWS: u32 = 100_000;

/// `GET /request-logs/export`: the same filters, as CSV.
pub async fn export(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<LogQuery>,
) -> ApiResult<Response> {
    let admin = auth.is_admin();
    let mut filter = filter(&auth, q);
    filter.page_size = 500;
    const COLUMNS: [&str; 24] = [
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
    ];
    let shown = |column: &str| admin || !OPERATOR_FIELDS.contains(&column);
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
        let (items, _) = state.store.list_request_logs(&filter).await?;
        if items.is_empty() {
            break;
        }
        for r in &items {
            let fields = [
                r.request_id.clone(),
                r.created_at.to_rfc3339(),
                r.user_id.to_string(),
                r.api_key_id.to_string(),
                r.account_id.map(|a| a.to_string()).unwrap_or_default(),
                r.node_id.clone(),
                r.model.clone(),
                r.platform.clone(),
                r.endpoint.clone(),
                r.status_code.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cache_creation_tokens.to_string(),
                r.cache_creation_1h_tokens.to_string(),
                r.cache_read_tokens.to_string(),
                r.total_tokens.to_string(),
                r.upstream_cost.to_string(),
                r.cost.to_string(),
                r.price_version.to_string(),
                r.duration_ms.to_string(),
                r.ttfb_ms.to_string(),
                r.stream.to_string(),
                r.error_class.clone(),
                r.usage_source.clone(),
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
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"request-logs.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
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
