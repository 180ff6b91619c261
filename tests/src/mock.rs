//! A mock upstream that speaks Anthropic Messages, OpenAI Chat Completions
//! and Responses, and Gemini, and records what it receives.
//!
//! Behaviour is chosen by the upstream credential a request carries
//! (`x-api-key`, `Authorization: Bearer` or `x-goog-api-key`), so one mock
//! serves healthy and failing accounts at once:
//! - `mock-429`, `mock-529`, `mock-500`: that status in the platform's error
//!   shape; a 429 carries the platform's reset signal (unified-reset headers,
//!   `x-ratelimit-reset-*`, Codex `resets_at`, Gemini `RetryInfo`);
//! - `mock-gzip`: the body gzip-compressed with no `content-encoding`;
//! - `mock-429-in-N`: an Anthropic 429 whose unified reset is N seconds away;
//! - `mock-403-banned`: an Anthropic 403 `permission_error`, as for a banned account;
//! - `mock-long`: an Anthropic answer whose prompt is `LONG_INPUT` tokens (a long-context tier);
//! - `expired-token`: 401, as for an OAuth access token past its life;
//! - `mock-slow`: streams that pause two seconds after the first event;
//! - `mock-steady`: streams with 600 ms between all their events;
//! - `mock-cut`: streams that end early, cleanly, before their final event;
//! - `mock-endless`: an Anthropic stream that sends a delta every 200 ms for a minute;
//! - `mock-bomb`: a 529 whose gzip body inflates to 256 MiB;
//! - Code Assist (`/v1internal:…`) answers only for its one project, wrapped in `{"response": …}`;
//! - anything else: a normal answer.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Token counts every successful answer reports.
pub const USAGE: Usage = Usage {
    input: 25,
    output: 15,
    cache_creation: 100,
    cache_creation_1h: 60,
    cache_read: 2000,
};

