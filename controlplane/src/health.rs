//! Account health: one cheap call per account type that tells whether the
//! upstream still accepts its credentials (through the account's base URL
//! and proxy), the OAuth usage windows it reports, the consecutive-failure
//! count shared with relayed traffic, and disabling at the threshold.
use std::time::Duration;

use aiproxy_shared::config::OAuthSettings;
use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::http::{HttpClient, Payload, call_json};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crypto::Sealer;
use crate::oauth::{Credentials, Refresher};
use crate::settings::{Defaults, SystemSettings};
use crate::store::{
    Account, HealthEffect, HealthOutcome, NewAudit, OAuthUsage, Store, StoreResult, UsageWindow,
};

const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Checks in flight at once during a sweep.
const SWEEP_PARALLELISM: usize = 4;
const CHATGPT_CHECK_PATH: &str = "/accounts/check/v4-2023-04-27";

/// The result of checking one account, as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckReport {
    pub account_id: i64,
    /// `ok`, `failed` or `unknown`.
    pub status: &'static str,
    pub endpoint: String,
    pub http_status: Option<u16>,
    pub message: Option<String>,
    pub consecutive_error_count: i32,
    /// The check took the account out of service.
    pub disabled: bool,
    pub checked_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct HealthChecker {
    store: Store,
    sealer: Sealer,
    refresher: Refresher,
    endpoints: OAuthSettings,
    defaults: Defaults,
    direct: HttpClient,
}

