//! The data plane's Prometheus metrics: what it relayed and refused, and,
//! read at each scrape, what it holds (snapshot, journal, accounts, store).
//! Every label takes a small, fixed set of values: never a user, key,
//! request or free-form upstream text.
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use aiproxy_shared::state::{MarkKind, StateStore};
use aiproxy_shared::sync::LockExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::snapshot::SnapshotHolder;
use crate::usage::Journal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    platform: &'static str,
    status_class: &'static str,
    /// Empty when the request succeeded.
    error_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    kind: &'static str,
    /// A model of the price table, or `other`.
    model: String,
}

fn request_histogram() -> Histogram {
    Histogram::new(aiproxy_shared::metrics::request_buckets())
}

fn step_histogram() -> Histogram {
    Histogram::new(aiproxy_shared::metrics::step_buckets())
}

/// What a finished request reports.
pub struct Finished<'a> {
    pub endpoint: &'static str,
    pub platform: &'static str,
    pub status: u16,
    /// Ours (bounded); an error the upstream named in its own words counts
    /// as `upstream_error`.
    pub error_class: &'a str,
    pub duration: Duration,
    pub first_byte: Option<Duration>,
}

/// The counters and histograms requests update; with metrics off
/// (`AIPROXY_METRICS_LISTEN=off`) nothing is recorded.
pub struct Metrics {
    enabled: bool,
    requests: Family<RequestLabels, Counter>,
    duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    first_byte: Family<PlatformLabels, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    failovers: Family<PlatformLabels, Counter>,
    store_calls: Family<CallLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            requests: Family::default(),
            duration: Family::new_with_constructor(request_histogram),
            first_byte: Family::new_with_constructor(step_histogram),
            tokens: Family::default(),
            failovers: Family::default(),
            store_calls: Family::new_with_constructor(step_histogram),
        }
    }
}

impl Metrics {
    /// Whether anything is recorded (and so worth gathering for a scrape).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Metrics that record nothing: no listener would ever read them.
    pub fn off() -> Self {
        Metrics {
            enabled: false,
            ..Self::default()
        }
    }

    /// Registers the families (they stay shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests on the relay's endpoints, by outcome",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to the end of its answer",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "upstream_first_byte",
            "Time from a request's arrival to the upstream's first byte",
            Unit::Seconds,
            self.first_byte.clone(),
        );
        registry.register(
            "tokens",
            "Tokens billed, by kind and model",
            self.tokens.clone(),
        );
        registry.register(
            "failovers",
            "Upstream attempts that failed over to another account",
            self.failovers.clone(),
        );
        registry.register_with_unit(
            "state_store_call",
            "Time of each call to the state store (Redis, or this node's memory)",
            Unit::Seconds,
            self.store_calls.clone(),
        );
    }

    /// One state-store call of kind `call` took `took`.
    pub fn store_call(&self, call: &'static str, took: Duration) {
        if !self.enabled {
            return;
        }
        self.store_calls
            .get_or_create(&CallLabels { call })
            .observe(took.as_secs_f64());
    }

    pub fn finished(&self, done: &Finished<'_>) {
        if !self.enabled {
            return;
        }
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: done.endpoint,
                platform: done.platform,
                status_class: aiproxy_shared::metrics::status_class(done.status),
                error_class: done.error_class.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&EndpointLabels {
                endpoint: done.endpoint,
            })
            .observe(done.duration.as_secs_f64());
        if let Some(first) = done.first_byte {
            self.first_byte
                .get_or_create(&PlatformLabels {
                    platform: done.platform,
                })
                .observe(first.as_secs_f64());
        }
    }

    /// Tokens of one request; `model` is a price-table name or `None`.
    pub fn tokens(&self, model: Option<&str>, usage: &aiproxy_shared::pricing::TokenUsage) {
        if !self.enabled {
            return;
        }
        let model = model.unwrap_or("other");
        for (kind, count) in [
            ("input", usage.input),
            ("output", usage.output),
            ("cache_creation", usage.cache_creation),
            ("cache_creation_1h", usage.cache_creation_1h),
            ("cache_read", usage.cache_read),
        ] {
            if count > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        kind,
                        model: model.to_string(),
                    })
                    .inc_by(count);
            }
        }
    }

    pub fn failover(&self, platform: &'static str) {
        if !self.enabled {
            return;
        }
        self.failovers
            .get_or_create(&PlatformLabels { platform })
            .inc();
    }
}

