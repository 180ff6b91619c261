//! What an upstream failure says about its account: whether another account
//! should be tried, and how long every node keeps this one out, by error class.
use std::time::Duration;

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::ratelimit::reset_after_429;
use aiproxy_shared::state::{Mark, MarkKind};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::snapshot::AccountEntry;

/// Unavailable TTL per error class, before the `unavailable_ttl` cap.
pub const SERVER_ERROR_TTL: Duration = Duration::from_secs(30);
pub const OVERLOADED_TTL: Duration = Duration::from_secs(60);
pub const UNREACHABLE_TTL: Duration = Duration::from_secs(30);
pub const TOKEN_REFUSED_TTL: Duration = Duration::from_secs(60);
/// A 429 that names no reset time.
pub const RATE_LIMITED_TTL: Duration = Duration::from_secs(60);

/// The account's part in a failed attempt.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Keeps the account out of every node's picks.
    pub mark: Option<Mark>,
    /// The control plane persists this as `rate_limit_reset_at`.
    pub rate_limit_reset: Option<DateTime<Utc>>,
    /// The OAuth token was refused: ask for a refresh.
    pub refresh_token: bool,
    /// Refused in a way that suggests a ban: the upstream's message.
    pub suspected_ban: Option<String>,
    /// The upstream refused the account's credentials (a 401 no token
    /// refresh can cure, or a 403): counted toward disabling the account.
    pub credential_failure: Option<String>,
}

/// Whether a status is the account's failure rather than the request's: the
/// caller then tries another account. The body is read only for these.
pub fn is_account_failure(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        401 | 403 | 429 | 500 | 502 | 503 | 504 | 529
    )
}

fn unavailable(
    account: i64,
    reason: &str,
    ttl: Duration,
    cap: Duration,
    now: DateTime<Utc>,
) -> Mark {
    let ttl = ttl.min(cap);
    Mark {
        account_id: account,
        kind: MarkKind::Unavailable,
        until_ms: now.timestamp_millis() + ttl.as_millis() as i64,
        reason: reason.to_string(),
    }
}

/// The verdict on an account whose upstream answered `status` (one for
/// which `is_account_failure` holds).
pub fn judge(
    account: &AccountEntry,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    cap: Duration,
) -> Verdict {
    let id = account.id;
    let json: Option<Value> = serde_json::from_slice(body).ok();
    match status.as_u16() {
        429 => match reset_after_429(account.kind, headers, json.as_ref(), now) {
            Some(reset) => Verdict {
                mark: Some(Mark {
                    account_id: id,
                    kind: MarkKind::RateLimited,
                    until_ms: reset.timestamp_millis(),
                    reason: "rate_limited".into(),
                }),
                rate_limit_reset: Some(reset),
                ..Verdict::default()
            },
            // A subscription's 429 without a reset (e.g. extra usage
            // required) is about this request's size, not the window.
            None if matches!(
                account.kind,
                AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey
            ) =>
            {
                Verdict::default()
            }
            None => Verdict {
                mark: Some(unavailable(id, "rate_limited", RATE_LIMITED_TTL, cap, now)),
                ..Verdict::default()
            },
        },
        529 => Verdict {
            mark: Some(unavailable(id, "overloaded", OVERLOADED_TTL, cap, now)),
            ..Verdict::default()
        },
        401 if account.kind.is_oauth() => Verdict {
            mark: Some(unavailable(
                id,
                "token_refused",
                TOKEN_REFUSED_TTL,
                cap,
                now,
            )),
            refresh_token: true,
            ..Verdict::default()
        },
        401 => Verdict {
            mark: Some(unavailable(id, "credentials_refused", cap, cap, now)),
            credential_failure: Some(upstream_message(401, json.as_ref())),
            ..Verdict::default()
        },
        403 => {
            let error_type = json
                .as_ref()
                .and_then(|v| v.pointer("/error/type"))
                .and_then(Value::as_str);
            let suspected_ban = (account.kind.is_oauth() && error_type == Some("permission_error"))
                .then(|| {
                    json.as_ref()
                        .and_then(|v| v.pointer("/error/message"))
                        .and_then(Value::as_str)
                        .unwrap_or("permission_error")
                        .to_string()
                });
            // Only a refusal of the account counts toward disabling it; a 403
            // about the request (another project's file, a region) does not.
            let refuses_account = matches!(
                error_type,
                Some("permission_error" | "authentication_error")
            );
            Verdict {
                mark: Some(unavailable(id, "permission_denied", cap, cap, now)),
                suspected_ban,
                credential_failure: refuses_account.then(|| upstream_message(403, json.as_ref())),
                ..Verdict::default()
            }
        }
        _ => Verdict {
            mark: Some(unavailable(id, "upstream_5xx", SERVER_ERROR_TTL, cap, now)),
            ..Verdict::default()
        },
    }
}

