//! `/request-logs`: filtered, paginated request history.
use axum::Json;
use axum::extract::State;
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
}

pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<LogQuery>,
) -> ApiResult<Json<Value>> {
    // Users see only their own requests, whatever they ask for.
    let user_id = if auth.is_admin() {
        q.user_id
    } else {
        Some(auth.user.id)
    };
    let filter = RequestLogFilter {
        user_id,
        api_key_id: q.api_key_id,
        account_id: if auth.is_admin() { q.account_id } else { None },
        model: q.model.filter(|m| !m.is_empty()),
        status_code: q.status_code,
        from: q.from,
        to: q.to,
        page: q.page.unwrap_or(1).max(1),
        page_size: q.page_size.unwrap_or(50).clamp(1, 500),
    };
    let (items, total) = state.store.list_request_logs(&filter).await?;
    Ok(Json(
        json!({ "items": items, "total": total, "page": filter.page, "page_size": filter.page_size }),
    ))
}