/// Input tokens `mock-long` reports: above the 200k long-context threshold.
pub const LONG_INPUT: u64 = 250_000;

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_creation_1h: u64,
    pub cache_read: u64,
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Clone, Default)]
struct State {
    received: Arc<Mutex<Vec<Recorded>>>,
    latency: Duration,
    /// Streams whose reader went away before the last event.
    cancelled: Arc<std::sync::atomic::AtomicUsize>,
    onboard_calls: Arc<std::sync::atomic::AtomicUsize>,
    /// The PKCE challenge of the last claude.ai authorization.
    pkce_challenge: Arc<Mutex<Option<String>>>,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    state: State,
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        Self::with_latency(Duration::ZERO).await
    }

    /// A mock that waits `latency` before answering.
    pub async fn with_latency(latency: Duration) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = State {
            received: Arc::default(),
            latency,
            cancelled: Arc::default(),
            onboard_calls: Arc::default(),
            pkce_challenge: Arc::default(),
        };
        let serve_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = serve_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many streams were abandoned by the relay before their end.
    pub fn cancelled_streams(&self) -> usize {
        self.state
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.state.received.lock().expect("mock lock").clone()
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    state: State,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let form = headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let body: Value = if form {
        form_to_json(&body)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let cookie = headers.get("cookie").cloned().unwrap_or_default();
    let key = headers
        .get("x-api-key")
        .or_else(|| headers.get("x-goog-api-key"))
        .cloned()
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .unwrap_or_default();
    state.received.lock().expect("mock lock").push(Recorded {
        method,
        path_and_query: path_and_query.clone(),
        headers,
        body: body.clone(),
    });
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let path = path_and_query
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let reset_in: Option<u64> = key
        .strip_prefix("mock-429-in-")
        .and_then(|n| n.parse().ok());
    let reset_at = match reset_in {
        Some(secs) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                + secs
        }
        None => RESET_AT,
    };
    let failure = match key.as_str() {
        _ if reset_in.is_some() => Some(StatusCode::TOO_MANY_REQUESTS),
        "mock-403-banned" => Some(StatusCode::FORBIDDEN),
        "mock-429" => Some(StatusCode::TOO_MANY_REQUESTS),
        "mock-529" => Some(StatusCode::from_u16(529).expect("529")),
        "mock-500" => Some(StatusCode::INTERNAL_SERVER_ERROR),
        "expired-token" | "revoked-key" => Some(StatusCode::UNAUTHORIZED),
        _ => None,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let gzip = key == "mock-gzip";
    let (pause, pace) = match key.as_str() {
        "mock-slow" => (Duration::from_secs(2), Duration::from_millis(5)),
        "mock-steady" => (Duration::from_millis(600), Duration::from_millis(600)),
        _ => (Duration::from_millis(5), Duration::from_millis(5)),
    };
    // `mock-cut` ends its streams early, cleanly, before any final event.
    let cut = key == "mock-cut";
    let sse_response = |mut events: Vec<String>, gzip: bool| {
        if cut {
            events.truncate(3);
        }
        sse_response(events, gzip, pause, pace, state.cancelled.clone())
    };
    let resp = match path.as_str() {
        "/v1/messages" if key == "mock-bomb" => gzip_bomb(),
        "/v1/messages" if key == "mock-endless" => {
            let mut events = sse_events(&model);
            let delta = events[3].clone();
            events.truncate(3);
            events.extend(std::iter::repeat_n(delta, 300));
            self::sse_response(
                events,
                false,
                Duration::from_millis(200),
                Duration::from_millis(200),
                state.cancelled.clone(),
            )
        }
        "/v1/messages" => match failure {
            Some(status) => anthropic_error(status, reset_at),
            None if stream => sse_response(sse_events(&model), gzip),
            None if key == "mock-long" => {
                let mut body = message_body(&model);
                body["usage"]["input_tokens"] = json!(LONG_INPUT);
                json_response(StatusCode::OK, body)
            }
            None => json_or_gzip(message_body(&model), gzip),
        },
        "/v1/oauth/token"
            if body.get("grant_type").and_then(Value::as_str) == Some("authorization_code") =>
        {
            code_exchange(&state, &body)
        }
        // The sign-in page a person opens: the mock signs in at once and
        // shows the code (remembering the PKCE challenge it was given).
        "/oauth/authorize" => {
            let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .unwrap_or_default()
                    .to_string()
            };
            *state.pkce_challenge.lock().expect("mock lock") = Some(param("code_challenge"));
            json_response(
                StatusCode::OK,
                json!({"code": "mock-code", "state": param("state"), "client_id": param("client_id")}),
            )
        }
        "/oauth/token"
            if body.get("grant_type").and_then(Value::as_str) == Some("authorization_code") =>
        {
            let mut resp = code_exchange(&state, &body);
            if resp.status() == StatusCode::OK {
                resp = json_response(
                    StatusCode::OK,
                    json!({"access_token": "from-signin", "refresh_token": "signin-refresh", "expires_in": 864000,
                           "id_token": unsigned_jwt(&json!({"https://api.openai.com/auth": {"chatgpt_account_id": CHATGPT_ACCOUNT_ID}}))}),
                );
            }
            resp
        }
        "/v1/oauth/token" | "/oauth/token" | "/token" => token_response(&path, &body),
        "/api/organizations" if !good_session(&cookie) => {
            json_response(StatusCode::FORBIDDEN, json!({"error": "invalid session"}))
        }
        "/api/organizations" => json_response(
            StatusCode::OK,
            json!([
                {"uuid": "org-api-only", "capabilities": ["api"]},
                {"uuid": CLAUDE_ORG, "capabilities": ["chat", "claude_max"]},
            ]),
        ),
        p if p.starts_with("/v1/oauth/") && p.ends_with("/authorize") => {
            authorize(&state, &cookie, p, &body)
        }
        "/v1internal:loadCodeAssist" => json_response(
            StatusCode::OK,
            json!({"allowedTiers": [{"id": "free-tier", "isDefault": true}]}),
        ),
        "/v1internal:onboardUser" => {
            // Done on the second ask, as a long-running operation.
            let asked = state
                .onboard_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if asked == 0 {
                json_response(
                    StatusCode::OK,
                    json!({"name": "operations/onboard", "done": false}),
                )
            } else {
                json_response(
                    StatusCode::OK,
                    json!({"name": "operations/onboard", "done": true,
                           "response": {"cloudaicompanionProject": {"id": CODE_ASSIST_PROJECT, "name": "Mock"}}}),
                )
            }
        }
        p if p.starts_with("/v1internal:") => match failure {
            Some(status) => gemini_error(status),
            None if body
                .get("project")
                .is_some_and(|p| p != CODE_ASSIST_PROJECT) =>
            {
                gemini_error(StatusCode::FORBIDDEN)
            }
            None => {
                let model = body
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("gemini-2.5-pro")
                    .to_string();
                let wrap = |chunk: Value| json!({"response": chunk, "traceId": "trace-mock"});
                match &p["/v1internal:".len()..] {
                    "generateContent" => json_response(
                        StatusCode::OK,
                        wrap(gemini_chunks(&model).pop().expect("chunks")),
                    ),
                    "streamGenerateContent" => {
                        let events = gemini_chunks(&model)
                            .into_iter()
                            .map(|c| format!("data: {}\r\n\r\n", wrap(c)))
                            .collect();
                        sse_response(events, gzip)
                    }
                    "countTokens" => json_response(StatusCode::OK, json!({"totalTokens": 42})),
                    _ => gemini_error(StatusCode::NOT_FOUND),
                }
            }
        },
        "/backend-api/codex/responses" => match failure {
            Some(StatusCode::TOO_MANY_REQUESTS) => codex_limited(),
            Some(status) => openai_error(status),
            None if key_header_missing(&state, "chatgpt-account-id") => json_response(
                StatusCode::BAD_REQUEST,
                json!({"detail": "missing chatgpt-account-id"}),
            ),
            None => sse_response(responses_events(&model), gzip),
        },
        "/v1/messages/count_tokens" => json_response(StatusCode::OK, json!({"input_tokens": 42})),
        "/v1/chat/completions" => match failure {
            Some(status) => openai_error(status),
            None if stream => {
                let usage = body
                    .pointer("/stream_options/include_usage")
                    .and_then(Value::as_bool)
                    == Some(true);
                sse_response(chat_events(&model, usage), gzip)
            }
            None => json_or_gzip(chat_body(&model), gzip),
        },
        "/v1/responses" => match failure {
            Some(status) => openai_error(status),
            None if stream => sse_response(responses_events(&model), gzip),
            None => json_or_gzip(responses_body(&model), gzip),
        },
        p if p.starts_with("/v1beta/models/") => {
            let (model, action) = p["/v1beta/models/".len()..]
                .rsplit_once(':')
                .unwrap_or(("", ""));
            match (failure, action) {
                (Some(status), _) => gemini_error(status),
                (None, "generateContent") => {
                    json_or_gzip(gemini_chunks(model).pop().expect("chunks"), gzip)
                }
                (None, "streamGenerateContent") => sse_response(gemini_events(model), gzip),
                (None, "countTokens") => json_response(StatusCode::OK, json!({"totalTokens": 42})),
                _ => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}}),
                ),
            }
        }
        // The calls health checks make.
        "/v1/models"
        | "/api/oauth/usage"
        | "/v1beta/models"
        | "/backend-api/accounts/check/v4-2023-04-27" => match failure {
            Some(StatusCode::UNAUTHORIZED) => anthropic_error(StatusCode::UNAUTHORIZED, reset_at),
            Some(status) if status.is_server_error() => anthropic_error(status, reset_at),
            _ if path == "/api/oauth/usage" => json_response(
                StatusCode::OK,
                json!({
                    "five_hour": {"utilization": 12.5, "resets_at": "2030-01-01T05:00:00+00:00"},
                    "seven_day": {"utilization": 40.0, "resets_at": "2030-01-07T00:00:00+00:00"},
                }),
            ),
            _ => json_response(StatusCode::OK, json!({"data": [], "models": []})),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"type":"error","error":{"type":"not_found_error","message":"no such route"}}),
        ),
    };
    Ok(resp)
}

