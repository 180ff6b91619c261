//! The relay: authenticate, check, pick an account that serves the
//! endpoint, forward, fail over before the first byte, stream back, meter.
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiproxy_shared::domain::AccountKind;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::adapters::{self, Outgoing};
use crate::auth::{Caller, authenticate, model_allowed, query_without_key};
use crate::body::{Pipeline, RelayBody, TapBody};
use crate::errors::RelayError;
use crate::meter::Meter;
use crate::routes::Endpoint;
use crate::scheduler::{Lease, Scheduler};
use crate::snapshot::{AccountEntry, Snapshot, SnapshotHolder};
use crate::tap::{Decoder, Observed, Unwrapper, UsageFormat, UsageTap};
use crate::usage::UsageSink;
use aiproxy_shared::http::HttpClient;

/// Shared by every request on a node.
pub struct Relay {
    pub snapshot: Arc<SnapshotHolder>,
    pub scheduler: Scheduler,
    /// Direct upstream client.
    pub client: HttpClient,
    /// Clients through each account proxy in use, by proxy URL.
    pub proxied: std::sync::Mutex<std::collections::HashMap<String, HttpClient>>,
    pub sink: UsageSink,
    /// Upstream timeout for the response head and first byte, used until
    /// the snapshot carries the control plane's `proxy.timeout`.
    pub timeout: Duration,
    /// Longest silence allowed inside a response body.
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    /// Accounts tried per request before giving up.
    pub max_attempts: usize,
    /// Connect timeout for clients made for account proxies.
    pub connect_timeout: Duration,
    /// The control plane, told when an OAuth token is refused.
    pub control: crate::control::Client,
    pub node_id: String,
}

/// The few request fields the relay needs; the body is forwarded as sent.
#[derive(Deserialize)]
struct RequestHead {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<Value>,
}

/// What the relay learned from the request body.
struct Parsed {
    model: String,
    stream: bool,
    body: Bytes,
}

/// A response from an account, with the slot it holds.
struct Attempt {
    response: Response<Incoming>,
    account: Arc<AccountEntry>,
    lease: Lease,
}

/// Who asked, for which model: the parts of a usage record known up front.
struct Asked {
    key_id: i64,
    user_id: i64,
    price_rate: rust_decimal::Decimal,
    model: String,
    stream: bool,
}