/// The call that checks one account.
struct Probe {
    method: http::Method,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl HealthChecker {
    pub fn new(
        store: Store,
        sealer: Sealer,
        refresher: Refresher,
        endpoints: OAuthSettings,
        defaults: Defaults,
    ) -> Self {
        Self {
            store,
            sealer,
            refresher,
            endpoints,
            defaults,
            direct: aiproxy_shared::http::client(Duration::from_secs(10)),
        }
    }

    /// Checks every enabled account whose last check is older than the
    /// configured interval, when health checks are on.
    pub async fn sweep(&self) -> StoreResult<usize> {
        let settings = SystemSettings::load(&self.store, &self.defaults).await?;
        if !settings.health_check_enabled() {
            return Ok(0);
        }
        let interval = chrono::Duration::from_std(settings.health_check_interval())
            .unwrap_or(chrono::Duration::minutes(5));
        let now = Utc::now();
        let due: Vec<Account> = self
            .store
            .list_accounts()
            .await?
            .into_iter()
            .filter(|a| a.enabled && a.health_checked_at.is_none_or(|t| now - t >= interval))
            .collect();
        let count = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(SWEEP_PARALLELISM, |account| async move {
                if let Err(e) = self.check(account.id).await {
                    tracing::warn!(target: "health_check", account_id = account.id, error = %e, "health_check could not run");
                }
            })
            .await;
        Ok(count)
    }

    /// Checks one account now and records the outcome.
    pub async fn check(&self, id: i64) -> StoreResult<CheckReport> {
        let account = self.store.get_account(id).await?;
        let (endpoint, outcome, http_status) = self.probe_account(&account).await;
        let settings = SystemSettings::load(&self.store, &self.defaults).await?;
        let effect = self
            .record(id, &outcome, settings.error_threshold(), "health check")
            .await?;
        let (status, message) = match &outcome {
            HealthOutcome::Passed { .. } => ("ok", None),
            HealthOutcome::Refused { message, .. } => ("failed", Some(message.clone())),
            HealthOutcome::Inconclusive { message } => ("unknown", Some(message.clone())),
        };
        match status {
            "ok" => {
                tracing::info!(target: "health_check", account_id = id, %endpoint, "health_check passed")
            }
            _ => {
                tracing::warn!(target: "health_check", account_id = id, %endpoint, status, message = message.as_deref().unwrap_or(""), "health_check did not pass")
            }
        }
        let (count, disabled) = match effect {
            HealthEffect::Counted(n) => (n, false),
            HealthEffect::Disabled(n) => (n, true),
        };
        Ok(CheckReport {
            account_id: id,
            status,
            endpoint,
            http_status,
            message,
            consecutive_error_count: count,
            disabled,
            checked_at: Utc::now(),
        })
    }

    /// Records what a check or a relayed request learned; at the threshold
    /// the account leaves service, which is logged, audited and published.
    pub async fn record(
        &self,
        id: i64,
        outcome: &HealthOutcome,
        threshold: u32,
        source: &str,
    ) -> StoreResult<HealthEffect> {
        let effect = self
            .store
            .record_account_health(id, outcome, threshold)
            .await?;
        if let HealthEffect::Disabled(count) = effect {
            tracing::warn!(target: "health_check", account_id = id, count, source, "account disabled after consecutive credential failures");
            let reason = self.store.get_account(id).await?.disabled_reason;
            let detail =
                json!({ "consecutive_error_count": count, "source": source, "reason": reason })
                    .to_string();
            let target = format!("/api/v1/accounts/{id}");
            self.store
                .record_audit(&NewAudit {
                    actor_id: 0,
                    actor: "health-check",
                    action: "DISABLE",
                    target: &target,
                    status: 200,
                    detail: Some(&detail),
                })
                .await?;
        }
        Ok(effect)
    }

    /// Threshold in force, for callers recording relayed-traffic failures.
    pub async fn error_threshold(&self) -> StoreResult<u32> {
        Ok(SystemSettings::load(&self.store, &self.defaults)
            .await?
            .error_threshold())
    }

    /// Calls the account's check endpoint; a refused OAuth token is
    /// refreshed once and checked again before it counts as a failure.
    async fn probe_account(&self, account: &Account) -> (String, HealthOutcome, Option<u16>) {
        let kind = account.kind;
        let proxy = account
            .proxy_sealed
            .as_deref()
            .map(|p| {
                let url = self.sealer.open_text(p).map_err(|e| e.to_string())?;
                aiproxy_shared::http::ProxyUrl::parse(&url).map_err(|e| e.to_string())
            })
            .transpose();
        let client = match proxy {
            Ok(Some(proxy)) => aiproxy_shared::http::client_via(&proxy, Duration::from_secs(10)),
            Ok(None) => self.direct.clone(),
            Err(e) => {
                let message = format!("proxy: {e}");
                return (String::new(), HealthOutcome::Inconclusive { message }, None);
            }
        };
        let mut refreshed = false;
        loop {
            let creds = match self.open(account.id).await {
                Ok(c) => c,
                Err(message) => {
                    return (String::new(), HealthOutcome::Inconclusive { message }, None);
                }
            };
            let probe = probe(kind, account.base_url.as_deref(), &creds, &self.endpoints);
            let headers: Vec<(&str, &str)> = probe
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            let payload = probe.body.as_ref().map_or(Payload::Empty, Payload::Json);
            let reply = call_json(
                &client,
                probe.method.clone(),
                &probe.url,
                &headers,
                payload,
                CHECK_TIMEOUT,
            )
            .await;
            let endpoint = format!("{} {}", probe.method, strip_query(&probe.url));
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    let message = format!("request failed: {e}");
                    return (endpoint, HealthOutcome::Inconclusive { message }, None);
                }
            };
            let status = reply.status;
            let outcome = match status {
                200..=299 => HealthOutcome::Passed {
                    usage: if kind == AccountKind::ClaudeOauth {
                        reply.json().map(|v| oauth_usage(&v)).unwrap_or_default()
                    } else {
                        OAuthUsage::default()
                    },
                },
                // A 403 that is not the API's JSON (a bot check in front of
                // claude.ai or chatgpt.com) says nothing of the credentials.
                403 if reply.json().is_none() => HealthOutcome::Inconclusive {
                    message: "403 from something in front of the API (not its JSON error)".into(),
                },
                401 | 403 => {
                    let token = creds.get("access_token").filter(|t| !t.is_empty());
                    if status == 401 && !refreshed && kind.is_oauth() && token.is_some() {
                        refreshed = true;
                        let refused: [u8; 32] =
                            Sha256::digest(token.map_or("", |t| t.as_str()).as_bytes()).into();
                        match self.refresher.refresh(account.id, Some(refused)).await {
                            Ok(crate::oauth::Outcome::Refreshed) => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(target: "health_check", account_id = account.id, error = %e, "token refresh during health_check failed")
                            }
                        }
                    }
                    HealthOutcome::Refused {
                        source: "health check",
                        message: format!("{status} {}", error_message(&reply.body)),
                    }
                }
                _ => HealthOutcome::Inconclusive {
                    message: format!("{status} {}", error_message(&reply.body)),
                },
            };
            return (endpoint, outcome, Some(status));
        }
    }

    async fn open(&self, id: i64) -> Result<Credentials, String> {
        let account = self
            .store
            .get_account(id)
            .await
            .map_err(|e| e.to_string())?;
        let plain = self
            .sealer
            .open(&account.credentials_sealed)
            .map_err(|e| format!("credentials unreadable: {e}"))?;
        serde_json::from_slice(&plain).map_err(|e| format!("credentials unreadable: {e}"))
    }
}