/// Whether the request just recorded lacks `header`.
fn key_header_missing(state: &State, header: &str) -> bool {
    let received = state.received.lock().expect("mock lock");
    received
        .last()
        .is_none_or(|r| !r.headers.contains_key(header))
}

/// The Code Assist project the mock sets up for a new Google account.
pub const CODE_ASSIST_PROJECT: &str = "mock-project-1";

fn form_to_json(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let fields: serde_json::Map<String, Value> = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.replace('+', " ").replace("%2F", "/")),
            )
        })
        .collect();
    Value::Object(fields)
}

/// The account id the mock's OpenAI id tokens carry.
pub const CHATGPT_ACCOUNT_ID: &str = "acc-mock-1";

/// Unpadded base64url.
fn b64url(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned JWT with `claims`, as the mock's token endpoint issues.
pub fn unsigned_jwt(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// OAuth refresh: `dead` is refused; any other refresh token gets a new
/// access token `fresh-<refresh token>` and a rotated refresh token.
fn token_response(path: &str, body: &Value) -> Response<MockBody> {
    let refresh = body
        .get("refresh_token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if refresh == "dead" || body.get("grant_type").and_then(Value::as_str) != Some("refresh_token")
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "Refresh token revoked"}),
        );
    }
    let mut answer = json!({
        "access_token": format!("fresh-{refresh}"),
        "refresh_token": format!("{refresh}-rotated"),
        "expires_in": 3600,
        "token_type": "Bearer",
    });
    if path == "/oauth/token" {
        answer["id_token"] = json!(unsigned_jwt(
            &json!({"https://api.openai.com/auth": {"chatgpt_account_id": CHATGPT_ACCOUNT_ID}})
        ));
    }
    json_response(StatusCode::OK, answer)
}

