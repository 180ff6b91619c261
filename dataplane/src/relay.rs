//! Relaying Anthropic Messages requests to Claude accounts: authenticate,
//! check, pick an account, forward, fail over before the first byte, meter.
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiproxy_shared::domain::{AccountKind, Platform};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::auth::{authenticate, model_allowed, query_without_key};
use crate::body::{RelayBody, TapBody};
use crate::errors::{ErrorShape, RelayError};
use crate::meter::Meter;
use crate::scheduler::{Lease, Scheduler};
use crate::snapshot::{AccountEntry, SnapshotHolder};
use crate::tap::{Decoder, Observed, UsageTap};
use crate::upstream::HttpClient;
use crate::usage::UsageSink;

/// Account kinds that serve `/v1/messages`.
const MESSAGES_KINDS: &[AccountKind] = &[AccountKind::ClaudeApi];
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Shared by every request on a node.
pub struct Relay {
    pub snapshot: Arc<SnapshotHolder>,
    pub scheduler: Scheduler,
    pub client: HttpClient,
    pub sink: UsageSink,
    /// Upstream timeout for the response head and first byte, used until
    /// the snapshot carries the control plane's `proxy.timeout`.
    pub timeout: Duration,
    pub max_body_bytes: usize,
    /// Accounts tried per request before giving up.
    pub max_attempts: usize,
}

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// A response from an account, with the slot it holds.
struct Attempt {
    response: Response<Incoming>,
    account: Arc<AccountEntry>,
    lease: Lease,
}

impl Relay {
    pub async fn messages(
        &self,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Response<RelayBody> {
        match self.try_messages(req, request_id).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(request_id = ?request_id, status = e.status.as_u16(), class = e.class, "request rejected");
                e.into_response(ErrorShape::Anthropic, request_id)
            }
        }
    }

    async fn try_messages(
        &self,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Result<Response<RelayBody>, RelayError> {
        let started = Instant::now();
        let snapshot = self.snapshot.load().ok_or_else(RelayError::not_ready)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (parts, body) = req.into_parts();
        let caller = authenticate(&snapshot, &parts.headers, parts.uri.query(), now_ms)?;
        let body = read_body(body, &parts.headers, self.max_body_bytes).await?;
        let parsed: MessagesRequest = serde_json::from_slice(&body)
            .map_err(|e| RelayError::bad_request(format!("invalid JSON body: {e}")))?;
        let model = parsed
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| RelayError::bad_request("model is required"))?;
        if !model_allowed(&caller.key, &model) {
            return Err(RelayError::model_not_allowed());
        }
        let query = query_without_key(parts.uri.query());
        let path = parts.uri.path();
        let timeout = match snapshot.request_timeout_ms {
            0 => self.timeout,
            ms => Duration::from_millis(ms),
        };

        let mut tried: Vec<i64> = Vec::new();
        let mut last_failure: Option<RelayError> = None;
        let mut last_retryable: Option<Attempt> = None;
        for _ in 0..self.max_attempts {
            let Some((account, lease)) =
                self.scheduler
                    .pick(&snapshot, MESSAGES_KINDS, &tried, now_ms)
            else {
                break;
            };
            tried.push(account.id);
            let upstream = anthropic_request(
                &account,
                path,
                query.as_deref(),
                &parts.headers,
                body.clone(),
            )?;
            match tokio::time::timeout(timeout, self.client.request(upstream)).await {
                Err(_) => {
                    tracing::warn!(
                        account_id = account.id,
                        "upstream timed out before responding; trying another account"
                    );
                    last_failure = Some(RelayError::timeout());
                }
                Ok(Err(e)) => {
                    tracing::warn!(account_id = account.id, error = %e, "upstream request failed; trying another account");
                    last_failure = Some(RelayError::upstream("upstream connection failed"));
                }
                Ok(Ok(response)) if is_retryable(response.status()) => {
                    tracing::warn!(
                        account_id = account.id,
                        status = response.status().as_u16(),
                        "upstream refused; trying another account"
                    );
                    last_retryable = Some(Attempt {
                        response,
                        account,
                        lease,
                    });
                }
                Ok(Ok(response)) => {
                    return self
                        .respond(
                            Attempt {
                                response,
                                account,
                                lease,
                            },
                            meter_parts(&caller, &model, parsed.stream),
                            &snapshot,
                            started,
                            timeout,
                            request_id,
                        )
                        .await;
                }
            }
        }
        // Every account failed: pass the last upstream answer through as it was.
        if let Some(attempt) = last_retryable {
            return self
                .respond(
                    attempt,
                    meter_parts(&caller, &model, parsed.stream),
                    &snapshot,
                    started,
                    timeout,
                    request_id,
                )
                .await;
        }
        Err(last_failure.unwrap_or_else(RelayError::no_account))
    }

    async fn respond(
        &self,
        attempt: Attempt,
        who: MeterParts,
        snapshot: &Arc<crate::snapshot::Snapshot>,
        started: Instant,
        timeout: Duration,
        request_id: &HeaderValue,
    ) -> Result<Response<RelayBody>, RelayError> {
        let Attempt {
            response,
            account,
            lease,
        } = attempt;
        let (mut head, mut body) = response.into_parts();
        let mut meter = Meter {
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            key_id: who.key_id,
            user_id: who.user_id,
            account_id: account.id,
            requested_model: who.model,
            platform: Platform::Anthropic,
            endpoint: "/v1/messages",
            stream: who.stream,
            status: head.status.as_u16(),
            started,
            ttfb: None,
            snapshot: snapshot.clone(),
            price_rate: who.price_rate,
            sink: self.sink.clone(),
            lease: Some(lease),
            error_class: String::new(),
        };
        // Wait for the first bytes: they tell whether the body is gzip
        // even when no header says so, and they time the first byte.
        let first = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                meter.error_class = "upstream_timeout".into();
                meter.finish(&Observed::default(), true);
                return Err(RelayError::timeout());
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(account_id = account.id, error = %e, "upstream body failed before the first byte");
                meter.error_class = "upstream_stream_error".into();
                meter.finish(&Observed::default(), true);
                return Err(RelayError::upstream("upstream connection failed"));
            }
            Ok(Some(Ok(frame))) => frame.into_data().ok(),
            Ok(None) => None,
        };
        meter.ttfb = Some(started.elapsed());
        let encoding = head
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoder = Decoder::detect(encoding, first.as_deref().unwrap_or_default());
        let content_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let tap = UsageTap::for_content_type(content_type);
        strip_response_headers(&mut head.headers, decoder.is_some());
        if tap.is_sse() {
            head.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            head.headers
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        head.headers.insert("x-request-id", request_id.clone());
        let body = TapBody::new(body, first, decoder, tap, meter);
        Ok(Response::from_parts(
            head,
            RelayBody::Tapped(Box::new(body)),
        ))
    }
}

