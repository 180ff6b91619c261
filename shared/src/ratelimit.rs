//! Upstream rate-limit signals turned into a reset time: one parser per
//! signal, and per account kind the signals that count.
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::HeaderMap;
use serde_json::Value;

use crate::domain::AccountKind;

/// Longest a single signal may keep an account out (weekly windows exist).
pub const MAX_RESET: Duration = Duration::from_secs(8 * 24 * 3600);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn epoch(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single()
}

/// `anthropic-ratelimit-unified-reset`: Unix epoch seconds.
pub fn anthropic_unified_reset(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    epoch(
        header(headers, "anthropic-ratelimit-unified-reset")?
            .parse()
            .ok()?,
    )
}

/// `retry-after-ms`, else `retry-after` in seconds.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(now + chrono::Duration::milliseconds(ms.max(0.0) as i64));
    }
    let secs: f64 = header(headers, "retry-after")?.parse().ok()?;
    Some(now + chrono::Duration::milliseconds((secs.max(0.0) * 1000.0) as i64))
}

/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
/// (RFC 3339): the latest reset among limits whose `-remaining` is 0, or
/// among all of them when none says so.
pub fn anthropic_limit_reset(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let limits = ["requests", "tokens", "input-tokens", "output-tokens"];
    let reset = |l: &str| {
        header(headers, &format!("anthropic-ratelimit-{l}-reset"))
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let exhausted = limits
        .iter()
        .filter(|l| header(headers, &format!("anthropic-ratelimit-{l}-remaining")) == Some("0"))
        .filter_map(|l| reset(l))
        .max();
    exhausted.or_else(|| limits.iter().filter_map(|l| reset(l)).max())
}

/// OpenAI's durations: `1s`, `6m0s`, `1h2m3.5s`, `250ms`.
pub fn openai_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        any = true;
    }
    (any && number.is_empty()).then(|| Duration::from_secs_f64(total))
}

/// `x-ratelimit-reset-{requests,tokens}`: the limit that ran out (remaining
/// 0), else the later of the two.
pub fn openai_reset(headers: &HeaderMap, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let at = |kind: &str| {
        let d = openai_duration(header(headers, &format!("x-ratelimit-reset-{kind}"))?)?;
        Some(now + chrono::Duration::from_std(d).ok()?)
    };
    let kinds = ["requests", "tokens"];
    kinds
        .iter()
        .filter(|k| header(headers, &format!("x-ratelimit-remaining-{k}")) == Some("0"))
        .filter_map(|k| at(k))
        .max()
        .or_else(|| kinds.iter().filter_map(|k| at(k)).max())
}

/// Codex: `error.resets_at` (epoch) or `error.resets_in_seconds` in the body,
/// else `x-codex-{primary,secondary}-reset-at` (epoch) or
/// `-reset-after-seconds` headers; the latest wins.
pub fn codex_reset(
    headers: &HeaderMap,
    body: Option<&Value>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if let Some(error) = body.and_then(|b| b.get("error")) {
        if let Some(at) = error.get("resets_at").and_then(Value::as_i64) {
            return epoch(at);
        }
        if let Some(secs) = error.get("resets_in_seconds").and_then(Value::as_i64) {
            return Some(now + chrono::Duration::seconds(secs));
        }
    }
    ["primary", "secondary"]
        .iter()
        .filter_map(|w| {
            header(headers, &format!("x-codex-{w}-reset-at"))
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(epoch)
                .or_else(|| {
                    let secs: i64 = header(headers, &format!("x-codex-{w}-reset-after-seconds"))?
                        .parse()
                        .ok()?;
                    Some(now + chrono::Duration::seconds(secs))
                })
        })
        .max()
}

/// Gemini: `error.details[]` `google.rpc.RetryInfo.retryDelay` (`"58s"`).
pub fn gemini_retry_delay(body: &Value, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let details = body.pointer("/error/details")?.as_array()?;
    let delay = details
        .iter()
        .find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })?
        .get("retryDelay")?
        .as_str()?;
    let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
    Some(now + chrono::Duration::milliseconds((secs * 1000.0) as i64))
}