/// The check for each account type (see PROTOCOLS.md and the operator's manual).
fn probe(
    kind: AccountKind,
    base_url: Option<&str>,
    creds: &Credentials,
    endpoints: &OAuthSettings,
) -> Probe {
    let base = base_url
        .unwrap_or(kind.default_base_url())
        .trim_end_matches('/');
    let cred = |name: &str| creds.get(name).cloned().unwrap_or_default();
    let get = |url: String, headers: Vec<(&'static str, String)>| Probe {
        method: http::Method::GET,
        url,
        headers,
        body: None,
    };
    match kind {
        AccountKind::ClaudeApi => get(
            format!("{base}/v1/models?limit=1"),
            vec![
                ("x-api-key", cred("api_key")),
                ("anthropic-version", "2023-06-01".into()),
            ],
        ),
        AccountKind::ClaudeOauth => get(
            format!("{base}/api/oauth/usage"),
            vec![
                ("authorization", format!("Bearer {}", cred("access_token"))),
                ("anthropic-beta", "oauth-2025-04-20".into()),
            ],
        ),
        AccountKind::ClaudeSessionKey => get(
            format!(
                "{}/api/organizations",
                endpoints.claude_web_url.trim_end_matches('/')
            ),
            vec![
                ("cookie", format!("sessionKey={}", cred("session_key"))),
                ("accept", "application/json".into()),
            ],
        ),
        AccountKind::OpenAi => get(
            format!("{base}/v1/models"),
            vec![("authorization", format!("Bearer {}", cred("api_key")))],
        ),
        AccountKind::OpenAiResponses => {
            // The inference base is …/backend-api/codex; the check lives
            // beside it under …/backend-api.
            let root = base.strip_suffix("/codex").unwrap_or(base);
            let mut headers = vec![("authorization", format!("Bearer {}", cred("access_token")))];
            if let Some(id) = creds.get("account_id").filter(|v| !v.is_empty()) {
                headers.push(("chatgpt-account-id", id.clone()));
            }
            get(format!("{root}{CHATGPT_CHECK_PATH}"), headers)
        }
        AccountKind::GeminiApi => get(
            format!("{base}/v1beta/models?pageSize=1"),
            vec![("x-goog-api-key", cred("api_key"))],
        ),
        // Code Assist tokens are checked where they are used: the call
        // Gemini CLI itself makes at start-up, which costs no quota.
        AccountKind::GeminiOauth => {
            let mut body = json!({
                "metadata": {
                    "ideType": "IDE_UNSPECIFIED",
                    "platform": "PLATFORM_UNSPECIFIED",
                    "pluginType": "GEMINI",
                }
            });
            if let Some(project) = creds.get("project_id").filter(|p| !p.is_empty()) {
                body["cloudaicompanionProject"] = json!(project);
            }
            Probe {
                method: http::Method::POST,
                url: format!("{base}/v1internal:loadCodeAssist"),
                headers: vec![("authorization", format!("Bearer {}", cred("access_token")))],
                body: Some(body),
            }
        }
    }
}

