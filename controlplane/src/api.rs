//! The admin REST API under `/api/v1`: routing, shared state, JSON errors.
mod accounts;
mod apply;
pub mod audit;
pub mod auth;
mod cache;
mod keys;
mod logs;
mod oauth;
mod packages;
mod prices;
mod settings;
pub mod throttle;
mod usage;
mod users;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::crypto::{JwtKeys, Sealer};
use crate::publisher::Publisher;
use crate::store::{Store, StoreError};

pub use auth::AuthUser;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// Wrong passwords per account and address.
    pub password_throttle: throttle::PasswordThrottle,
    /// Password checks at once.
    pub login_gate: throttle::LoginGate,
    pub sealer: Sealer,
    pub jwt: JwtKeys,
    pub publisher: Publisher,
    pub refresher: crate::oauth::Refresher,
    pub health: crate::health::HealthChecker,
    /// The scheduling state the data planes share.
    pub state: std::sync::Arc<dyn aiproxy_shared::state::StateStore>,
    /// The zone package periods and daily usage are counted in.
    pub billing_tz: chrono::FixedOffset,
    /// Defaults of the runtime settings.
    pub setting_defaults: crate::settings::Defaults,
    /// The data planes this control plane serves, and what they applied.
    pub nodes: crate::grpc::NodeRegistry,
    /// OAuth endpoints, for the sign-in flow of new subscriptions.
    pub oauth_endpoints: aiproxy_shared::config::OAuthSettings,
}

/// Largest price file `/prices/import` takes.
pub(crate) const PRICE_FILE_LIMIT: usize = 16 * 1024 * 1024;

const OPENAPI: &str = include_str!("api/openapi.json");

pub fn router(state: ApiState) -> Router {
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
        .route("/usage", get(usage::totals))
        .route("/usage/consistency", get(usage::consistency))
        .route("/usage/rerate", post(usage::rerate))
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

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

/// An admin-API failure, rendered as `{"error":{"code","message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A dependency (the shared state store) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    /// Too many wrong passwords: tries wait this long, unchecked.
    #[error("too many wrong passwords; try again in {} s", whole_seconds(.0))]
    Throttled(std::time::Duration),
    /// This process is at capacity for the work asked: retry shortly.
    #[error("{0}")]
    Busy(&'static str),
}

/// A wait in seconds, rounded up: a client retrying then is not early.
fn whole_seconds(wait: &std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "admin API internal error");
        }
        let mut response = (
            status,
            Json(json!({ "error": { "code": code, "message": self.to_string() } })),
        )
            .into_response();
        let retry = match &self {
            ApiError::Throttled(wait) => Some(whole_seconds(wait)),
            ApiError::Busy(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// JSON body extractor whose rejections use the API's error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
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
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Path id extractor with the API's error shape.
pub struct PathId(pub i64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<i64>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(PathId(id)),
            Err(_) => Err(ApiError::BadRequest("id must be an integer".into())),
        }
    }
}

/// Validates an optional list of model names.
fn check_models(models: &[String]) -> ApiResult<()> {
    if models.iter().any(|m| m.trim().is_empty() || m.len() > 128) {
        return Err(ApiError::BadRequest(
            "allowed_models entries must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

fn check_status(status: &str) -> ApiResult<()> {
    match status {
        "active" | "disabled" => Ok(()),
        _ => Err(ApiError::BadRequest(
            "status must be active or disabled".into(),
        )),
    }
}

/// Deserializes a field that may be absent (None), null (Some(None)) or set.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}
