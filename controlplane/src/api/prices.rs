//! `/prices`: the REST face of model prices.
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::IntoParams;

use super::{JsonBody, QueryParams};
use crate::service::prices::{ImportReport, ImportScope, PriceHistory, PriceInput, PriceList};
use crate::service::{Actor, ServiceResult, Services};
use crate::store::PriceRow;

/// Current prices and their versions.
#[utoipa::path(get, path = "/prices", tag = "prices",
    responses((status = 200, body = PriceList), super::Failures))]
pub async fn list(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<PriceList>> {
    Ok(Json(s.list_prices(&actor).await?))
}

/// Every version of a model's prices, who changed them, when (admins).
#[utoipa::path(get, path = "/prices/{model}/history", tag = "prices",
    params(("model" = String, Path)), responses((status = 200, body = PriceHistory), super::Failures))]
pub async fn history(
    State(s): State<Services>,
    actor: Actor,
    Path(model): Path<String>,
) -> ServiceResult<Json<PriceHistory>> {
    Ok(Json(s.price_history(&actor, &model).await?))
}

/// Set a model's prices: a new version (admins).
#[utoipa::path(put, path = "/prices/{model}", tag = "prices", params(("model" = String, Path)),
    request_body = PriceInput, responses((status = 200, body = PriceRow), super::Failures))]
pub async fn put(
    State(s): State<Services>,
    actor: Actor,
    Path(model): Path<String>,
    JsonBody(req): JsonBody<PriceInput>,
) -> ServiceResult<Json<PriceRow>> {
    Ok(Json(s.set_price(&actor, &model, req).await?))
}

/// Remove a model's prices (kept in the history; admins).
#[utoipa::path(delete, path = "/prices/{model}", tag = "prices", params(("model" = String, Path)),
    responses((status = 204, description = "Deleted"), super::Failures))]
pub async fn remove(
    State(s): State<Services>,
    actor: Actor,
    Path(model): Path<String>,
) -> ServiceResult<StatusCode> {
    s.delete_price(&actor, &model).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// `all` (default) or `existing`: only models already priced.
    #[param(inline)]
    only: Option<ImportScope>,
}

/// Import LiteLLM's `model_prices_and_context_window.json` (the file as the body; admins).
#[utoipa::path(post, path = "/prices/import", tag = "prices", params(ImportQuery),
    request_body(content = Object, description = "LiteLLM's price file"),
    responses((status = 200, body = ImportReport), super::Failures))]
pub async fn import(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<ImportQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ServiceResult<Json<ImportReport>> {
    Ok(Json(
        s.import_prices(&actor, q.only.unwrap_or_default(), &body)
            .await?,
    ))
}
