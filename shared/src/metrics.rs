//! The metrics listener: `GET /metrics` in the Prometheus text format, on a
//! port of its own, for whatever the process registered.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use std::time::Duration;

use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets for a whole request, seconds: 5 ms to about 5 minutes
/// (an LLM answer may stream that long).
pub fn request_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.5, 12)
}

/// Histogram buckets for short steps (a first byte, a store call), seconds:
/// 100 µs to about 100 s.
pub fn step_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 11)
}

/// An HTTP status as the label value metrics use (`2xx`, `4xx`, …).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Everything registered, as the scrape answer.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    text
}

fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render(registry)),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Scrapes come from a few Prometheus servers: a small cap and the usual
/// read deadlines keep the port from holding what the relay needs.
const LIMITS: crate::serve::Limits = crate::serve::Limits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(10),
    keepalive_timeout: Duration::from_secs(75),
};

/// Serves `registry` on `listener` until `cancel`, through the same server
/// loop as the other ports (connection cap, deadlines, descriptor reserve).
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, cancel: CancellationToken) {
    let drain = crate::serve::serve(
        listener,
        LIMITS,
        move |_peer| {
            let registry = registry.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = answer(&registry, &req);
                async move { Ok::<_, Infallible>(answer) }
            })
        },
        cancel,
    )
    .await;
    // A scrape in flight at shutdown is worth nothing: close at once.
    drain.finish(Duration::ZERO, |_| {}).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_classes_cover_every_status() {
        for (status, class) in [
            (101, "1xx"),
            (204, "2xx"),
            (304, "3xx"),
            (429, "4xx"),
            (529, "5xx"),
        ] {
            assert_eq!(super::status_class(status), class);
        }
    }
}
