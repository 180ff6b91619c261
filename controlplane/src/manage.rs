//! The management gRPC service for operators' tooling (`aiproxy ctl`): each
//! call runs the admin API route it names, in process, so validation, role
//! checks and the audit log are the same whichever way an operator comes.
use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::management_service_server::{ManagementService, ManagementServiceServer};
use axum::body::Body;
use http::{Method, StatusCode};
use serde_json::Value;
use tonic::{Request, Response, Status};
use tower_service::Service;

use crate::api::audit::Principal;

/// Name the audit log gives calls made with the management token.
const TOKEN_ACTOR: &str = "ctl (admin token)";

#[derive(Clone)]
pub struct ManageApi {
    router: axum::Router,
    admin_token: String,
}

/// Who is calling: the holder of the management token, or a user whose
/// login token the admin API will check.
enum Caller {
    Token,
    Bearer(String),
    /// The control plane itself (e.g. applying the start-up file).
    Service(String),
}

/// Applies a declarative document at start-up, audited as `apply-file`.
pub async fn apply_at_start(router: &axum::Router, document: &Value) -> Result<Value, String> {
    let body = document.to_string();
    let json = dispatch(
        router,
        Caller::Service("apply-file".into()),
        Method::POST,
        "/api/v1/apply",
        Some(&body),
    )
    .await
    .map_err(|s| s.message().to_string())?;
    serde_json::from_str(&json).map_err(|e| e.to_string())
}

impl ManageApi {
    pub fn new(router: axum::Router, admin_token: String) -> Self {
        Self {
            router,
            admin_token,
        }
    }

    pub fn into_server(self) -> ManagementServiceServer<ManageApi> {
        ManagementServiceServer::new(self)
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be Bearer <token>"))?;
        if aiproxy_shared::keys::constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            Ok(Caller::Token)
        } else {
            Ok(Caller::Bearer(header.to_string()))
        }
    }

    /// Runs one admin-API route and returns its JSON, or its error as a status.
    async fn call<T>(
        &self,
        req: &Request<T>,
        method: Method,
        path: &str,
        query: &std::collections::HashMap<String, String>,
        body: Option<&str>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.caller(req)?;
        let mut uri = format!("/api/v1{path}");
        if !query.is_empty() {
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            uri = format!("{uri}?{}", pairs.join("&"));
        }
        let json = dispatch(&self.router, caller, method, &uri, body).await?;
        Ok(Response::new(pb::Document { json }))
    }
}

