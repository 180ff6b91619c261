//! The management gRPC service for operators' tooling (`aiproxy ctl`): each
//! call runs the service operation its REST route runs, reads its body and
//! filters as that route does, and writes changes to the audit log under the
//! route's method and path, so nothing differs whichever way an operator comes.
use std::collections::HashMap;
use std::future::Future;

use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::management_service_server::{ManagementService, ManagementServiceServer};
use aiproxy_shared::http::form_encode;
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::api;
use crate::service::audit::Change;
use crate::service::{Actor, ServiceError, ServiceResult, Services};

/// Name the audit log gives calls made with the management token.
const TOKEN_ACTOR: &str = "ctl (admin token)";

#[derive(Clone)]
pub struct ManageApi {
    services: Services,
    admin_token: String,
}

/// Applies a declarative document at start-up, audited as `apply-file`.
pub async fn apply_at_start(
    services: &Services,
    document: &serde_json::Value,
) -> Result<crate::service::apply::Report, String> {
    let actor = Actor::service("apply-file");
    let body = document.to_string();
    let outcome = async {
        let doc = json_body(body.as_bytes())?;
        services.apply(&actor, doc).await
    }
    .await;
    services
        .record_change(Change {
            actor_id: actor.user_id(),
            actor: actor.name(),
            action: "POST",
            target: "/api/v1/apply",
            status: http_status(&outcome, StatusCode::OK),
            body: body.as_bytes(),
        })
        .await;
    outcome.map_err(|e| e.to_string())
}

/// A request body read exactly as the REST route reads it.
fn json_body<T: DeserializeOwned>(json: &[u8]) -> ServiceResult<T> {
    axum::Json::<T>::from_bytes(json)
        .map(|axum::Json(v)| v)
        .map_err(|rejection| ServiceError::BadRequest(rejection.body_text()))
}

/// Query filters read exactly as the REST route reads its query string.
fn query<T: DeserializeOwned>(pairs: &HashMap<String, String>) -> ServiceResult<T> {
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    let uri: http::Uri = format!("/?{}", encoded.join("&"))
        .parse()
        .map_err(|e: http::uri::InvalidUri| ServiceError::BadRequest(e.to_string()))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|axum::extract::Query(v)| v)
        .map_err(|rejection| ServiceError::BadRequest(rejection.body_text()))
}

/// The status the REST route answers an outcome with.
fn http_status<T>(outcome: &ServiceResult<T>, success: StatusCode) -> u16 {
    match outcome {
        Ok(_) => success.as_u16(),
        Err(e) => e.parts().0.as_u16(),
    }
}

/// An operation's failure as a gRPC status.
fn status(e: ServiceError) -> Status {
    let message = e.to_string();
    match e {
        ServiceError::BadRequest(_) => Status::invalid_argument(message),
        ServiceError::Unauthorized(_) => Status::unauthenticated(message),
        ServiceError::Forbidden(_) => Status::permission_denied(message),
        ServiceError::NotFound(_) => Status::not_found(message),
        ServiceError::Conflict(_) => Status::already_exists(message),
        ServiceError::Throttled(_) => Status::resource_exhausted(message),
        ServiceError::Unavailable(_) | ServiceError::Busy(_) => Status::unavailable(message),
        ServiceError::Internal(detail) => {
            tracing::error!(error = %detail, "management call internal error");
            Status::internal(message)
        }
    }
}

/// An operation's answer as the document its REST route answers with.
fn document<T: Serialize>(outcome: ServiceResult<T>) -> Result<Response<pb::Document>, Status> {
    let value = outcome.map_err(status)?;
    let json = serde_json::to_string(&value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::Document { json }))
}

/// What a delete answers: nothing.
#[derive(Serialize)]
struct Empty {}

impl ManageApi {
    pub fn new(services: Services, admin_token: String) -> Self {
        Self {
            services,
            admin_token,
        }
    }

