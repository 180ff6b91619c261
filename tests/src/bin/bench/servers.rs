//! The two servers the benchmark measures against: a fast upstream that
//! answers like Anthropic with fixed bodies, and the floor, a bare hyper
//! reverse proxy with a keep-alive pool and `TCP_NODELAY`.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

/// Upstream keys and what they answer (the relay sends the account's key).
pub const KEY_FAST: &str = "bench-fast";
/// Streams of `STREAM_CHUNKS` events `STREAM_GAP` apart.
pub const KEY_STREAM: &str = "bench-stream";
/// Streams that send one event and then stay open until the client leaves.
pub const KEY_HOLD: &str = "bench-hold";
pub const STREAM_CHUNKS: usize = 10;
pub const STREAM_GAP: Duration = Duration::from_millis(5);

const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from the bench upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":15}}"#;

fn events() -> Vec<Bytes> {
    let mut out = vec![Bytes::from_static(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
    )];
    for _ in 0..STREAM_CHUNKS - 2 {
        out.push(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"tok \"}}\n\n",
        ));
    }
    out.push(Bytes::from_static(
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    out
}

fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

async fn upstream(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    if !stream {
        let mut resp = Response::new(full(Bytes::from_static(MESSAGE.as_bytes())));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return Ok(resp);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    let hold = key == KEY_HOLD;
    tokio::spawn(async move {
        for (i, event) in events().into_iter().enumerate() {
            if i > 0 {
                if hold {
                    // Idle until the reader goes away.
                    tx.closed().await;
                    return;
                }
                tokio::time::sleep(STREAM_GAP).await;
            }
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    let mut resp =
        Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed());
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    Ok(resp)
}

/// Serves the upstream on `listener` until the process ends.
pub async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(upstream))
                .await;
        });
    }
}

/// The floor: forwards every request to `target` as it came, streaming both ways.
pub async fn serve_bare_proxy(listener: TcpListener, target: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                        .to_string();
                    *req.uri_mut() = format!("http://{target}{path}").parse().expect("uri");
                    req.headers_mut().remove("host");
                    match client.request(req).await {
                        Ok(resp) => Ok::<_, Infallible>(resp.map(|b| b.boxed())),
                        Err(_) => {
                            let mut resp = Response::new(full(Bytes::from_static(b"bad gateway")));
                            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            Ok(resp)
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
