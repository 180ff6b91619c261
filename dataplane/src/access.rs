//! The access log: one structured line per request on the relay's
//! endpoints, under the `aiproxy::access` target (`AIPROXY_ACCESS_LOG=false`
//! turns it off; `RUST_LOG` filters it like any target).
use std::time::Duration;

use aiproxy_shared::pricing::TokenUsage;

/// What one line says; ids are 0 and texts empty where not known (a
/// refusal before the key was found has no key id).
pub struct Line<'a> {
    pub request_id: &'a str,
    pub user_id: i64,
    pub key_id: i64,
    pub account_id: i64,
    pub endpoint: &'static str,
    pub model: &'a str,
    pub status: u16,
    pub error_class: &'a str,
    pub duration: Duration,
    pub first_byte: Option<Duration>,
    pub stream: bool,
    pub tokens: TokenUsage,
    /// The upstream's own id for the request; empty when none.
    pub upstream_request_id: &'a str,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Line<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "aiproxy::access",
            request_id = self.request_id,
            user_id = self.user_id,
            key_id = self.key_id,
            account_id = self.account_id,
            endpoint = self.endpoint,
            model = self.model,
            status = self.status,
            error_class = self.error_class,
            duration_ms = millis(self.duration),
            first_byte_ms = self.first_byte.map(millis),
            stream = self.stream,
            input_tokens = self.tokens.input,
            output_tokens = self.tokens.output,
            cache_creation_tokens = self.tokens.cache_creation,
            cache_read_tokens = self.tokens.cache_read,
            upstream_request_id = self.upstream_request_id,
            "request"
        );
    }
}