/// `five_hour` and `seven_day` from the Claude OAuth usage endpoint.
fn oauth_usage(v: &Value) -> OAuthUsage {
    let window = |name: &str| {
        let w = v.get(name)?;
        Some(UsageWindow {
            utilization: w.get("utilization")?.as_f64()?,
            resets_at: w
                .get("resets_at")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    };
    OAuthUsage {
        five_hour: window("five_hour"),
        seven_day: window("seven_day"),
    }
}

/// The upstream's error message in any of the APIs' shapes, shortened.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/error"))
                .or_else(|| v.pointer("/message"))
                .or_else(|| v.pointer("/detail"))
        })
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    message.chars().take(300).collect()
}

/// Keys may travel in query strings; never show them.
fn strip_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_account_type_is_checked_where_its_credentials_are_used() {
        let endpoints = OAuthSettings::default();
        let p = probe(
            AccountKind::ClaudeOauth,
            None,
            &creds(&[("access_token", "t")]),
            &endpoints,
        );
        assert_eq!(p.url, "https://api.anthropic.com/api/oauth/usage");
        assert!(
            p.headers
                .contains(&("anthropic-beta", "oauth-2025-04-20".into()))
        );
        let p = probe(
            AccountKind::OpenAiResponses,
            None,
            &creds(&[("access_token", "t"), ("account_id", "acc")]),
            &endpoints,
        );
        assert_eq!(
            p.url,
            "https://chatgpt.com/backend-api/accounts/check/v4-2023-04-27"
        );
        assert!(p.headers.contains(&("chatgpt-account-id", "acc".into())));
        let p = probe(
            AccountKind::GeminiApi,
            Some("http://127.0.0.1:9/"),
            &creds(&[("api_key", "k")]),
            &endpoints,
        );
        assert_eq!(p.url, "http://127.0.0.1:9/v1beta/models?pageSize=1");
        let p = probe(
            AccountKind::ClaudeSessionKey,
            None,
            &creds(&[("session_key", "sk")]),
            &endpoints,
        );
        assert!(p.url.ends_with("/api/organizations"));
        assert!(p.headers.contains(&("cookie", "sessionKey=sk".into())));
        let p = probe(
            AccountKind::GeminiOauth,
            None,
            &creds(&[("access_token", "t"), ("project_id", "p-1")]),
            &endpoints,
        );
        assert_eq!(p.method, http::Method::POST);
        assert_eq!(p.body.expect("body")["cloudaicompanionProject"], "p-1");
    }

    #[test]
    fn usage_windows_are_read_from_the_oauth_usage_reply() {
        let v = json!({
            "five_hour": {"utilization": 42.0, "resets_at": "2026-11-26T15:00:00+00:00"},
            "seven_day": {"utilization": 7.5, "resets_at": null},
            "seven_day_opus": null
        });
        let u = oauth_usage(&v);
        let five = u.five_hour.expect("five hour");
        assert_eq!(five.utilization, 42.0);
        assert_eq!(
            five.resets_at.expect("reset").to_rfc3339(),
            "2026-11-26T15:00:00+00:00"
        );
        assert_eq!(u.seven_day.expect("seven day").resets_at, None);
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
        assert_eq!(
            strip_query("https://x/v1beta/models?key=secret"),
            "https://x/v1beta/models"
        );
    }
}