/// The claude.ai organization that can chat, and the sessionKey it accepts.
pub const CLAUDE_ORG: &str = "org-chat-1";
pub const GOOD_SESSION_KEY: &str = "sk-ant-sid01-good";

fn good_session(cookie: &str) -> bool {
    cookie
        .split(';')
        .any(|c| c.trim() == format!("sessionKey={GOOD_SESSION_KEY}"))
}

fn authorize(state: &State, cookie: &str, path: &str, body: &Value) -> Response<MockBody> {
    if !good_session(cookie) {
        return json_response(StatusCode::FORBIDDEN, json!({"error": "invalid session"}));
    }
    let org_ok = path == format!("/v1/oauth/{CLAUDE_ORG}/authorize")
        && body["organization_uuid"] == CLAUDE_ORG;
    if !org_ok || body["code_challenge_method"] != "S256" || body["response_type"] != "code" {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad authorize request"}),
        );
    }
    *state.pkce_challenge.lock().expect("mock lock") =
        body["code_challenge"].as_str().map(str::to_string);
    let redirect = format!(
        "{}?code=mock-code&state={}",
        body["redirect_uri"].as_str().unwrap_or_default(),
        body["state"].as_str().unwrap_or_default()
    );
    json_response(StatusCode::OK, json!({"redirect_uri": redirect}))
}

/// Checks the code and the PKCE verifier against the authorization.
fn code_exchange(state: &State, body: &Value) -> Response<MockBody> {
    use sha2::Digest;
    let verifier = body["code_verifier"].as_str().unwrap_or_default();
    let challenge = b64url(&sha2::Sha256::digest(verifier.as_bytes()));
    let expected = state.pkce_challenge.lock().expect("mock lock").clone();
    if body["code"] != "mock-code" || expected.as_deref() != Some(challenge.as_str()) {
        return json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
    }
    json_response(
        StatusCode::OK,
        json!({"access_token": "from-session", "refresh_token": "session-refresh", "expires_in": 28800}),
    )
}