/// What the node holds, read at each scrape.
#[derive(Clone)]
pub struct Holdings {
    /// Leases held and requests waiting, from the scheduler.
    pub(crate) scheduling: Arc<dyn Fn() -> (usize, u64) + Send + Sync>,
    pub(crate) snapshot: Arc<SnapshotHolder>,
    pub(crate) journal: Arc<Journal>,
    pub(crate) state: Arc<dyn StateStore>,
    /// Accounts marked in the state store, as last read.
    pub(crate) marks: Arc<std::sync::Mutex<HashMap<i64, MarkKind>>>,
}

/// How often the marks are read for the accounts gauge.
const MARKS_EVERY: Duration = Duration::from_secs(15);

/// Keeps `holdings.marks` current (one state-store read per interval, not
/// one per scrape), until cancelled.
pub async fn watch_marks(holdings: Holdings, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(MARKS_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        match holdings.state.marks(now_ms).await {
            Ok(marks) => {
                let mut by_account = HashMap::new();
                for mark in marks {
                    // A rate limit says more than a passing failure.
                    let kind = by_account.entry(mark.account_id).or_insert(mark.kind);
                    if mark.kind == MarkKind::RateLimited {
                        *kind = MarkKind::RateLimited;
                    }
                }
                *holdings.marks.locked() = by_account;
            }
            Err(e) => tracing::debug!(error = %e, "account marks not read for the metrics"),
        }
    }
}

impl std::fmt::Debug for Holdings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holdings")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account_type: &'static str,
    state: &'static str,
}

impl Collector for Holdings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "usage_journal_pending",
            "Usage on disk not yet delivered to the control plane",
            Some(&Unit::Bytes),
            self.journal.pending_bytes() as f64,
        )?;
        let (leases, waiting) = (self.scheduling)();
        gauge(
            &mut encoder,
            "leases_in_use",
            "Account leases this node's requests hold (requests in flight upstream)",
            None,
            leases as f64,
        )?;
        gauge(
            &mut encoder,
            "requests_waiting",
            "Requests waiting for a free account",
            None,
            waiting as f64,
        )?;
        gauge(
            &mut encoder,
            "state_store_fallback",
            "1 while Redis is away and scheduling state is this node's alone",
            None,
            f64::from(u8::from(self.state.degraded())),
        )?;
        if let Some(silence) = self.snapshot.silence() {
            gauge(
                &mut encoder,
                "control_plane_silence",
                "Time since the control plane last spoke (snapshot, spending, heartbeat)",
                Some(&Unit::Seconds),
                silence.as_secs_f64(),
            )?;
        }
        let Some(snapshot) = self.snapshot.load() else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "snapshot_version",
            "Version of the snapshot this node serves from",
            None,
            snapshot.version as f64,
        )?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let marks = self.marks.locked().clone();
        let mut counts: std::collections::BTreeMap<(&'static str, &'static str), u64> =
            Default::default();
        for account in &snapshot.accounts {
            let mark = marks.get(&account.id);
            let state = if !account.schedulable {
                "unschedulable"
            } else if account.rate_limit_reset_at_ms > now_ms
                || mark == Some(&MarkKind::RateLimited)
            {
                "rate_limited"
            } else if mark == Some(&MarkKind::Unavailable) {
                "unavailable"
            } else {
                "usable"
            };
            *counts.entry((account.kind.as_str(), state)).or_default() += 1;
        }
        let mut metric = encoder.encode_descriptor(
            "accounts",
            "Accounts in this node's snapshot, by type and state",
            None,
            MetricType::Gauge,
        )?;
        for ((account_type, state), count) in counts {
            let labels = AccountLabels {
                account_type,
                state,
            };
            ConstGauge::new(count as f64).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(metrics: &Metrics) -> String {
        let mut registry = Registry::with_prefix("aiproxy");
        metrics.register(&mut registry);
        metrics.finished(&Finished {
            endpoint: "/v1/messages",
            platform: "anthropic",
            status: 200,
            error_class: "",
            duration: Duration::from_millis(3),
            first_byte: Some(Duration::from_millis(1)),
        });
        metrics.failover("anthropic");
        aiproxy_shared::metrics::render(&registry)
    }

    #[test]
    fn metrics_off_record_nothing() {
        let on = served(&Metrics::default());
        assert!(on.contains("aiproxy_requests_total{"), "{on}");
        assert!(on.contains("aiproxy_failovers_total{"), "{on}");
        let off = served(&Metrics::off());
        assert!(!off.contains("aiproxy_requests_total{"), "{off}");
        assert!(!off.contains("aiproxy_failovers_total{"), "{off}");
    }
}