/// `401 <the upstream's error message>`, in any of the APIs' error shapes.
fn upstream_message(status: u16, json: Option<&Value>) -> String {
    let message = json
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/error"))
                .or_else(|| v.pointer("/message"))
        })
        .and_then(Value::as_str)
        .unwrap_or("no message");
    let message: String = message.chars().take(300).collect();
    format!("{status} {message}")
}

/// The account could not be reached, or did not answer in time.
pub fn unreachable(account: i64, class: &str, now: DateTime<Utc>, cap: Duration) -> Mark {
    unavailable(account, class, UNREACHABLE_TTL, cap, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn account(kind: AccountKind) -> AccountEntry {
        AccountEntry {
            id: 7,
            ..AccountEntry::for_tests(kind)
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn rate_limits_with_a_reset_mark_until_it() {
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-unified-reset",
            "1800000090".parse().unwrap(),
        );
        let v = judge(
            &account(AccountKind::ClaudeOauth),
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            b"{}",
            now(),
            CAP,
        );
        let mark = v.mark.unwrap();
        assert_eq!(mark.kind, MarkKind::RateLimited);
        assert_eq!(mark.until_ms, 1_800_000_090_000);
        assert_eq!(v.rate_limit_reset.unwrap().timestamp(), 1_800_000_090);
        // Codex says it in the body.
        let body = br#"{"error":{"type":"usage_limit_reached","resets_at":1800000600}}"#;
        let v = judge(
            &account(AccountKind::OpenAiResponses),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            body,
            now(),
            CAP,
        );
        assert_eq!(v.rate_limit_reset.unwrap().timestamp(), 1_800_000_600);
    }

    #[test]
    fn a_subscription_429_without_reset_marks_nothing() {
        let v = judge(
            &account(AccountKind::ClaudeOauth),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            b"{}",
            now(),
            CAP,
        );
        assert_eq!(v, Verdict::default());
        let v = judge(
            &account(AccountKind::OpenAi),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            b"{}",
            now(),
            CAP,
        );
        assert_eq!(v.mark.unwrap().kind, MarkKind::Unavailable);
    }

    #[test]
    fn error_classes_get_their_ttls_under_the_cap() {
        let cases = [
            (500, "upstream_5xx", 30),
            (529, "overloaded", 60),
            (401, "token_refused", 60),
            (403, "permission_denied", 300),
        ];
        for (status, reason, secs) in cases {
            let v = judge(
                &account(AccountKind::ClaudeOauth),
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                b"",
                now(),
                CAP,
            );
            let mark = v.mark.unwrap();
            assert_eq!(mark.reason, reason);
            assert_eq!(
                mark.until_ms - now().timestamp_millis(),
                secs * 1000,
                "{status}"
            );
        }
        let short = judge(
            &account(AccountKind::ClaudeApi),
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            b"",
            now(),
            Duration::from_secs(5),
        );
        assert_eq!(
            short.mark.unwrap().until_ms - now().timestamp_millis(),
            5_000,
            "capped by unavailable_ttl"
        );
    }

    #[test]
    fn oauth_permission_errors_are_suspected_bans() {
        let body = br#"{"type":"error","error":{"type":"permission_error","message":"OAuth authentication is currently not allowed for this organization."}}"#;
        let v = judge(
            &account(AccountKind::ClaudeOauth),
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            body,
            now(),
            CAP,
        );
        assert_eq!(
            v.suspected_ban.as_deref(),
            Some("OAuth authentication is currently not allowed for this organization.")
        );
        let v = judge(
            &account(AccountKind::ClaudeApi),
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            body,
            now(),
            CAP,
        );
        assert_eq!(v.suspected_ban, None, "API keys are not banned accounts");
        let v = judge(
            &account(AccountKind::ClaudeOauth),
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            b"",
            now(),
            CAP,
        );
        assert!(v.refresh_token);
        assert_eq!(
            v.credential_failure, None,
            "a refused OAuth token is refreshed before it counts"
        );
    }

    #[test]
    fn refused_credentials_are_reported_with_the_upstream_message() {
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        let v = judge(
            &account(AccountKind::ClaudeApi),
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
            now(),
            CAP,
        );
        assert_eq!(
            v.credential_failure.as_deref(),
            Some("401 invalid x-api-key")
        );
        let v = judge(
            &account(AccountKind::OpenAi),
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            b"{}",
            now(),
            CAP,
        );
        assert_eq!(
            v.credential_failure, None,
            "a 5xx says nothing of the credentials"
        );
        let v = judge(
            &account(AccountKind::GeminiApi),
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            br#"{"error":{"code":403,"message":"You do not have permission to access the File","status":"PERMISSION_DENIED"}}"#,
            now(),
            CAP,
        );
        assert_eq!(
            v.credential_failure, None,
            "a 403 about the request does not count"
        );
    }
}