/// When a 429 from an account of `kind` says the account may be used again,
/// capped at [`MAX_RESET`]. `None` means the response carries no signal that
/// counts for this kind (a Claude subscription's 429 without the unified
/// reset, e.g. "extra usage required", must not mark the account).
pub fn reset_after_429(
    kind: AccountKind,
    headers: &HeaderMap,
    body: Option<&Value>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let at = match kind {
        AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey => {
            anthropic_unified_reset(headers)
        }
        AccountKind::ClaudeApi => retry_after(headers, now)
            .or_else(|| anthropic_limit_reset(headers))
            .or_else(|| anthropic_unified_reset(headers)),
        AccountKind::OpenAi => openai_reset(headers, now).or_else(|| retry_after(headers, now)),
        AccountKind::OpenAiResponses => {
            codex_reset(headers, body, now).or_else(|| retry_after(headers, now))
        }
        AccountKind::GeminiApi | AccountKind::GeminiOauth => body
            .and_then(|b| gemini_retry_delay(b, now))
            .or_else(|| retry_after(headers, now)),
    }?;
    let cap = now + chrono::Duration::from_std(MAX_RESET).unwrap_or(chrono::TimeDelta::MAX);
    Some(at.min(cap).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn anthropic_unified_reset_is_epoch_seconds() {
        let h = headers(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", "1800003600"),
        ]);
        assert_eq!(
            anthropic_unified_reset(&h).unwrap().timestamp(),
            1_800_003_600
        );
        assert_eq!(
            reset_after_429(AccountKind::ClaudeOauth, &h, None, now())
                .unwrap()
                .timestamp(),
            1_800_003_600
        );
        // Without it a subscription's 429 marks nothing.
        assert!(
            reset_after_429(
                AccountKind::ClaudeOauth,
                &headers(&[("retry-after", "30")]),
                None,
                now()
            )
            .is_none()
        );
    }

    #[test]
    fn retry_after_in_seconds_and_milliseconds() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "30")]), now())
                .unwrap()
                .timestamp(),
            1_800_000_030
        );
        let ms = retry_after(
            &headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            now(),
        )
        .unwrap();
        assert_eq!(ms.timestamp_millis(), 1_800_000_001_500);
    }

    #[test]
    fn anthropic_limit_resets_prefer_the_exhausted_limit() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2027-01-15T08:00:05Z"),
        ]);
        assert_eq!(
            anthropic_limit_reset(&h).unwrap().to_rfc3339(),
            "2027-01-15T08:00:05+00:00"
        );
        let any = headers(&[(
            "anthropic-ratelimit-input-tokens-reset",
            "2027-01-15T08:01:00Z",
        )]);
        assert_eq!(
            anthropic_limit_reset(&any).unwrap().to_rfc3339(),
            "2027-01-15T08:01:00+00:00"
        );
    }

    #[test]
    fn openai_durations() {
        assert_eq!(openai_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(openai_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            openai_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(openai_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(openai_duration("soon"), None);
        assert_eq!(openai_duration("12"), None);
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "1s"),
        ]);
        assert_eq!(openai_reset(&h, now()).unwrap().timestamp(), 1_800_000_360);
    }

    #[test]
    fn codex_resets_from_body_or_headers() {
        let body = json!({"error": {"type": "usage_limit_reached", "resets_at": 1_800_100_000}});
        assert_eq!(
            codex_reset(&HeaderMap::new(), Some(&body), now())
                .unwrap()
                .timestamp(),
            1_800_100_000
        );
        let older = json!({"error": {"type": "usage_limit_reached", "resets_in_seconds": 120}});
        assert_eq!(
            codex_reset(&HeaderMap::new(), Some(&older), now())
                .unwrap()
                .timestamp(),
            1_800_000_120
        );
        let h = headers(&[
            ("x-codex-primary-reset-at", "1800000500"),
            ("x-codex-secondary-reset-after-seconds", "900"),
        ]);
        assert_eq!(
            codex_reset(&h, None, now()).unwrap().timestamp(),
            1_800_000_900
        );
    }

    #[test]
    fn gemini_retry_info() {
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "58s"}]}});
        assert_eq!(
            gemini_retry_delay(&body, now()).unwrap().timestamp(),
            1_800_000_058
        );
        assert_eq!(
            reset_after_429(
                AccountKind::GeminiApi,
                &HeaderMap::new(),
                Some(&body),
                now()
            )
            .unwrap()
            .timestamp(),
            1_800_000_058
        );
    }

    #[test]
    fn resets_are_capped() {
        let h = headers(&[("anthropic-ratelimit-unified-reset", "4000000000")]);
        let at = reset_after_429(AccountKind::ClaudeOauth, &h, None, now()).unwrap();
        assert_eq!(at - now(), chrono::Duration::from_std(MAX_RESET).unwrap());
    }
}