fn anthropic_error(status: StatusCode, reset_at: u64) -> Response<MockBody> {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut resp = json_response(
        status,
        json!({"type":"error","error":{"type":kind,"message":format!("mock {kind}")}}),
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        let h = resp.headers_mut();
        // A near reset (`mock-429-in-N`) is announced the same way in both headers.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let retry_after = if reset_at == RESET_AT {
            30
        } else {
            reset_at.saturating_sub(now)
        };
        h.insert(
            "retry-after",
            retry_after.to_string().parse().expect("header"),
        );
        h.insert(
            "anthropic-ratelimit-unified-status",
            "rejected".parse().expect("header"),
        );
        h.insert(
            "anthropic-ratelimit-unified-reset",
            reset_at.to_string().parse().expect("header"),
        );
    }
    resp
}

/// The epoch second every mock rate limit resets at.
pub const RESET_AT: u64 = 1_900_000_000;

/// Codex's 429: the limit and its reset in the body, and in headers.
fn codex_limited() -> Response<MockBody> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": RESET_AT}}),
    );
    resp.headers_mut().insert(
        "x-codex-primary-reset-at",
        RESET_AT.to_string().parse().expect("header"),
    );
    resp
}

fn openai_error(status: StatusCode) -> Response<MockBody> {
    let mut resp = json_response(
        status,
        json!({"error":{"message":"mock error","type":"mock_error","code":status.as_u16()}}),
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        let h = resp.headers_mut();
        h.insert(
            "x-ratelimit-reset-requests",
            "6m0s".parse().expect("header"),
        );
        h.insert("x-ratelimit-reset-tokens", "1s".parse().expect("header"));
    }
    resp
}

fn gemini_error(status: StatusCode) -> Response<MockBody> {
    let mut error =
        json!({"code": status.as_u16(), "message": "mock error", "status": "RESOURCE_EXHAUSTED"});
    if status == StatusCode::TOO_MANY_REQUESTS {
        error["details"] =
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "58s"}]);
    }
    json_response(status, json!({ "error": error }))
}

/// An overloaded answer whose small gzip body inflates to 256 MiB of zeros.
fn gzip_bomb() -> Response<MockBody> {
    static BOMB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = BOMB.get_or_init(|| {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            enc.write_all(&zeros).expect("in memory");
        }
        Bytes::from(enc.finish().expect("in memory"))
    });
    let mut resp = Response::new(Full::new(body.clone()).boxed());
    *resp.status_mut() = StatusCode::from_u16(529).expect("529");
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().expect("header"));
    h.insert("content-encoding", "gzip".parse().expect("header"));
    resp
}

fn json_or_gzip(body: Value, compress: bool) -> Response<MockBody> {
    if compress {
        let mut resp =
            Response::new(Full::new(Bytes::from(gzip(body.to_string().as_bytes()))).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return resp;
    }
    json_response(StatusCode::OK, body)
}

/// Chat completions and Responses report prompt tokens including the cached ones.
pub fn openai_usage_prompt() -> u64 {
    USAGE.input + USAGE.cache_read
}

fn chat_body(model: &str) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock."}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": openai_usage_prompt(), "completion_tokens": USAGE.output,
            "total_tokens": openai_usage_prompt() + USAGE.output,
            "prompt_tokens_details": {"cached_tokens": USAGE.cache_read},
        },
    })
}

/// The chunks of a streamed chat completion; the usage chunk only when asked for.
pub fn chat_events(model: &str, with_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hello"}), Value::Null),
        chunk(json!({"content": " from the mock."}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if with_usage {
        let mut usage = chat_body(model)["usage"].clone();
        usage["completion_tokens_details"] = json!({"reasoning_tokens": 0});
        events.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}));
    }
    let mut lines: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    lines.push("data: [DONE]\n\n".to_string());
    lines
}