    pub fn into_server(self) -> ManagementServiceServer<ManageApi> {
        ManagementServiceServer::new(self)
    }

    /// The holder of the management token, or the user a login token names.
    async fn actor<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be Bearer <token>"))?;
        if aiproxy_shared::keys::constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            Ok(Actor::service(TOKEN_ACTOR))
        } else {
            self.services.authenticate(token).await.map_err(status)
        }
    }

    /// Runs a change and writes it to the audit log as its REST route
    /// (`method`, `/api/v1` + `path`) would, whatever the outcome.
    async fn change<T: Serialize>(
        &self,
        actor: &Actor,
        method: &str,
        path: &str,
        body: &str,
        success: StatusCode,
        operation: impl Future<Output = ServiceResult<T>>,
    ) -> Result<Response<pb::Document>, Status> {
        let outcome = operation.await;
        self.services
            .record_change(Change {
                actor_id: actor.user_id(),
                actor: actor.name(),
                action: method,
                target: &format!("/api/v1{path}"),
                status: http_status(&outcome, success),
                body: body.as_bytes(),
            })
            .await;
        document(outcome)
    }
}

#[tonic::async_trait]
impl ManagementService for ManageApi {
    async fn check_consistency(
        &self,
        r: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyReport>, Status> {
        let actor = self.actor(&r).await?;
        let report = self.services.consistency(&actor).await.map_err(status)?;
        Ok(Response::new(pb::ConsistencyReport {
            clean: report.clean,
            request_logs: u64::try_from(report.request_logs).unwrap_or(0),
            complete_since: report
                .complete_since
                .map(|d| d.to_string())
                .unwrap_or_default(),
            differences: report
                .differences
                .into_iter()
                .map(|d| pb::Difference {
                    table: d.table.to_string(),
                    row: d.row,
                    field: d.field.to_string(),
                    expected: d.expected,
                    actual: d.actual,
                })
                .collect(),
        }))
    }

    async fn list_accounts(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.list_accounts(&actor).await)
    }

