//! Logging and tracing setup: structured `tracing` output, JSON or
//! human-readable, and OpenTelemetry traces over OTLP/gRPC when the standard
//! `OTEL_EXPORTER_OTLP_*` variables name a collector (off otherwise).
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Whether spans are exported: code creates its spans only then, so
/// tracing off costs a load of this flag.
static TRACING: AtomicBool = AtomicBool::new(false);

pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// A span when traces are exported, else a disabled one (no cost).
#[macro_export]
macro_rules! traced_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::tracing_on() {
            tracing::info_span!($($arg)*)
        } else {
            tracing::Span::none()
        }
    };
}

/// Keeps the trace exporter; dropping it sends what is still buffered.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("aiproxy: traces not all exported at exit: {e}");
        }
    }
}

/// Whether traces are exported, from the standard variables; an error for
/// an exporter or protocol this build does not speak.
fn otlp_wanted(get: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    if get("OTEL_TRACES_EXPORTER").is_some_and(|e| e.trim() == "none")
        || get("OTEL_SDK_DISABLED").is_some_and(|d| d.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(false);
    }
    if let Some(exporter) = get("OTEL_TRACES_EXPORTER")
        && exporter.trim() != "otlp"
    {
        return Err(format!(
            "OTEL_TRACES_EXPORTER={exporter} is not supported: otlp or none"
        ));
    }
    let protocol =
        get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol
        && protocol.trim() != "grpc"
    {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: traces go over OTLP/gRPC (grpc)"
        ));
    }
    Ok(get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
}

/// Installs the global subscriber (`RUST_LOG` overrides the default
/// filter) and, when OTLP is configured, the trace exporter for `service`
/// (`OTEL_SERVICE_NAME` overrides it). Call it inside the Tokio runtime
/// that lives as long as the process: the exporter's gRPC client runs on it.
pub fn init(format: LogFormat, service: &str) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let mut provider = None;
    let otel = if otlp_wanted(|name| std::env::var(name).ok())? {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
        let sdk = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(name)
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let tracer = sdk.tracer("aiproxy");
        provider = Some(sdk);
        TRACING.store(true, Ordering::Relaxed);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    } else {
        None
    };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(location = %location, message = %redact_panic(&payload), "panic");
    }));
    Ok(Telemetry { provider })
}

/// Makes `span` continue the trace a W3C `traceparent` header names.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !tracing_on() || !headers.contains_key("traceparent") {
        return;
    }
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// A panic message without the text it quotes: the standard library quotes
/// a string it failed to slice (`… of `<the string>``), and that string may
/// be a credential.
pub fn redact_panic(message: &str) -> String {
    match message.find(" of `") {
        Some(at) => format!("{} of <redacted>", &message[..at]),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn traces_are_on_only_for_an_otlp_grpc_collector() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }
        }
        assert_eq!(super::otlp_wanted(env(&[])), Ok(false));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert_eq!(super::otlp_wanted(env(&[endpoint])), Ok(true));
        assert_eq!(
            super::otlp_wanted(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4317"
            )])),
            Ok(true)
        );
        assert_eq!(
            super::otlp_wanted(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])),
            Ok(false)
        );
        assert_eq!(
            super::otlp_wanted(env(&[endpoint, ("OTEL_SDK_DISABLED", "true")])),
            Ok(false)
        );
        assert!(
            super::otlp_wanted(env(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            ]))
            .is_err()
        );
        assert!(super::otlp_wanted(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")])).is_err());
    }

    #[test]
    fn a_slicing_panic_does_not_carry_the_string() {
        let secret = String::from("sk-ant-\u{e9}\u{e9}\u{e9}-secret-value");
        let caught = std::panic::catch_unwind(|| {
            let at = "sk-ant-".len() + 1;
            secret[at..].to_string()
        });
        let payload = caught.unwrap_err();
        let message = payload.downcast_ref::<String>().unwrap();
        assert!(message.contains("secret-value"), "{message}");
        let redacted = super::redact_panic(message);
        assert!(!redacted.contains("secret"), "{redacted}");
        assert!(redacted.contains("char boundary"), "{redacted}");
    }
}