fn responses_body(model: &str) -> Value {
    json!({
        "id": "resp_mock", "object": "response", "created_at": 1, "status": "completed", "model": model,
        "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello from the mock.", "annotations": []}]}],
        "usage": {
            "input_tokens": openai_usage_prompt(), "input_tokens_details": {"cached_tokens": USAGE.cache_read},
            "output_tokens": USAGE.output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": openai_usage_prompt() + USAGE.output,
        },
    })
}

pub fn responses_events(model: &str) -> Vec<String> {
    let mut created = responses_body(model);
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let events = [
        (
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": created}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": "Hello"}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": " from the mock."}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "sequence_number": 3, "response": responses_body(model)}),
        ),
    ];
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

/// Gemini reports thoughts apart from candidates; both are output.
pub const GEMINI_THOUGHTS: u64 = 5;

fn gemini_chunks(model: &str) -> Vec<Value> {
    let part =
        |text: &str| json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
    let mut last = part(" from the mock.");
    last["finishReason"] = json!("STOP");
    vec![
        json!({"candidates": [part("Hello")], "usageMetadata": {"promptTokenCount": openai_usage_prompt(), "candidatesTokenCount": 1}, "modelVersion": model}),
        json!({"candidates": [last], "usageMetadata": {
            "promptTokenCount": openai_usage_prompt(), "cachedContentTokenCount": USAGE.cache_read,
            "candidatesTokenCount": USAGE.output - GEMINI_THOUGHTS, "thoughtsTokenCount": GEMINI_THOUGHTS,
            "totalTokenCount": openai_usage_prompt() + USAGE.output}, "modelVersion": model}),
    ]
}

pub fn gemini_events(model: &str) -> Vec<String> {
    gemini_chunks(model)
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect()
}

/// A fresh id for each answer, as Anthropic's `request-id` header carries one.
fn upstream_request_id() -> hyper::header::HeaderValue {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("req_mock_{n:06}").parse().expect("header")
}

fn json_response(status: StatusCode, body: Value) -> Response<MockBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    resp.headers_mut()
        .insert("request-id", upstream_request_id());
    resp
}

fn usage_json() -> Value {
    json!({
        "input_tokens": USAGE.input,
        "output_tokens": USAGE.output,
        "cache_creation_input_tokens": USAGE.cache_creation,
        "cache_read_input_tokens": USAGE.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": USAGE.cache_creation - USAGE.cache_creation_1h,
            "ephemeral_1h_input_tokens": USAGE.cache_creation_1h,
        },
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn message_body(model: &str) -> Value {
    json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the mock."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": usage_json(),
    })
}

/// The SSE events of one streamed answer, in Anthropic's order.
pub fn sse_events(model: &str) -> Vec<String> {
    let mut start_usage = usage_json();
    start_usage["output_tokens"] = json!(1);
    let events = [
        (
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_mock","type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"usage":start_usage}}),
        ),
        (
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        ("ping", json!({"type":"ping"})),
        (
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}),
        ),
        (
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" from the mock."}}),
        ),
        (
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        (
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":USAGE.output}}),
        ),
        ("message_stop", json!({"type":"message_stop"})),
    ];
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

/// Streams the events one chunk each, `pause` after the first and `pace`
/// apart after that, as a real upstream does; counts streams whose reader left early.
fn sse_response(
    events: Vec<String>,
    compress: bool,
    pause: Duration,
    pace: Duration,
    cancelled: Arc<std::sync::atomic::AtomicUsize>,
) -> Response<MockBody> {
    let body: MockBody = if compress {
        Full::new(Bytes::from(gzip(events.concat().as_bytes()))).boxed()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        tokio::spawn(async move {
            for (i, event) in events.into_iter().enumerate() {
                if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                    cancelled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                let wait = if i == 0 { pause } else { pace };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => {
                        cancelled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        "text/event-stream; charset=utf-8".parse().expect("header"),
    );
    resp.headers_mut()
        .insert("request-id", upstream_request_id());
    resp
}
