//! The audit log: every change made through the admin API (any method but
//! GET), with who made it, the route, the outcome and the body with secrets
//! masked; and `/audit-logs` to read it.
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ApiState, AuthUser, QueryParams};
use crate::store::{AuditFilter, NewAudit};

/// Who acts when a call comes through the management service with its
/// token rather than a user's login: set only by in-process callers.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
}

/// Fields whose values are never written to the audit log.
const SECRET_FIELDS: &[&str] = &[
    "password",
    "credentials",
    "key",
    "api_key",
    "access_token",
    "refresh_token",
    "id_token",
    "session_key",
    "token",
    "secret",
    "client_secret",
    "code",
];

/// Bodies larger than this are summarised, not stored.
const MAX_DETAIL: usize = 16 * 1024;

pub async fn record(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // This layer sits inside `/api/v1`, which routing has stripped.
    let path = format!("/api/v1{}", req.uri().path());
    if method == http::Method::GET || method == http::Method::HEAD || path.ends_with("/auth/login")
    {
        return next.run(req).await;
    }
    let actor = actor(&state, &req);
    if actor.1 == ANONYMOUS {
        // Refused by the route without a body read; nothing changed to record.
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // The same limits as the routes behind: the price file, else 1 MiB.
    let limit = if target_is_price_file(&path) {
        super::PRICE_FILE_LIMIT
    } else {
        1024 * 1024
    };
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return super::ApiError::BadRequest("request body too large".into()).into_response();
        }
    };
    let detail = masked(&bytes);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let target = path;
    let entry = NewAudit {
        actor_id: actor.0,
        actor: &actor.1,
        action: method.as_str(),
        target: &target,
        status: response.status().as_u16(),
        detail: detail.as_deref(),
    };
    if let Err(e) = state.store.record_audit(&entry).await {
        tracing::error!(error = %e, %target, "could not write the audit log");
    }
    response
}

fn target_is_price_file(path: &str) -> bool {
    path == "/api/v1/prices/import"
}

const ANONYMOUS: &str = "anonymous";

/// The caller's id and name, from the management principal or a valid JWT.
fn actor(state: &ApiState, req: &Request) -> (i64, String) {
    if let Some(p) = req.extensions().get::<Principal>() {
        return (0, p.name.clone());
    }
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .and_then(|t| state.jwt.verify(t.trim()).ok())
        .map(|c| (c.sub, c.username))
        .unwrap_or_else(|| (0, ANONYMOUS.into()))
}

/// The body as JSON with secret values replaced, or a size note.
fn masked(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if body.len() > MAX_DETAIL {
        return Some(json!({ "bytes": body.len() }).to_string());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            mask(&mut v);
            Some(v.to_string())
        }
        Err(_) => Some(json!({ "bytes": body.len(), "json": false }).to_string()),
    }
}

/// A listed field, or one named like a password, token or secret.
fn is_secret(field: &str) -> bool {
    let field = field.to_ascii_lowercase();
    SECRET_FIELDS.contains(&field.as_str())
        || ["_password", "_token", "_secret"]
            .iter()
            .any(|suffix| field.ends_with(suffix))
}

/// Masks secrets in a JSON detail in place: named secret fields, and the
/// password inside any proxy URL.
pub(crate) fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                if k.to_ascii_lowercase().ends_with("proxy_url")
                    && let Value::String(url) = field
                {
                    *url = aiproxy_shared::http::mask_proxy_url(url);
                } else if is_secret(k) {
                    *field = match field {
                        Value::Object(inner) => Value::Object(
                            inner.keys().map(|k| (k.clone(), json!("••••"))).collect(),
                        ),
                        Value::Null => Value::Null,
                        _ => json!("••••"),
                    };
                } else {
                    mask(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    target: Option<String>,
    before_id: Option<i64>,
    limit: Option<u32>,
}

/// `GET /audit-logs?actor=&target=&before_id=&limit=`, newest first.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let items = state
        .store
        .list_audit(&AuditFilter {
            actor: q.actor,
            target_prefix: q.target,
            before_id: q.before_id,
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    let next_before_id = items.last().map(|e| e.id);
    Ok(Json(
        json!({ "total": items.len(), "items": items, "next_before_id": next_before_id }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_audit_log() {
        let body = br#"{"name":"a","credentials":{"api_key":"sk-ant-secret"},"password":"hunter2","current_password":"hunter3","new_password":"hunter4",
            "nested":[{"refresh_token":"r"}],"priority":3}"#;
        let detail = masked(body).expect("detail");
        assert!(!detail.contains("sk-ant-secret"), "{detail}");
        assert!(!detail.contains("hunter"), "{detail}");
        assert!(!detail.contains("\"r\""), "{detail}");
        let v: Value = serde_json::from_str(&detail).expect("json");
        assert_eq!(
            v["credentials"]["api_key"], "••••",
            "which fields were set stays visible"
        );
        assert_eq!(v["priority"], 3);
        assert_eq!(masked(b""), None);
        let proxied = masked(br#"{"proxy_url":"socks5://me:hunter5@p.example:1080"}"#).unwrap();
        assert!(!proxied.contains("hunter5"), "{proxied}");
        assert!(proxied.contains("socks5://me:"), "{proxied}");
    }
}
