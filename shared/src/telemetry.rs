//! Logging setup: structured `tracing` output, JSON or human-readable.
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
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
