//! `/audit-logs`, and the layer that writes every change made through the
//! REST API (any method but GET) to the audit log.
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::QueryParams;
use crate::service::audit::{AuditPage, AuditQuery, Change};
use crate::service::{Actor, ServiceError, ServiceResult, Services};

pub async fn record(State(services): State<Services>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // This layer sits inside `/api/v1`, which routing has stripped.
    let path = format!("/api/v1{}", req.uri().path());
    if method == http::Method::GET || method == http::Method::HEAD || path.ends_with("/auth/login")
    {
        return next.run(req).await;
    }
    let Some(signer) = signer(&services, &req) else {
        // Refused by the route without a body read; nothing changed to record.
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    // The same limits as the routes behind: the price file, else 1 MiB.
    let limit = if path == "/api/v1/prices/import" {
        super::PRICE_FILE_LIMIT
    } else {
        1024 * 1024
    };
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ServiceError::BadRequest("request body too large".into()).into_response();
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    services
        .record_change(Change {
            actor_id: Some(signer.sub),
            actor: &signer.username,
            action: method.as_str(),
            target: &path,
            status: response.status().as_u16(),
            body: &bytes,
        })
        .await;
    response
}

/// Who signed the token, if it is valid; the route itself checks the rest.
fn signer(services: &Services, req: &Request) -> Option<crate::crypto::Claims> {
    let token = super::auth::bearer(req.headers()).ok()?;
    services.jwt.verify(token.trim()).ok()
}

/// The audit log, newest first (admins).
#[utoipa::path(get, path = "/audit-logs", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), super::Failures))]
pub async fn list(
    State(s): State<Services>,
    actor: Actor,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ServiceResult<Json<AuditPage>> {
    Ok(Json(s.list_audit(&actor, q).await?))
}
