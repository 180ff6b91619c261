//! Turns what a request used into one usage record, exactly once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiproxy_proto::v1 as pb;
use aiproxy_shared::domain::{Platform, UsageSource};
use aiproxy_shared::pricing::user_cost;
use rust_decimal::Decimal;

use crate::scheduler::Lease;
use crate::snapshot::{KeyEntry, Snapshot};
use crate::spending::Spending;
use crate::tap::Observed;
use crate::usage::UsageSink;

/// Everything known about a request before its response ends.
pub struct Meter {
    pub request_id: String,
    pub key_id: i64,
    pub user_id: i64,
    pub account_id: i64,
    pub requested_model: String,
    pub platform: Platform,
    pub endpoint: &'static str,
    /// False for endpoints that are answered but never billed (token counting).
    pub billed: bool,
    pub stream: bool,
    pub status: u16,
    pub started: Instant,
    pub ttfb: Option<Duration>,
    pub snapshot: Arc<Snapshot>,
    pub price_rate: Decimal,
    pub sink: UsageSink,
    /// Held until the response ends, then released.
    pub lease: Option<Lease>,
    /// The request's count against its key and user on this node.
    pub admitted: Option<crate::admission::Admitted>,
    pub error_class: String,
    /// The sticky session the request belongs to; empty when none.
    pub session_hash: String,
    /// The package admitted against; 0 when none.
    pub package_id: i64,
    pub key: Arc<KeyEntry>,
    pub spending: Arc<Spending>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One access-log line when the request ends.
    pub access_log: bool,
    /// The upstream's own id for the request, from its answer's headers.
    pub upstream_request_id: String,
    /// The request's trace span, ended with the meter.
    pub span: tracing::Span,
}

/// Longest upstream request id kept.
const MAX_UPSTREAM_ID: usize = 128;

/// The upstream's id for a request as its answer's headers name it
/// (Anthropic `request-id`, OpenAI `x-request-id`); visible ASCII only.
pub fn upstream_request_id(headers: &http::HeaderMap) -> String {
    ["request-id", "x-request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(clean_id)
        .unwrap_or_default()
}

fn clean_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_UPSTREAM_ID)
        .collect()
}

impl Meter {
    /// Emits the record. `ended` is false when the client went away first.
    pub fn finish(mut self, observed: &Observed, ended: bool) {
        let duration = self.started.elapsed();
        // A Responses id opens a session for the request that will name it
        // as `previous_response_id`, on this account.
        if let (Some(id), Some(lease)) = (&observed.response_id, self.lease.as_mut()) {
            lease.bind_session(
                crate::session::response_session(id),
                self.snapshot.settings.session_ttl,
            );
        }
        drop(self.lease.take());
        drop(self.admitted.take());
        let mut error_class = std::mem::take(&mut self.error_class);
        // An error the upstream named in its own words is logged as such
        // but counted as one class: metrics take no free-form values.
        let mut counted_class = None;
        if error_class.is_empty() {
            if let Some(e) = &observed.error {
                error_class = e.clone();
                counted_class = Some("upstream_error");
            } else if !ended {
                error_class = "client_disconnected".into();
            } else if !observed.complete {
                error_class = "upstream_incomplete".into();
            }
        }
        self.span
            .record("account_id", self.account_id)
            .record("status", self.status)
            .record("error_class", counted_class.unwrap_or(&error_class));
        self.metrics.finished(&crate::metrics::Finished {
            endpoint: self.endpoint,
            platform: self.platform.as_str(),
            status: self.status,
            error_class: counted_class.unwrap_or(&error_class),
            duration,
            first_byte: self.ttfb,
        });
        if !self.billed {
            if self.access_log {
                self.access_line(
                    &self.requested_model,
                    &error_class,
                    duration,
                    Default::default(),
                    &self.upstream_request_id,
                )
                .emit();
            }
            return;
        }
        // Counts are final only once the response reached its natural end.
        let source = if observed.usage_seen && observed.complete {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        let model = observed
            .model
            .clone()
            .unwrap_or_else(|| self.requested_model.clone());
        let usage = observed.usage;
        let price = self
            .snapshot
            .prices
            .lookup(&model)
            .or_else(|| self.snapshot.prices.lookup(&self.requested_model));
        let (upstream_cost, price_version) = match price {
            Some(p) => (p.cost(&usage), p.version),
            None => {
                if usage.total() > 0 {
                    tracing::warn!(model = %model, request_id = %self.request_id, "no price for model; billed at 0");
                }
                (Decimal::ZERO, 0)
            }
        };
        self.metrics.tokens(
            self.snapshot
                .prices
                .priced_name(&model)
                .or_else(|| self.snapshot.prices.priced_name(&self.requested_model)),
            &usage,
        );
        let cost = user_cost(upstream_cost, self.price_rate);
        self.spending.add(
            &self.snapshot,
            self.package_id,
            &self.key,
            cost,
            chrono::Utc::now(),
        );
        let record = pb::UsageRecord {
            request_id: self.request_id.clone(),
            user_id: self.user_id,
            api_key_id: self.key_id,
            account_id: self.account_id,
            model,
            platform: self.platform.as_str().to_string(),
            endpoint: self.endpoint.to_string(),
            status_code: u32::from(self.status),
            input_tokens: usage.input,
            output_tokens: usage.output,
            cache_creation_tokens: usage.cache_creation,
            cache_read_tokens: usage.cache_read,
            cache_creation_1h_tokens: usage.cache_creation_1h,
            upstream_cost: upstream_cost.to_string(),
            cost: cost.to_string(),
            duration_ms: duration.as_millis().min(u32::MAX as u128) as u32,
            ttfb_ms: self
                .ttfb
                .map(|d| d.as_millis().min(u32::MAX as u128) as u32)
                .unwrap_or(0),
            stream: self.stream,
            session_hash: self.session_hash.clone(),
            error_class,
            usage_source: source.as_str().to_string(),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            price_version,
            package_id: self.package_id,
            // The sink stamps the journal's node.
            node_id: String::new(),
            upstream_request_id: if self.upstream_request_id.is_empty() {
                observed
                    .upstream_id
                    .as_deref()
                    .map(clean_id)
                    .unwrap_or_default()
            } else {
                std::mem::take(&mut self.upstream_request_id)
            },
        };
        self.span
            .record("input_tokens", usage.input)
            .record("output_tokens", usage.output)
            .record("cache_creation_tokens", usage.cache_creation)
            .record("cache_read_tokens", usage.cache_read)
            .record("upstream_request_id", record.upstream_request_id.as_str());
        if self.access_log {
            self.access_line(
                &record.model,
                &record.error_class,
                duration,
                usage,
                &record.upstream_request_id,
            )
            .emit();
        }
        self.sink.report(record);
    }

    fn access_line<'a>(
        &'a self,
        model: &'a str,
        error_class: &'a str,
        duration: Duration,
        tokens: aiproxy_shared::pricing::TokenUsage,
        upstream_request_id: &'a str,
    ) -> crate::access::Line<'a> {
        crate::access::Line {
            request_id: &self.request_id,
            user_id: self.user_id,
            key_id: self.key_id,
            account_id: self.account_id,
            endpoint: self.endpoint,
            model,
            status: self.status,
            error_class,
            duration,
            first_byte: self.ttfb,
            stream: self.stream,
            tokens,
            upstream_request_id,
        }
    }
}