    async fn get_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.get_account(&actor, r.get_ref().id).await)
    }

    async fn create_account(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let body = &r.get_ref().json;
        self.change(
            &actor,
            "POST",
            "/accounts",
            body,
            StatusCode::CREATED,
            async {
                self.services
                    .create_account(&actor, json_body(body.as_bytes())?)
                    .await
            },
        )
        .await
    }

    async fn update_account(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::UpdateRequest { id, json } = r.get_ref();
        let path = format!("/accounts/{id}");
        self.change(&actor, "PATCH", &path, json, StatusCode::OK, async {
            self.services
                .update_account(&actor, *id, json_body(json.as_bytes())?)
                .await
        })
        .await
    }

    async fn delete_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let id = r.get_ref().id;
        let path = format!("/accounts/{id}");
        self.change(&actor, "DELETE", &path, "", StatusCode::NO_CONTENT, async {
            self.services
                .delete_account(&actor, id)
                .await
                .map(|()| Empty {})
        })
        .await
    }

    async fn set_account_enabled(
        &self,
        r: Request<pb::SetEnabledRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::SetEnabledRequest { id, enabled } = *r.get_ref();
        let verb = if enabled { "enable" } else { "disable" };
        let path = format!("/accounts/{id}/{verb}");
        self.change(&actor, "POST", &path, "", StatusCode::OK, async {
            self.services.set_account_enabled(&actor, id, enabled).await
        })
        .await
    }

    async fn reset_account(
        &self,
        r: Request<pb::ResetAccountRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::ResetAccountRequest { id, enable } = *r.get_ref();
        match id {
            Some(id) => {
                let path = format!("/accounts/{id}/reset");
                self.change(&actor, "POST", &path, "", StatusCode::OK, async {
                    self.services.reset_account(&actor, id, enable).await
                })
                .await
            }
            None => {
                let path = "/accounts/reset";
                self.change(&actor, "POST", path, "", StatusCode::OK, async {
                    self.services.reset_all_accounts(&actor, enable).await
                })
                .await
            }
        }
    }

    async fn test_account(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let id = r.get_ref().id;
        let path = format!("/accounts/{id}/test");
        self.change(&actor, "POST", &path, "", StatusCode::OK, async {
            self.services.test_account(&actor, id).await
        })
        .await
    }

    async fn list_users(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.list_users(&actor).await)
    }

    async fn create_user(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let body = &r.get_ref().json;
        self.change(&actor, "POST", "/users", body, StatusCode::CREATED, async {
            self.services
                .create_user(&actor, json_body(body.as_bytes())?)
                .await
        })
        .await
    }

    async fn update_user(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::UpdateRequest { id, json } = r.get_ref();
        let path = format!("/users/{id}");
        self.change(&actor, "PATCH", &path, json, StatusCode::OK, async {
            self.services
                .update_user(&actor, *id, json_body(json.as_bytes())?)
                .await
        })
        .await
    }

    async fn delete_user(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let id = r.get_ref().id;
        let path = format!("/users/{id}");
        self.change(&actor, "DELETE", &path, "", StatusCode::NO_CONTENT, async {
            self.services
                .delete_user(&actor, id)
                .await
                .map(|()| Empty {})
        })
        .await
    }

    async fn list_keys(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let outcome = async {
            let q: api::keys::ListQuery = query(&r.get_ref().query)?;
            self.services.list_keys(&actor, q.user_id).await
        };
        document(outcome.await)
    }

    async fn create_key(&self, r: Request<pb::Document>) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let body = &r.get_ref().json;
        self.change(
            &actor,
            "POST",
            "/api-keys",
            body,
            StatusCode::CREATED,
            async {
                self.services
                    .create_key(&actor, json_body(body.as_bytes())?)
                    .await
            },
        )
        .await
    }

    async fn update_key(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::UpdateRequest { id, json } = r.get_ref();
        let path = format!("/api-keys/{id}");
        self.change(&actor, "PATCH", &path, json, StatusCode::OK, async {
            self.services
                .update_key(&actor, *id, json_body(json.as_bytes())?)
                .await
        })
        .await
    }

    async fn delete_key(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let id = r.get_ref().id;
        let path = format!("/api-keys/{id}");
        self.change(&actor, "DELETE", &path, "", StatusCode::NO_CONTENT, async {
            self.services
                .delete_key(&actor, id)
                .await
                .map(|()| Empty {})
        })
        .await
    }

    async fn list_packages(
        &self,
        r: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.user_packages(&actor, r.get_ref().id).await)
    }

    async fn create_package(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::UpdateRequest { id, json } = r.get_ref();
        let path = format!("/users/{id}/packages");
        self.change(&actor, "POST", &path, json, StatusCode::CREATED, async {
            self.services
                .create_package(&actor, *id, json_body(json.as_bytes())?)
                .await
        })
        .await
    }

    async fn update_package(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::UpdateRequest { id, json } = r.get_ref();
        let path = format!("/packages/{id}");
        self.change(&actor, "PATCH", &path, json, StatusCode::OK, async {
            self.services
                .update_package(&actor, *id, json_body(json.as_bytes())?)
                .await
        })
        .await
    }

    async fn reset_packages(
        &self,
        r: Request<pb::ResetPackagesRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        use pb::reset_packages_request::Target;
        let actor = self.actor(&r).await?;
        match r.get_ref().target {
            Some(Target::PackageId(id)) => {
                let path = format!("/packages/{id}/reset");
                self.change(&actor, "POST", &path, "", StatusCode::OK, async {
                    self.services.reset_package(&actor, id).await
                })
                .await
            }
            Some(Target::UserId(id)) => {
                let path = format!("/users/{id}/packages/reset");
                self.change(&actor, "POST", &path, "", StatusCode::OK, async {
                    self.services.reset_user_packages(&actor, id).await
                })
                .await
            }
            None => Err(Status::invalid_argument(
                "give exactly one of package_id and user_id",
            )),
        }
    }

    async fn get_settings(&self, r: Request<pb::Empty>) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.get_settings(&actor).await)
    }

    async fn update_settings(
        &self,
        r: Request<pb::Document>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let body = &r.get_ref().json;
        self.change(&actor, "PATCH", "/settings", body, StatusCode::OK, async {
            self.services
                .update_settings(&actor, json_body(body.as_bytes())?)
                .await
        })
        .await
    }

    async fn list_cache(
        &self,
        r: Request<pb::CacheRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::CacheRequest { kind, query: q } = r.get_ref();
        let services = &self.services;
        match kind.as_str() {
            "sessions" => document(
                async {
                    let q: api::cache::SessionQuery = query(q)?;
                    services.cached_sessions(&actor, q.key_id).await
                }
                .await,
            ),
            "concurrency" => document(services.concurrency(&actor).await),
            "unavailable" => document(services.unavailable_accounts(&actor).await),
            "rate-limited" => document(services.rate_limited_accounts(&actor).await),
            _ => Err(unknown_cache()),
        }
    }

    async fn clear_cache(
        &self,
        r: Request<pb::CacheRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let pb::CacheRequest { kind, query: q } = r.get_ref();
        let services = &self.services;
        let path = format!("/cache/{kind}");
        let ok = StatusCode::OK;
        match kind.as_str() {
            "sessions" => {
                self.change(&actor, "DELETE", &path, "", ok, async {
                    let q: api::cache::SessionQuery = query(q)?;
                    services.clear_sessions(&actor, q.key_id, q.session).await
                })
                .await
            }
            "concurrency" => {
                self.change(&actor, "DELETE", &path, "", ok, async {
                    let q: api::cache::ConcurrencyQuery = query(q)?;
                    services.clear_concurrency(&actor, q.scope, q.id).await
                })
                .await
            }
            "unavailable" => {
                self.change(&actor, "DELETE", &path, "", ok, async {
                    let q: api::cache::AccountQuery = query(q)?;
                    services.clear_unavailable(&actor, q.account_id).await
                })
                .await
            }
            "rate-limited" => {
                self.change(&actor, "DELETE", &path, "", ok, async {
                    let q: api::cache::AccountQuery = query(q)?;
                    services.clear_rate_limited(&actor, q.account_id).await
                })
                .await
            }
            _ => Err(unknown_cache()),
        }
    }

    async fn refresh_scheduler(
        &self,
        r: Request<pb::Empty>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        self.change(
            &actor,
            "POST",
            "/cache/refresh",
            "",
            StatusCode::OK,
            async { self.services.refresh_snapshot(&actor).await },
        )
        .await
    }

    async fn list_nodes(&self, r: Request<pb::Empty>) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        document(self.services.nodes(&actor).await)
    }

    async fn usage_summary(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let outcome = async {
            let params: api::logs::LogParams = query(&r.get_ref().query)?;
            let (grouping, filter) = params.split();
            self.services
                .usage(&actor, grouping.unwrap_or_default(), filter)
                .await
        };
        document(outcome.await)
    }

    async fn list_audit_logs(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let outcome = async {
            let q = query(&r.get_ref().query)?;
            self.services.list_audit(&actor, q).await
        };
        document(outcome.await)
    }

    async fn apply(&self, r: Request<pb::Document>) -> Result<Response<pb::Document>, Status> {
        let actor = self.actor(&r).await?;
        let body = &r.get_ref().json;
        self.change(&actor, "POST", "/apply", body, StatusCode::OK, async {
            self.services
                .apply(&actor, json_body(body.as_bytes())?)
                .await
        })
        .await
    }
}

fn unknown_cache() -> Status {
    Status::invalid_argument(
        "cache kind must be sessions, concurrency, unavailable or rate-limited",
    )
}
