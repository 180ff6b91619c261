//! An Anthropic-compatible mock upstream that records what it receives.
//!
//! Behaviour is chosen by the upstream key a request carries, so one mock
//! serves healthy and failing accounts at once:
//! - `mock-429`, `mock-529`, `mock-500`: that status, Anthropic error shape;
//! - `mock-gzip`: the body gzip-compressed with no `content-encoding`;
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
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = headers.get("x-api-key").cloned().unwrap_or_default();
    state.received.lock().expect("mock lock").push(Recorded {
        method,
        path_and_query: path_and_query.clone(),
        headers,
        body: body.clone(),
    });
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if !path_and_query.starts_with("/v1/messages") {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            json!({"type":"error","error":{"type":"not_found_error","message":"no such route"}}),
        ));
    }
    let failure = match key.as_str() {
        "mock-429" => Some((StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")),
        "mock-529" => Some((StatusCode::from_u16(529).expect("529"), "overloaded_error")),
        "mock-500" => Some((StatusCode::INTERNAL_SERVER_ERROR, "api_error")),
        _ => None,
    };
    if let Some((status, kind)) = failure {
        return Ok(json_response(
            status,
            json!({"type":"error","error":{"type":kind,"message":format!("mock {kind}")}}),
        ));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let gzip = key == "mock-gzip";
    Ok(if stream {
        sse_response(&model, gzip)
    } else {
        message_response(&model, gzip)
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<MockBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    resp.headers_mut()
        .insert("request-id", "req_mock".parse().expect("header"));
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

fn message_response(model: &str, compress: bool) -> Response<MockBody> {
    let body = json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the mock."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": usage_json(),
    });
    if compress {
        let mut resp =
            Response::new(Full::new(Bytes::from(gzip(body.to_string().as_bytes()))).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return resp;
    }
    json_response(StatusCode::OK, body)
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

/// Streams the events one chunk each, a little apart, as a real upstream does.
fn sse_response(model: &str, compress: bool) -> Response<MockBody> {
    let events = sse_events(model);
    let body: MockBody = if compress {
        Full::new(Bytes::from(gzip(events.concat().as_bytes()))).boxed()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        tokio::spawn(async move {
            for event in events {
                if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
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
        .insert("request-id", "req_mock".parse().expect("header"));
    resp
}
