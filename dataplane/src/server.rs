//! The client-facing HTTP server: connection limits, routing, and the drain
//! a load balancer can follow.
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aiproxy_shared::serve::Limits;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::answer::text;
use crate::body::RelayBody;
use crate::errors::{ErrorShape, RelayError};
use crate::models::{self, Listing};
use crate::relay::Relay;
use crate::routes::{self, Route};

/// How the proxy port treats connections, and how it stops.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub limits: Limits,
    /// After shutdown begins, `/readyz` fails and connections are still
    /// accepted this long, so a load balancer stops sending first.
    pub drain_delay: Duration,
    /// Then in-flight requests get this long before they are cut.
    pub drain_grace: Duration,
    /// `/readyz` fails after this long without a word from the control
    /// plane; `None`: never.
    pub max_snapshot_age: Option<Duration>,
}

/// Serves until `cancel`, then drains: `/readyz` answers 503 at once, the
/// listener stays open for `drain_delay`, in-flight requests get
/// `drain_grace`, and what is still running then is cut and recorded as
/// `error_class=shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    settings: ServerSettings,
    cancel: CancellationToken,
) {
    let stop = CancellationToken::new();
    let service_relay = relay.clone();
    let accepting = relay.tasks.spawn(aiproxy_shared::serve::serve(
        listener,
        settings.limits.clone(),
        move |_peer| {
            let relay = service_relay.clone();
            service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, Infallible>(route(&relay, req).await) }
            })
        },
        stop.clone(),
    ));
    cancel.cancelled().await;
    relay.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        delay_secs = settings.drain_delay.as_secs_f64(),
        "draining: /readyz now fails; still accepting until the load balancer notices"
    );
    tokio::time::sleep(settings.drain_delay).await;
    stop.cancel();
    let Ok(drain) = accepting.await else {
        return;
    };
    tracing::info!(
        grace_secs = settings.drain_grace.as_secs_f64(),
        "listener closed; waiting for requests in flight"
    );
    let clean = drain
        .finish(settings.drain_grace, |left| {
            relay.cutting.store(true, Ordering::Relaxed);
            tracing::warn!(
                connections = left,
                "drain grace over; cutting what is still in flight"
            );
        })
        .await;
    if clean {
        tracing::info!("proxy connections drained");
    }
}

async fn route(relay: &Relay, req: Request<Incoming>) -> Response<RelayBody> {
    let request_id = request_id();
    let answer = match routes::route(req.method(), req.uri().path()) {
        Route::Relay(endpoint) => return relay.handle(endpoint, req, &request_id).await,
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
        Route::Readyz => readiness(relay, &request_id),
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
    };
    answer.map(RelayBody::full)
}

/// Ready while the node can serve and bill: a snapshot (heard from the
/// control plane recently enough, when a limit is set), a usable journal,
/// and no drain under way; the answer says why not.
fn readiness(relay: &Relay, request_id: &HeaderValue) -> Response<Bytes> {
    let unready = |why: &str| text(StatusCode::SERVICE_UNAVAILABLE, why, request_id);
    if relay.draining.load(Ordering::Relaxed) {
        return unready("not ready: draining for shutdown");
    }
    match relay.sink.availability() {
        Ok(()) => {}
        Err(crate::usage::Unavailable::Full) => return unready("not ready: usage journal full"),
        Err(crate::usage::Unavailable::Failing) => {
            return unready("not ready: usage journal unavailable");
        }
    }
    let silence = relay.snapshot.silence();
    if let (Some(limit), Some(silence)) = (relay.max_snapshot_age, silence)
        && silence > limit
        && relay.snapshot.load().is_some()
    {
        return unready(&format!(
            "not ready: no word from the control plane for {} s (limit {} s)",
            silence.as_secs(),
            limit.as_secs()
        ));
    }
    match relay.snapshot.load() {
        Some(s) => text(
            StatusCode::OK,
            &format!("ready: snapshot version {}", s.version),
            request_id,
        ),
        None => unready("not ready: no snapshot yet"),
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
        let mut prefix = [0u8; 4];
        let mut counter = [0u8; 8];
        // Ids stay unique without randomness (time and a counter); it only
        // keeps two nodes started in the same millisecond apart.
        if getrandom::getrandom(&mut prefix)
            .and_then(|()| getrandom::getrandom(&mut counter))
            .is_err()
        {
            tracing::warn!("operating system RNG unavailable: request ids use time and a counter");
        }
        (u32::from_be_bytes(prefix), u64::from_be_bytes(counter))
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
    let text: &str = id.hyphenated().encode_lower(&mut buf);
    // Hex digits and hyphens only.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
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
