//! The client-facing HTTP server: accept loop, routing, graceful drain.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::RelayBody;
use crate::errors::{ErrorShape, RelayError};
use crate::models::{self, Listing};
use crate::relay::Relay;
use crate::routes::{self, Route};

/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

pub async fn serve(listener: TcpListener, relay: Arc<Relay>, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let relay = relay.clone();
        let service = service_fn(move |req| {
            let relay = relay.clone();
            async move { Ok::<_, Infallible>(route(&relay, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("proxy connections drained"),
        _ = tokio::time::sleep(DRAIN_GRACE) => tracing::warn!("proxy drain grace period over; closing connections"),
    }
}

async fn route(relay: &Relay, req: Request<Incoming>) -> Response<RelayBody> {
    let request_id = request_id();
    match routes::route(req.method(), req.uri().path()) {
        Route::Relay(endpoint) => relay.handle(endpoint, req, &request_id).await,
        Route::ListModels => models::list(
            &relay.snapshot,
            Listing::V1,
            req.headers(),
            req.uri().query(),
            &request_id,
        ),
        Route::GeminiListModels => models::list(
            &relay.snapshot,
            Listing::Gemini,
            req.headers(),
            req.uri().query(),
            &request_id,
        ),
        Route::Healthz => text(StatusCode::OK, "ok", &request_id),
        Route::Readyz => match relay.snapshot.load() {
            Some(s) => text(
                StatusCode::OK,
                &format!("ready: snapshot version {}", s.version),
                &request_id,
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no snapshot yet",
                &request_id,
            ),
        },
        Route::NotFound => {
            let path = req.uri().path();
            let shape = if path.starts_with("/v1beta") {
                ErrorShape::Google
            } else if req.headers().contains_key("anthropic-version") {
                ErrorShape::Anthropic
            } else {
                ErrorShape::OpenAi
            };
            RelayError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {} {}", req.method(), path),
            )
            .into_response(shape, &request_id)
        }
    }
}

/// A UUIDv7 request id: the time, then random bits drawn once per process
/// and a counter from a random start, so no request waits on the OS's RNG.
fn request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<(u32, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, first) = *START.get_or_init(|| {
        let mut seed = [0u8; 12];
        getrandom::getrandom(&mut seed).expect("operating system RNG unavailable");
        let (prefix, counter) = seed.split_at(4);
        (
            u32::from_be_bytes(prefix.try_into().expect("4 bytes")),
            u64::from_be_bytes(counter.try_into().expect("8 bytes")),
        )
    });
    let counter = first.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut random = [0u8; 10];
    random[..4].copy_from_slice(&prefix.to_be_bytes());
    random[4..].copy_from_slice(&counter.to_be_bytes()[2..]);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).expect("uuid is a header value")
}

fn text(status: StatusCode, body: &str, request_id: &HeaderValue) -> Response<RelayBody> {
    let mut resp = Response::new(RelayBody::full(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-request-id", request_id.clone());
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_distinct_v7_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| super::request_id().to_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
        }
    }
}