impl Relay {
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Response<RelayBody> {
        match self.relay(&endpoint, req, request_id).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(request_id = ?request_id, status = e.status.as_u16(), class = e.class, "request refused");
                e.into_response(endpoint.error_shape(), request_id)
            }
        }
    }

    async fn relay(
        &self,
        endpoint: &Endpoint,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Result<Response<RelayBody>, RelayError> {
        let started = Instant::now();
        let snapshot = self.snapshot.load().ok_or_else(RelayError::not_ready)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (parts, body) = req.into_parts();
        let caller = authenticate(&snapshot, &parts.headers, parts.uri.query(), now_ms)?;
        let body = read_body(body, &parts.headers, self.max_body_bytes).await?;
        let parsed = parse(endpoint, body)?;
        if !model_allowed(&caller.key, &parsed.model) {
            return Err(RelayError::model_not_allowed());
        }
        let timeout = match snapshot.request_timeout_ms {
            0 => self.timeout,
            ms => Duration::from_millis(ms),
        };
        let asked = asked(&caller, &parsed);
        let query = query_without_key(parts.uri.query());
        let outgoing = Outgoing {
            endpoint,
            query: query.as_deref(),
            headers: &parts.headers,
            body: parsed.body,
        };

        let mut tried: Vec<i64> = Vec::new();
        let mut last_failure: Option<RelayError> = None;
        let mut last_refusal: Option<Attempt> = None;
        for _ in 0..self.max_attempts {
            let Some((account, lease)) =
                self.scheduler
                    .pick(&snapshot, endpoint.kinds(), &tried, now_ms)
            else {
                break;
            };
            tried.push(account.id);
            let upstream = match adapters::build(&account, &outgoing) {
                Ok(req) => req,
                Err(e) => {
                    tracing::warn!(account_id = account.id, error = %e.message, "account cannot be called; trying another");
                    last_failure = Some(e);
                    continue;
                }
            };
            let client = match self.client_for(&account) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(account_id = account.id, error = %e, "account proxy unusable; trying another");
                    last_failure = Some(RelayError::upstream("account proxy is misconfigured"));
                    continue;
                }
            };
            match tokio::time::timeout(timeout, client.request(upstream)).await {
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
                Ok(Ok(response))
                    if response.status() == StatusCode::UNAUTHORIZED && uses_oauth(&account) =>
                {
                    tracing::warn!(
                        account_id = account.id,
                        "upstream refused the OAuth token; asking for a refresh and trying another account"
                    );
                    self.report_refused_token(&account);
                    last_refusal = Some(Attempt {
                        response,
                        account,
                        lease,
                    });
                }
                Ok(Ok(response)) if is_retryable(response.status()) => {
                    if response.status() == StatusCode::TOO_MANY_REQUESTS {
                        self.note_rate_limit(&account, response.headers());
                    }
                    tracing::warn!(
                        account_id = account.id,
                        status = response.status().as_u16(),
                        "upstream refused; trying another account"
                    );
                    last_refusal = Some(Attempt {
                        response,
                        account,
                        lease,
                    });
                }
                Ok(Ok(response)) => {
                    let attempt = Attempt {
                        response,
                        account,
                        lease,
                    };
                    return self
                        .respond(
                            endpoint, attempt, asked, &snapshot, started, timeout, request_id,
                        )
                        .await;
                }
            }
        }
        // Every account failed: pass the last upstream answer through as it was.
        if let Some(attempt) = last_refusal {
            return self
                .respond(
                    endpoint, attempt, asked, &snapshot, started, timeout, request_id,
                )
                .await;
        }
        Err(last_failure.unwrap_or_else(RelayError::no_account))
    }

    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        endpoint: &Endpoint,
        attempt: Attempt,
        asked: Asked,
        snapshot: &Arc<Snapshot>,
        started: Instant,
        timeout: Duration,
        request_id: &HeaderValue,
    ) -> Result<Response<RelayBody>, RelayError> {
        let Attempt {
            response,
            account,
            lease,
        } = attempt;
        let fold = account.kind == AccountKind::OpenAiResponses
            && !asked.stream
            && response.status().is_success();
        let (mut head, mut body) = response.into_parts();
        let mut meter = Meter {
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            key_id: asked.key_id,
            user_id: asked.user_id,
            account_id: account.id,
            requested_model: asked.model,
            platform: endpoint.platform(),
            endpoint: endpoint.name(),
            billed: endpoint.is_billed(),
            stream: asked.stream,
            status: head.status.as_u16(),
            started,
            ttfb: None,
            snapshot: snapshot.clone(),
            price_rate: asked.price_rate,
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
        if fold {
            return fold_stream(head, first, body, meter, timeout, request_id).await;
        }
        let encoding = head
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoder = Decoder::detect(encoding, first.as_deref().unwrap_or_default());
        let content_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let tap = UsageTap::new(usage_format(endpoint), content_type);
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
        let unwrap =
            (account.kind == AccountKind::GeminiOauth).then(|| Unwrapper::new(tap.is_sse()));
        let pipeline = Pipeline {
            decoder,
            unwrap,
            tap,
        };
        let body = TapBody::new(body, first, pipeline, meter, self.idle_timeout);
        Ok(Response::from_parts(
            head,
            RelayBody::Tapped(Box::new(body)),
        ))
    }
}

impl Relay {
    /// A 429 whose headers say when the account is usable again keeps it
    /// out of this node's picks until then.
    fn note_rate_limit(&self, account: &AccountEntry, headers: &http::HeaderMap) {
        let now = chrono::Utc::now();
        if let Some(reset) =
            aiproxy_shared::ratelimit::reset_after_429(account.kind, headers, None, now)
        {
            tracing::info!(account_id = account.id, reset_at = %reset.to_rfc3339(), "account rate-limited upstream");
            self.scheduler
                .mark_limited(account.id, reset.timestamp_millis());
        }
    }