/// Runs one admin-API request in process as `caller`; returns the JSON body
/// of a success, or the API's error as a gRPC status.
async fn dispatch(
    router: &axum::Router,
    caller: Caller,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> Result<String, Status> {
    let mut builder = http::Request::builder().method(method).uri(uri);
    match &caller {
        Caller::Token => {
            builder = builder.extension(Principal {
                name: TOKEN_ACTOR.into(),
            })
        }
        Caller::Service(name) => builder = builder.extension(Principal { name: name.clone() }),
        Caller::Bearer(header) => builder = builder.header(http::header::AUTHORIZATION, header),
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let request = builder
        .body(body)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let response = router
        .clone()
        .call(request)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    if status.is_success() {
        let json = if bytes.is_empty() {
            "{}".to_string()
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        return Ok(json);
    }
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| status.to_string());
    Err(status_of(status, message))
}

/// The gRPC code of an admin-API status.
fn status_of(status: StatusCode, message: String) -> Status {
    match status.as_u16() {
        400 | 413 | 422 => Status::invalid_argument(message),
        401 => Status::unauthenticated(message),
        403 => Status::permission_denied(message),
        404 => Status::not_found(message),
        409 => Status::already_exists(message),
        429 => Status::resource_exhausted(message),
        503 => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn none() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::new()
}

#[tonic::async_trait]
impl ManagementService for ManageApi {
    async fn check_consistency(
        &self,
        request: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyReport>, Status> {
        let doc = self
            .call(&request, Method::GET, "/usage/consistency", &none(), None)
            .await?
            .into_inner();
        let v: Value =
            serde_json::from_str(&doc.json).map_err(|e| Status::internal(e.to_string()))?;
        let text = |d: &Value, k: &str| d[k].as_str().unwrap_or_default().to_string();
        Ok(Response::new(pb::ConsistencyReport {
            clean: v["clean"].as_bool().unwrap_or(false),
            request_logs: v["request_logs"].as_u64().unwrap_or(0),
            complete_since: text(&v, "complete_since"),
            differences: v["differences"]
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .map(|d| pb::Difference {
                            table: text(d, "table"),
                            row: text(d, "row"),
                            field: text(d, "field"),
                            expected: text(d, "expected"),
                            actual: text(d, "actual"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    async fn list_accounts(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/accounts", &r.get_ref().query, None)
            .await
    }

    async fn get_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/accounts/{}", r.get_ref().id);
        self.call(&r, Method::GET, &path, &none(), None).await
    }

    async fn create_account(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(
            &r,
            Method::POST,
            "/accounts",
            &none(),
            Some(&r.get_ref().json),
        )
        .await
    }

    async fn update_account(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/accounts/{}", r.get_ref().id);
        self.call(&r, Method::PATCH, &path, &none(), Some(&r.get_ref().json))
            .await
    }

    async fn delete_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/accounts/{}", r.get_ref().id);
        self.call(&r, Method::DELETE, &path, &none(), None).await
    }

    async fn set_account_enabled(
        &self,
        r: Request<pb::SetEnabledRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let verb = if r.get_ref().enabled {
            "enable"
        } else {
            "disable"
        };
        let path = format!("/accounts/{}/{verb}", r.get_ref().id);
        self.call(&r, Method::POST, &path, &none(), None).await
    }

    async fn reset_account(
        &self,
        r: Request<pb::ResetAccountRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = match r.get_ref().id {
            0 => "/accounts/reset".to_string(),
            id => format!("/accounts/{id}/reset"),
        };
        let mut query = none();
        if r.get_ref().enable {
            query.insert("enable".into(), "true".into());
        }
        self.call(&r, Method::POST, &path, &query, None).await
    }

    async fn test_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/accounts/{}/test", r.get_ref().id);
        self.call(&r, Method::POST, &path, &none(), None).await
    }

    async fn list_users(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/users", &r.get_ref().query, None)
            .await
    }

    async fn create_user(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::POST, "/users", &none(), Some(&r.get_ref().json))
            .await
    }

    async fn update_user(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/users/{}", r.get_ref().id);
        self.call(&r, Method::PATCH, &path, &none(), Some(&r.get_ref().json))
            .await
    }

    async fn delete_user(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/users/{}", r.get_ref().id);
        self.call(&r, Method::DELETE, &path, &none(), None).await
    }

    async fn list_keys(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/api-keys", &r.get_ref().query, None)
            .await
    }

    async fn create_key(&self, r: Request<pb::Document>) -> Result<Response<pb::Document>, Status> {
        self.call(
            &r,
            Method::POST,
            "/api-keys",
            &none(),
            Some(&r.get_ref().json),
        )
        .await
    }

    async fn update_key(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/api-keys/{}", r.get_ref().id);
        self.call(&r, Method::PATCH, &path, &none(), Some(&r.get_ref().json))
            .await
    }

    async fn delete_key(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/api-keys/{}", r.get_ref().id);
        self.call(&r, Method::DELETE, &path, &none(), None).await
    }

    async fn list_packages(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/users/{}/packages", r.get_ref().id);
        self.call(&r, Method::GET, &path, &none(), None).await
    }

    async fn create_package(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/users/{}/packages", r.get_ref().id);
        self.call(&r, Method::POST, &path, &none(), Some(&r.get_ref().json))
            .await
    }

    async fn update_package(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = format!("/packages/{}", r.get_ref().id);
        self.call(&r, Method::PATCH, &path, &none(), Some(&r.get_ref().json))
            .await
    }

    async fn reset_packages(
        &self,
        r: Request<pb::ResetPackagesRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = match (r.get_ref().package_id, r.get_ref().user_id) {
            (0, 0) | (1.., 1..) => {
                return Err(Status::invalid_argument(
                    "give exactly one of package_id and user_id",
                ));
            }
            (0, user) => format!("/users/{user}/packages/reset"),
            (package, _) => format!("/packages/{package}/reset"),
        };
        self.call(&r, Method::POST, &path, &none(), None).await
    }

    async fn get_settings(&self, r: Request<pb::Empty>) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/settings", &none(), None).await
    }

    async fn update_settings(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(
            &r,
            Method::PATCH,
            "/settings",
            &none(),
            Some(&r.get_ref().json),
        )
        .await
    }

    async fn list_cache(
        &self,
        r: Request<pb::CacheRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = cache_path(&r.get_ref().kind)?;
        self.call(&r, Method::GET, &path, &r.get_ref().query, None)
            .await
    }

    async fn clear_cache(
        &self,
        r: Request<pb::CacheRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let path = cache_path(&r.get_ref().kind)?;
        self.call(&r, Method::DELETE, &path, &r.get_ref().query, None)
            .await
    }

    async fn refresh_scheduler(
        &self,
        r: Request<pb::Empty>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::POST, "/cache/refresh", &none(), None)
            .await
    }

    async fn list_nodes(&self, r: Request<pb::Empty>) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/nodes", &none(), None).await
    }

    async fn usage_summary(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/usage", &r.get_ref().query, None)
            .await
    }

    async fn list_audit_logs(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::GET, "/audit-logs", &r.get_ref().query, None)
            .await
    }

    async fn apply(&self, r: Request<pb::Document>) -> Result<Response<pb::Document>, Status> {
        self.call(&r, Method::POST, "/apply", &none(), Some(&r.get_ref().json))
            .await
    }
}

fn cache_path(kind: &str) -> Result<String, Status> {
    match kind {
        "sessions" | "concurrency" | "unavailable" | "rate-limited" => Ok(format!("/cache/{kind}")),
        _ => Err(Status::invalid_argument(
            "cache kind must be sessions, concurrency, unavailable or rate-limited",
        )),
    }
}
