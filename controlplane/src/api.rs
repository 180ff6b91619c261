//! The admin REST API under `/api/v1`: routing, shared state, JSON errors.
mod accounts;
mod apply;
pub mod audit;
pub mod auth;
pub(crate) mod cache;
pub(crate) mod keys;
pub(crate) mod logs;
mod oauth;
mod packages;
mod prices;
mod settings;
mod users;

use axum::Json;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use crate::service::{ServiceError, ServiceResult, Services};

/// Largest price file `/prices/import` takes.
pub(crate) const PRICE_FILE_LIMIT: usize = 16 * 1024 * 1024;

const OPENAPI: &str = include_str!("api/openapi.json");

pub fn router(state: Services) -> Router {
    let v1 = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/me", get(auth::me))
        .route("/me/password", post(auth::change_password))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{id}",
            get(users::get_one)
                .patch(users::update)
                .delete(users::remove),
        )
        .route("/api-keys", get(keys::list).post(keys::create))
        .route(
            "/api-keys/{id}",
            get(keys::get_one).patch(keys::update).delete(keys::remove),
        )
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route("/accounts/reset", post(accounts::reset_all))
        .route("/accounts/{id}/enable", post(accounts::enable))
        .route("/accounts/{id}/disable", post(accounts::disable))
        .route("/accounts/{id}/reset", post(accounts::reset))
        .route("/accounts/{id}/test", post(accounts::test))
        .route("/settings", get(settings::get).patch(settings::update))
        .route("/audit-logs", get(audit::list))
        .route("/apply", post(apply::apply))
        .route("/cache/refresh", post(cache::refresh))
        .route("/nodes", get(cache::nodes))
        .route("/oauth/authorize", post(oauth::authorize))
        .route("/oauth/exchange", post(oauth::exchange))
        .route(
            "/accounts/{id}",
            get(accounts::get_one)
                .patch(accounts::update)
                .delete(accounts::remove),
        )
        .route("/request-logs", get(logs::list))
        .route("/request-logs/export", get(logs::export))
        .route(
            "/users/{id}/packages",
            get(packages::list_for_user).post(packages::create),
        )
        .route("/users/{id}/packages/reset", post(packages::reset_for_user))
        .route("/packages", get(packages::list))
        .route(
            "/packages/{id}",
            get(packages::get_one)
                .patch(packages::update)
                .delete(packages::remove),
        )
        .route("/packages/{id}/reset", post(packages::reset))
        .route("/prices", get(prices::list))
        // LiteLLM's price file is larger than any other body.
        .route(
            "/prices/import",
            post(prices::import).layer(axum::extract::DefaultBodyLimit::max(PRICE_FILE_LIMIT)),
        )
        .route(
            "/prices/{model}",
            axum::routing::put(prices::put).delete(prices::remove),
        )
        .route("/prices/{model}/history", get(prices::history))
        .route("/usage", get(logs::totals))
        .route("/usage/consistency", get(logs::consistency))
        .route("/usage/rerate", post(logs::rerate))
        .route(
            "/cache/sessions",
            get(cache::sessions).delete(cache::clear_sessions),
        )
        .route(
            "/cache/concurrency",
            get(cache::concurrency).delete(cache::clear_concurrency),
        )
        .route(
            "/cache/unavailable",
            get(cache::unavailable).delete(cache::clear_unavailable),
        )
        .route(
            "/cache/rate-limited",
            get(cache::rate_limited).delete(cache::clear_rate_limited),
        )
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .fallback(crate::console::serve)
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn not_found() -> ServiceError {
    ServiceError::NotFound("no such route")
}

/// How every failure is answered.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `unavailable`, `busy`, `too_many_requests` or `internal`.
    pub code: String,
    pub message: String,
}

/// The failures any route may answer with, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Failures {
    /// The request is malformed or a value is refused.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The caller's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such thing, or not the caller's.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// It exists already, or changed meanwhile.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// A dependency is unreachable, or the control plane is at capacity
    /// (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let ServiceError::Internal(detail) = &self {
            tracing::error!(error = %detail, "admin API internal error");
        }
        let mut response = (
            status,
            Json(json!({ "error": { "code": code, "message": self.to_string() } })),
        )
            .into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// JSON body extractor whose rejections use the API's error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(ServiceError::BadRequest(rejection.body_text())),
        }
    }
}

/// Query-string extractor whose rejections use the API's error shape.
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(rejection) => Err(ServiceError::BadRequest(rejection.body_text())),
        }
    }
}

/// Path id extractor with the API's error shape.
pub struct PathId(pub i64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<i64>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(PathId(id)),
            Err(_) => Err(ServiceError::BadRequest("id must be an integer".into())),
        }
    }
}