struct MeterParts {
    key_id: i64,
    user_id: i64,
    model: String,
    stream: bool,
    price_rate: rust_decimal::Decimal,
}

fn meter_parts(caller: &crate::auth::Caller<'_>, model: &str, stream: bool) -> MeterParts {
    MeterParts {
        key_id: caller.key.id,
        user_id: caller.key.user_id,
        model: model.to_string(),
        stream,
        price_rate: caller.user.price_rate,
    }
}

/// 429, 529 and 5xx mean "this account, not this request".
fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504 | 529)
}

/// Reads the request body up to `max` bytes; larger bodies get a 413.
async fn read_body(body: Incoming, headers: &HeaderMap, max: usize) -> Result<Bytes, RelayError> {
    let too_large = || {
        RelayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(RelayError::bad_request("could not read the request body")),
    }
}

/// Client headers an Anthropic upstream may see; everything else (the
/// client's credentials, cookies, forwarding and hop-by-hop headers) stays here.
fn forwardable(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "anthropic-version"
            | "anthropic-beta"
            | "content-type"
            | "accept"
            | "user-agent"
            | "x-app"
            | "anthropic-dangerous-direct-browser-access"
    ) || n.starts_with("x-stainless-")
}

fn anthropic_request(
    account: &AccountEntry,
    path: &str,
    query: Option<&str>,
    client_headers: &HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, RelayError> {
    let url = match query {
        Some(q) => format!("{}{}?{}", account.base_url, path, q),
        None => format!("{}{}", account.base_url, path),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| RelayError::upstream("account base_url is not a valid URL"))?;
    let api_key = account
        .api_key
        .clone()
        .ok_or_else(|| RelayError::upstream("account has no api_key"))?;
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    for (name, value) in client_headers {
        if forwardable(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert("x-api-key", api_key);
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    headers
        .entry("anthropic-version")
        .or_insert(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
    Ok(req)
}

/// Removes hop-by-hop headers (and those `connection` names), lengths
/// that no longer hold, and upstream details clients must not see.
fn strip_response_headers(headers: &mut HeaderMap, decoded: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "set-cookie",
        "anthropic-organization-id",
        "alt-svc",
    ] {
        headers.remove(name);
    }
    if decoded {
        headers.remove(header::CONTENT_ENCODING);
    }
    let cf: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("cf-"))
        .cloned()
        .collect();
    for name in cf {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_never_reach_the_upstream() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "sk-aiproxy-client"),
            ("authorization", "Bearer sk-aiproxy-client"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept-encoding", "gzip, br"),
            ("connection", "keep-alive"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("x-stainless-lang", "python"),
            ("user-agent", "claude-cli/2.1.0 (external, cli)"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let account = AccountEntry {
            id: 1,
            name: "a".into(),
            kind: AccountKind::ClaudeApi,
            base_url: "http://127.0.0.1:9".into(),
            api_key: Some(HeaderValue::from_static("sk-ant-upstream")),
            priority: 0,
            max_concurrency: 0,
            schedulable: true,
            rate_limit_reset_at_ms: 0,
        };
        let req = anthropic_request(
            &account,
            "/v1/messages",
            Some("beta=true"),
            &client,
            Bytes::new(),
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(
            req.uri().to_string(),
            "http://127.0.0.1:9/v1/messages?beta=true"
        );
        assert_eq!(h["x-api-key"], "sk-ant-upstream");
        assert_eq!(h["accept-encoding"], "identity");
        assert_eq!(h["anthropic-version"], DEFAULT_ANTHROPIC_VERSION);
        assert_eq!(h["anthropic-beta"], "prompt-caching-2024-07-31");
        assert_eq!(h["x-stainless-lang"], "python");
        for gone in ["authorization", "cookie", "x-forwarded-for", "connection"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert!(!format!("{h:?}").contains("sk-aiproxy-client"));
    }

    #[test]
    fn response_headers_are_cleaned() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("set-cookie", "__cf_bm=1"),
            ("cf-ray", "abc"),
            ("request-id", "req_1"),
            ("anthropic-organization-id", "org"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_response_headers(&mut h, true);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["request-id"]);
    }
}
