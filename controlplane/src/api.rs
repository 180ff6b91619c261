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
use axum::routing::get;
use serde_json::json;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use crate::service::{ServiceError, ServiceResult, Services};

/// Largest price file `/prices/import` takes.
pub(crate) const PRICE_FILE_LIMIT: usize = 16 * 1024 * 1024;

/// The document's frame; the paths and their schemas come from the
/// handlers the router is built from, so every route is documented.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "aiproxy admin API",
        version = "1",
        description = "Admin and self-service API of the aiproxy control plane. \
            Authenticate with POST /auth/login, then send Authorization: Bearer <token>. \
            Money is a decimal string or a JSON number; an absent or null limit means none."
    ),
    servers((url = "/api/v1")),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct Frame;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        // The crate's (empty) license field is not the API's.
        openapi.info.license = None;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every route under `/api/v1`, each from its documented handler.
fn documented() -> OpenApiRouter<Services> {
    OpenApiRouter::with_openapi(<Frame as utoipa::OpenApi>::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::me))
        .routes(routes!(auth::change_password))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get_one, users::update, users::remove))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get_one, keys::update, keys::remove))
        .routes(routes!(accounts::list, accounts::create))
        .routes(routes!(accounts::reset_all))
        .routes(routes!(accounts::enable))
        .routes(routes!(accounts::disable))
        .routes(routes!(accounts::reset))
        .routes(routes!(accounts::test))
        .routes(routes!(
            accounts::get_one,
            accounts::update,
            accounts::remove
        ))
        .routes(routes!(settings::get, settings::update))
        .routes(routes!(audit::list))
        .routes(routes!(apply::apply))
        .routes(routes!(cache::refresh))
        .routes(routes!(cache::nodes))
        .routes(routes!(oauth::authorize))
        .routes(routes!(oauth::exchange))
        .routes(routes!(logs::list))
        .routes(routes!(logs::export))
        .routes(routes!(packages::list_for_user, packages::create))
        .routes(routes!(packages::reset_for_user))
        .routes(routes!(packages::list))
        .routes(routes!(
            packages::get_one,
            packages::update,
            packages::remove
        ))
        .routes(routes!(packages::reset))
        .routes(routes!(prices::list))
        // LiteLLM's price file is larger than any other body.
        .routes(
            routes!(prices::import).layer(axum::extract::DefaultBodyLimit::max(PRICE_FILE_LIMIT)),
        )
        .routes(routes!(prices::put, prices::remove))
        .routes(routes!(prices::history))
        .routes(routes!(logs::totals))
        .routes(routes!(logs::consistency))
        .routes(routes!(logs::rerate))
        .routes(routes!(cache::sessions, cache::clear_sessions))
        .routes(routes!(cache::concurrency, cache::clear_concurrency))
        .routes(routes!(cache::unavailable, cache::clear_unavailable))
        .routes(routes!(cache::rate_limited, cache::clear_rate_limited))
}

/// The OpenAPI document of `/api/v1`, as served at `/api/v1/openapi.json`
/// and committed as `controlplane/openapi.json`.
fn render(mut document: utoipa::openapi::OpenApi) -> String {
    // Handlers are named within their module (`users::list`); the
    // document's ids must be unique, so they carry the tag too.
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let tag = operation
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .map(|t| t.replace('-', "_"));
            if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
                *id = format!("{tag}_{id}");
            }
        }
    }
    #[allow(clippy::expect_used, reason = "plain data: strings, maps and numbers")]
    let json = document
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    // utoipa spells unsigned formats `u-int32`; the registry's name is `uint32`.
    let mut json = json.replace("\"format\": \"u-int", "\"format\": \"uint");
    json.push('\n');
    json
}

pub fn router(state: Services) -> Router {
    let (v1, document) = documented().split_for_parts();
    let document = axum::body::Bytes::from(render(document));
    let v1 = v1
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
                }
            }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        // Unknown API paths are the API's 404, never the console.
        .route("/api", axum::routing::any(not_found))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .fallback(crate::console::serve)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::observe_admin_request,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

/// Ready while the database answers, within 2 s, with every migration this
/// build knows applied; the answer says why not.
async fn readyz(
    axum::extract::State(services): axum::extract::State<Services>,
) -> (axum::http::StatusCode, String) {
    let unready =
        tokio::time::timeout(std::time::Duration::from_secs(2), services.store.unready()).await;
    match unready {
        Ok(None) => (axum::http::StatusCode::OK, "ready".into()),
        Ok(Some(why)) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}"),
        ),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the database did not answer within 2 s".into(),
        ),
    }
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
            // The field, what is wrong with it, and where: without axum's preamble.
            Err(rejection) => {
                let text = rejection.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                Err(ServiceError::BadRequest(text.to_string()))
            }
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

#[cfg(test)]
mod tests {
    /// The committed document is what the code generates; the console's
    /// types are generated from it. `AIPROXY_BLESS=1` rewrites it.
    #[test]
    fn the_committed_contract_is_generated_from_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = super::render(super::documented().into_openapi());
        if std::env::var_os("AIPROXY_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
        let schemas = &document["components"]["schemas"];
        for name in generated
            .split("\"#/components/schemas/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
        {
            assert!(
                schemas.get(name).is_some(),
                "{name} is referred to but not defined"
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let id = operation["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "operation id {id} twice");
            }
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "controlplane/openapi.json differs from the code; run \
             `AIPROXY_BLESS=1 cargo test -p aiproxy-controlplane contract` and commit it"
        );
    }
}
