//! The control plane's Prometheus metrics: usage ingestion, snapshots,
//! background jobs and admin requests, and, read at each scrape, the nodes
//! it serves and its database pool. Labels take small, fixed sets of values
//! (a node's id is the one an operator chose for it).
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::grpc::NodeRegistry;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    /// The route's template (`/api/v1/users/{id}`), `console` or `unmatched`.
    route: String,
    method: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// The counters, gauges and histograms the control plane's work updates.
pub struct Metrics {
    ingested: Counter,
    duplicates: Counter,
    ingestion_lag: Histogram,
    snapshot_build: Histogram,
    snapshot_bytes: Gauge,
    jobs: Family<JobLabels, Counter>,
    admin: Family<AdminLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ingested: Counter::default(),
            duplicates: Counter::default(),
            ingestion_lag: Histogram::new(aiproxy_shared::metrics::request_buckets()),
            snapshot_build: Histogram::new(aiproxy_shared::metrics::step_buckets()),
            snapshot_bytes: Gauge::default(),
            jobs: Family::default(),
            admin: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers everything (shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "usage_records_ingested",
            "Usage records stored from the data planes",
            self.ingested.clone(),
        );
        registry.register(
            "usage_records_duplicate",
            "Usage records received again and dropped (replays after a failure)",
            self.duplicates.clone(),
        );
        registry.register_with_unit(
            "usage_ingestion_lag",
            "Time from a request's end on its node to its usage being stored",
            Unit::Seconds,
            self.ingestion_lag.clone(),
        );
        registry.register_with_unit(
            "snapshot_build",
            "Time to build a snapshot from the database",
            Unit::Seconds,
            self.snapshot_build.clone(),
        );
        registry.register_with_unit(
            "snapshot_size",
            "Encoded size of the latest snapshot",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register(
            "job_runs",
            "Background job runs, by job and outcome",
            self.jobs.clone(),
        );
        registry.register(
            "admin_requests",
            "Requests on the admin port, by route, method and status",
            self.admin.clone(),
        );
    }

    /// A usage batch stored: `lags` are each new record's age.
    pub fn ingested(&self, inserted: u64, duplicates: u64, lags: impl Iterator<Item = Duration>) {
        self.ingested.inc_by(inserted);
        self.duplicates.inc_by(duplicates);
        for lag in lags {
            self.ingestion_lag.observe(lag.as_secs_f64());
        }
    }

    pub fn snapshot_built(&self, took: Duration, bytes: usize) {
        self.snapshot_build.observe(took.as_secs_f64());
        self.snapshot_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn job_ran(&self, job: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.jobs.get_or_create(&JobLabels { job, outcome }).inc();
    }

    pub fn admin_request(&self, route: String, method: &http::Method, status: u16) {
        // Methods outside the standard set are one value, not many.
        let method = match *method {
            http::Method::GET
            | http::Method::POST
            | http::Method::PUT
            | http::Method::PATCH
            | http::Method::DELETE
            | http::Method::HEAD
            | http::Method::OPTIONS => method.as_str().to_string(),
            _ => "other".into(),
        };
        self.admin
            .get_or_create(&AdminLabels {
                route,
                method,
                status_class: aiproxy_shared::metrics::status_class(status),
            })
            .inc();
    }
}

/// What the control plane holds, read at each scrape.
#[derive(Clone)]
pub struct Holdings {
    pub(crate) nodes: NodeRegistry,
    pub(crate) store: Store,
}

impl std::fmt::Debug for Holdings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holdings")
    }
}

impl Collector for Holdings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = crate::grpc::list_nodes(&self.nodes);
        let connected = encoder.encode_descriptor(
            "nodes",
            "Data planes that reported to this control plane",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(nodes.len() as i64).encode(connected)?;
        let mut applied = encoder.encode_descriptor(
            "node_snapshot_version",
            "The snapshot version each data plane last applied",
            None,
            MetricType::Gauge,
        )?;
        for node in &nodes {
            let labels = NodeLabels {
                node: node.node_id.clone(),
            };
            ConstGauge::new(node.applied_version as f64).encode(applied.encode_family(&labels)?)?;
        }
        let (size, idle) = self.store.pool_use();
        let mut pool = encoder.encode_descriptor(
            "database_connections",
            "Connections of the database pool, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [("idle", idle), ("in_use", size.saturating_sub(idle))] {
            ConstGauge::new(i64::from(count)).encode(pool.encode_family(&PoolLabels { state })?)?;
        }
        Ok(())
    }
}

/// Counts each admin request by its route template, in a trace span of its
/// own when traces are exported.
pub async fn observe_admin_request(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let route = match &matched {
        Some(path) => path.as_str().to_string(),
        None if req.uri().path().starts_with("/api") => "unmatched".into(),
        None => "console".into(),
    };
    let span = aiproxy_shared::traced_span!(
        "admin",
        route = route.as_str(),
        method = method.as_str(),
        status = tracing::field::Empty,
    );
    aiproxy_shared::telemetry::continue_trace(&span, req.headers());
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("status", response.status().as_u16());
    metrics.admin_request(route, &method, response.status().as_u16());
    response
}
