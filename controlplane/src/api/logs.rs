//! `/request-logs` and `/usage`: the REST face of usage.
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{JsonBody, QueryParams};
use crate::service::usage::{Grouping, LogPage, LogQuery, RerateRequest, UsageReport};
use crate::service::{Actor, ServiceResult, Services};
use crate::store::{ConsistencyReport, RerateReport};

/// Filters of the request logs and usage totals.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// One request: aiproxy's id (`x-request-id`) or the upstream's.
    pub(crate) request_id: Option<String>,
    /// Admins: one user's requests (users always see their own).
    pub(crate) user_id: Option<i64>,
    pub(crate) api_key_id: Option<i64>,
    /// Admins only.
    pub(crate) account_id: Option<i64>,
    pub(crate) model: Option<String>,
    pub(crate) status_code: Option<i32>,
    pub(crate) from: Option<DateTime<Utc>>,
    pub(crate) to: Option<DateTime<Utc>>,
    /// 1-based.
    pub(crate) page: Option<u32>,
    /// 1 to 500 (default 50).
    pub(crate) page_size: Option<u32>,
    /// `/usage` only: how totals are grouped (default `model`).
    pub(crate) group_by: Option<Grouping>,
}

impl LogParams {
    pub(crate) fn split(self) -> (Option<Grouping>, LogQuery) {
        let query = LogQuery {
            request_id: self.request_id,
            user_id: self.user_id,
            api_key_id: self.api_key_id,
            account_id: self.account_id,
            model: self.model,
            status_code: self.status_code,
            from: self.from,
            to: self.to,
            page: self.page,
            page_size: self.page_size,
        };
        (self.group_by, query)
    }
}

/// Request logs, filtered and paged (users: their own, without the operator's fields).
#[utoipa::path(get, path = "/request-logs", tag = "usage", params(LogParams),
    responses((status = 200, body = LogPage), super::Failures))]
pub async fn list(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<LogParams>,
) -> ServiceResult<Json<LogPage>> {
    Ok(Json(s.request_logs(&actor, q.split().1).await?))
}

/// The same filters as CSV (up to 100,000 rows).
#[utoipa::path(get, path = "/request-logs/export", tag = "usage", params(LogParams),
    responses((status = 200, content_type = "text/csv", body = String), super::Failures))]
pub async fn export(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<LogParams>,
) -> ServiceResult<Response> {
    let csv = s.export_request_logs(&actor, q.split().1).await?;
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

/// Usage totals grouped by user, key, model, account (admins) or billing day.
#[utoipa::path(get, path = "/usage", tag = "usage", params(LogParams),
    responses((status = 200, body = UsageReport), super::Failures))]
pub async fn totals(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<LogParams>,
) -> ServiceResult<Json<UsageReport>> {
    let (group, query) = q.split();
    Ok(Json(
        s.usage(&actor, group.unwrap_or_default(), query).await?,
    ))
}

/// Every aggregate compared with the request logs (admins).
#[utoipa::path(get, path = "/usage/consistency", tag = "usage",
    responses((status = 200, body = ConsistencyReport), super::Failures))]
pub async fn consistency(
    State(s): State<Services>,
    actor: Actor,
) -> ServiceResult<Json<ConsistencyReport>> {
    Ok(Json(s.consistency(&actor).await?))
}

/// Re-rate requests at today's prices after a price fix (admins).
#[utoipa::path(post, path = "/usage/rerate", tag = "usage", request_body = RerateRequest,
    responses((status = 200, body = RerateReport), super::Failures))]
pub async fn rerate(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<RerateRequest>,
) -> ServiceResult<Json<RerateReport>> {
    Ok(Json(s.rerate(&actor, req).await?))
}