    /// The client for an account: direct, or through its proxy (one pooled
    /// client per proxy URL, made on first use).
    fn client_for(
        &self,
        account: &AccountEntry,
    ) -> Result<HttpClient, aiproxy_shared::http::ProxyError> {
        let Some(proxy) = &account.proxy_url else {
            return Ok(self.client.clone());
        };
        let mut proxied = self.proxied.lock().expect("proxy clients lock");
        if let Some(c) = proxied.get(proxy) {
            return Ok(c.clone());
        }
        let client = aiproxy_shared::http::client_via(proxy, self.connect_timeout)?;
        proxied.insert(proxy.clone(), client.clone());
        Ok(client)
    }

    /// Tells the control plane which token was refused; it refreshes the
    /// account unless that happened meanwhile. Never delays the request.
    fn report_refused_token(&self, account: &AccountEntry) {
        let Some(token) = account
            .bearer
            .as_ref()
            .and_then(|b| b.to_str().ok())
            .and_then(|b| b.strip_prefix("Bearer "))
        else {
            return;
        };
        let request = aiproxy_proto::v1::RefreshAccountRequest {
            node_id: self.node_id.clone(),
            account_id: account.id,
            refused_token_sha256: Sha256::digest(token.as_bytes()).to_vec(),
        };
        let mut control = self.control.clone();
        tokio::spawn(async move {
            if let Err(e) = control.refresh_account(request).await {
                tracing::warn!(error = %e, "could not ask the control plane for a token refresh");
            }
        });
    }
}

fn uses_oauth(account: &AccountEntry) -> bool {
    matches!(
        account.kind,
        AccountKind::ClaudeOauth
            | AccountKind::ClaudeSessionKey
            | AccountKind::OpenAiResponses
            | AccountKind::GeminiOauth
    )
}

/// Largest folded stream, as for any JSON body.
const MAX_FOLDED: usize = 64 << 20;

/// A stream answered to a client that asked for one JSON body: read it all,
/// meter it, and answer with the final `response` object.
async fn fold_stream(
    head: http::response::Parts,
    first: Option<Bytes>,
    body: Incoming,
    meter: Meter,
    timeout: Duration,
    request_id: &HeaderValue,
) -> Result<Response<RelayBody>, RelayError> {
    let rest = tokio::time::timeout(timeout, Limited::new(body, MAX_FOLDED).collect()).await;
    let rest = match rest {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) | Err(_) => {
            meter.finish(&Observed::default(), false);
            return Err(RelayError::upstream(
                "upstream stream failed before it completed",
            ));
        }
    };
    let mut raw = first.map(|b| b.to_vec()).unwrap_or_default();
    raw.extend_from_slice(&rest);
    let encoding = head
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let bytes = match Decoder::detect(encoding, &raw) {
        Some(mut d) => {
            let mut out = d
                .feed(&raw)
                .map_err(|_| RelayError::upstream("upstream body is corrupt"))?
                .to_vec();
            out.extend_from_slice(
                &d.finish()
                    .map_err(|_| RelayError::upstream("upstream body is corrupt"))?,
            );
            out
        }
        None => raw,
    };
    let mut tap = UsageTap::new(UsageFormat::OpenAiResponses, Some("text/event-stream"));
    tap.feed(&bytes);
    tap.finish();
    let terminal = terminal_response(&bytes);
    meter.finish(tap.observed(), true);
    let response =
        terminal.ok_or_else(|| RelayError::upstream("upstream stream ended without a response"))?;
    Ok(RelayBody::json_response(
        StatusCode::OK,
        &response,
        request_id,
    ))
}

