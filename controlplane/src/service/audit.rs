//! The audit log: every change made to the control plane, with who made
//! it, what (an HTTP method, or a job's verb), the REST path it names, the
//! outcome and the request with secrets masked; and reading it back.
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Actor, ServiceResult, Services};
use crate::store::{AuditEntry, AuditFilter, NewAudit};

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

/// Which entries to read, newest first.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries by this actor (a username, `ctl (admin token)`, a job's name).
    pub actor: Option<String>,
    /// Entries whose target starts with this.
    pub target: Option<String>,
    /// Entries older than this id (the previous page's `next_before_id`).
    pub before_id: Option<i64>,
    /// At most this many (100 when left out).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub total: usize,
    /// Where the next page starts, if this one had entries.
    pub next_before_id: Option<i64>,
}

/// One change to write to the log.
pub struct Change<'a> {
    /// The user who made it; none for the control plane's own principals
    /// (recorded as actor id 0).
    pub actor_id: Option<i64>,
    /// Their username, or what the principal is.
    pub actor: &'a str,
    /// The HTTP method (or a job's verb).
    pub action: &'a str,
    /// The REST path of what changed, e.g. `/api/v1/accounts/7/disable`.
    pub target: &'a str,
    /// The HTTP status the change was answered with.
    pub status: u16,
    /// The request body as sent; secrets are masked before it is written.
    pub body: &'a [u8],
}

impl Services {
    pub async fn list_audit(&self, actor: &Actor, q: AuditQuery) -> ServiceResult<AuditPage> {
        actor.require_admin()?;
        let items = self
            .store
            .list_audit(&AuditFilter {
                actor: q.actor,
                target_prefix: q.target,
                before_id: q.before_id,
                limit: q.limit.unwrap_or(100),
            })
            .await?;
        Ok(AuditPage {
            total: items.len(),
            next_before_id: items.last().map(|e| e.id),
            items,
        })
    }

    /// Writes a change to the log; a failure to write is logged, never
    /// turned into the change's failure.
    pub async fn record_change(&self, change: Change<'_>) {
        let detail = masked(change.body);
        let entry = NewAudit {
            actor_id: change.actor_id.unwrap_or(0),
            actor: change.actor,
            action: change.action,
            target: change.target,
            status: change.status,
            detail: detail.as_deref(),
        };
        if let Err(e) = self.store.record_audit(&entry).await {
            tracing::error!(error = %e, target = change.target, "could not write the audit log");
        }
    }
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