/// The `response` object of the last terminal Responses event in `sse`.
fn terminal_response(sse: &[u8]) -> Option<Value> {
    sse.rsplit(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|data| serde_json::from_slice::<Value>(data.trim_ascii()).ok())
        .find(|event| {
            matches!(
                event.get("type").and_then(Value::as_str),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .and_then(|mut event| event.get_mut("response").map(Value::take))
}

fn asked(caller: &Caller<'_>, parsed: &Parsed) -> Asked {
    Asked {
        key_id: caller.key.id,
        user_id: caller.key.user_id,
        price_rate: caller.user.price_rate,
        model: parsed.model.clone(),
        stream: parsed.stream,
    }
}

fn usage_format(endpoint: &Endpoint) -> UsageFormat {
    match endpoint {
        Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => UsageFormat::Anthropic,
        Endpoint::OpenAiChat => UsageFormat::OpenAiChat,
        Endpoint::OpenAiResponses => UsageFormat::OpenAiResponses,
        Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. } => UsageFormat::Gemini,
    }
}

/// Reads the model and stream flag; for a streamed chat completion asks
/// the upstream to report usage (`stream_options.include_usage`) so the
/// stream can be billed.
fn parse(endpoint: &Endpoint, body: Bytes) -> Result<Parsed, RelayError> {
    let invalid = |e: serde_json::Error| RelayError::bad_request(format!("invalid JSON body: {e}"));
    match endpoint {
        Endpoint::GeminiGenerate { model, stream } => {
            serde_json::from_slice::<serde_json::Map<String, Value>>(&body).map_err(invalid)?;
            Ok(Parsed {
                model: model.clone(),
                stream: *stream,
                body,
            })
        }
        Endpoint::GeminiCountTokens { model } => {
            serde_json::from_slice::<serde_json::Map<String, Value>>(&body).map_err(invalid)?;
            Ok(Parsed {
                model: model.clone(),
                stream: false,
                body,
            })
        }
        _ => {
            let head: RequestHead = serde_json::from_slice(&body).map_err(invalid)?;
            let model = head
                .model
                .filter(|m| !m.is_empty())
                .ok_or_else(|| RelayError::bad_request("model is required"))?;
            let wants_usage = head
                .stream_options
                .as_ref()
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool);
            let body =
                if *endpoint == Endpoint::OpenAiChat && head.stream && wants_usage != Some(true) {
                    let mut v: Value = serde_json::from_slice(&body).map_err(invalid)?;
                    v["stream_options"] = serde_json::json!({ "include_usage": true });
                    Bytes::from(serde_json::to_vec(&v).expect("JSON serializes"))
                } else {
                    body
                };
            Ok(Parsed {
                model,
                stream: head.stream,
                body,
            })
        }
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
        "openai-organization",
        "openai-project",
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

    #[test]
    fn streamed_chat_completions_ask_for_usage() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        let parsed = parse(&Endpoint::OpenAiChat, body).unwrap();
        let v: Value = serde_json::from_slice(&parsed.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o");
        // A client that asked already, and non-streamed requests, go as sent.
        let asked = Bytes::from_static(
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(
            parse(&Endpoint::OpenAiChat, asked.clone()).unwrap().body,
            asked
        );
        let plain = Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#);
        assert_eq!(
            parse(&Endpoint::OpenAiChat, plain.clone()).unwrap().body,
            plain
        );
    }

    #[test]
    fn folded_streams_answer_with_the_terminal_response() {
        let sse = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\"}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":\"completed\"}}\n\n";
        assert_eq!(terminal_response(sse).unwrap()["status"], "completed");
        assert!(terminal_response(b"data: {\"type\":\"response.created\"}\n").is_none());
    }

    #[test]
    fn bad_bodies_are_400s() {
        for (endpoint, body) in [
            (Endpoint::AnthropicMessages, &b"{not json"[..]),
            (Endpoint::AnthropicMessages, b"[1,2]"),
            (Endpoint::OpenAiChat, b"{\"messages\":[]}"),
            (
                Endpoint::GeminiGenerate {
                    model: "m".into(),
                    stream: false,
                },
                b"\"text\"",
            ),
        ] {
            let err = parse(&endpoint, Bytes::from_static(body))
                .err()
                .expect("rejected");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
        let gemini = parse(
            &Endpoint::GeminiGenerate {
                model: "gemini-2.5-pro".into(),
                stream: true,
            },
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert_eq!(
            (gemini.model.as_str(), gemini.stream),
            ("gemini-2.5-pro", true)
        );
    }
}
