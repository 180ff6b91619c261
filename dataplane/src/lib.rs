//! aiproxy data plane: a stateless relay node fed by the control plane's
//! snapshot, reporting usage back to it.
#![forbid(unsafe_code)]

pub(crate) mod access;
pub(crate) mod adapters;
pub(crate) mod admission;
pub(crate) mod answer;
pub(crate) mod auth;
pub(crate) mod body;
pub mod control;
pub(crate) mod errors;
pub(crate) mod failure;
pub(crate) mod feed;
pub(crate) mod filter;
pub(crate) mod meter;
pub mod metrics;
pub(crate) mod models;
pub(crate) mod relay;
pub(crate) mod report;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod routes;
pub mod scheduler;
pub mod server;
pub(crate) mod session;
pub mod settings;
pub mod snapshot;
#[cfg(test)]
mod spelling;
pub(crate) mod spending;
pub(crate) mod tap;
pub(crate) mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aiproxy_shared::config::Secret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;
use crate::settings::Effective;
use crate::snapshot::SnapshotHolder;
use crate::spending::Spending;
use crate::usage::{Journal, UsageSink};

/// What a data plane needs to start.
#[derive(Clone)]
pub struct Settings {
    pub controlplane_url: String,
    /// PEM CA trusted for an `https://` control-plane URL.
    pub controlplane_ca: Option<Vec<u8>>,
    pub node_token: Secret,
    pub node_id: String,
    pub proxy_listen: SocketAddr,
    /// Where the usage journal lives.
    pub spool_dir: PathBuf,
    /// Above this many journal bytes (undelivered usage) requests are refused.
    pub journal_max_bytes: u64,
    pub proxy_timeout: Duration,
    /// Longest silence allowed inside a response body.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Accounts tried for one request before giving up.
    pub max_attempts: usize,
    pub max_body_bytes: usize,
    /// Request bodies being read at once, in bytes, across the node.
    pub max_body_bytes_in_flight: usize,
    /// Longest time a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// Connection limits and the drain.
    pub server: server::ServerSettings,
    pub scheduling: scheduler::SchedulerSettings,
    /// Sticky sessions, leases and marks shared with the other nodes.
    pub state: Arc<dyn aiproxy_shared::state::StateStore>,
    /// Counters and histograms the requests update.
    pub metrics: Arc<metrics::Metrics>,
    /// One `aiproxy::access` log line per request.
    pub access_log: bool,
    /// The release and commit this node runs, as it reports them.
    pub build: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("control plane link: {0}")]
    Control(#[from] control::ControlError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("usage journal: {0}")]
    Journal(std::io::Error),
}

/// Longest wait at shutdown for the last usage to reach the control plane.
const FINAL_DELIVERY: Duration = Duration::from_secs(15);

pub struct DataPlane {
    pub proxy_addr: SocketAddr,
    pub snapshot: Arc<SnapshotHolder>,
    /// What the node holds, for the metrics listener to read at each scrape.
    pub holdings: metrics::Holdings,
}

/// Starts the snapshot feed, the usage reporter and the proxy server.
/// On `cancel` the server drains first, then the reporter flushes.
pub async fn start(
    settings: Settings,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<DataPlane, StartError> {
    let client = control::client(
        &settings.controlplane_url,
        settings.controlplane_ca.as_deref(),
        settings.node_token.expose(),
    )?;
    let journal = Arc::new(
        Journal::open(
            &settings.spool_dir,
            &settings.node_id,
            settings.journal_max_bytes,
        )
        .map_err(StartError::Journal)?,
    );
    let listener = tokio::net::TcpListener::bind(settings.proxy_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.proxy_listen,
            source,
        })?;
    let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.proxy_listen,
        source,
    })?;

    // What requests go by until a snapshot's settings say otherwise.
    let configured = Effective::configured(settings.proxy_timeout, &settings.scheduling);
    let snapshot = Arc::new(SnapshotHolder::new(configured));
    let spending = Arc::new(Spending::default());
    let scheduler = Arc::new(scheduler::Scheduler::new(
        settings.state.clone(),
        &settings.node_id,
        settings.metrics.clone(),
    ));
    tracker.spawn(
        scheduler
            .clone()
            .run_renewals(snapshot.settings(), cancel.clone()),
    );
    tracker.spawn(feed::run_feed(
        client.clone(),
        settings.node_id.clone(),
        snapshot.clone(),
        spending.clone(),
        cancel.clone(),
    ));

    let scheduling = scheduler.clone();
    let holdings = metrics::Holdings {
        scheduling: Arc::new(move || (scheduling.leases_in_use(), scheduling.waiting())),
        snapshot: snapshot.clone(),
        journal: journal.clone(),
        state: settings.state.clone(),
        marks: Default::default(),
    };
    if settings.metrics.enabled() {
        tracker.spawn(metrics::watch_marks(holdings.clone(), cancel.clone()));
    }
    tracker.spawn(report::run(
        client.clone(),
        settings.node_id.clone(),
        settings.build.clone(),
        holdings.clone(),
        cancel.clone(),
    ));
    let (sink, queue) = UsageSink::new(journal.clone());
    let reporter_stop = CancellationToken::new();
    let reporter = tracker.spawn(usage::run_reporter(
        queue,
        client.clone(),
        settings.node_id.clone(),
        journal.clone(),
        reporter_stop.clone(),
    ));

    let relay = Arc::new(Relay {
        snapshot: snapshot.clone(),
        spending,
        scheduler,
        client: aiproxy_shared::http::client(settings.connect_timeout),
        proxied: Default::default(),
        sink,
        idle_timeout: settings.idle_timeout,
        max_body_bytes: settings.max_body_bytes,
        max_attempts: settings.max_attempts.max(1),
        connect_timeout: settings.connect_timeout,
        control: client,
        node_id: settings.node_id.clone(),
        draining: Default::default(),
        cutting: Default::default(),
        max_snapshot_age: settings.server.max_snapshot_age,
        metrics: settings.metrics.clone(),
        access_log: settings.access_log,
        admission: Default::default(),
        bodies: admission::BodyBudget::new(settings.max_body_bytes_in_flight),
        body_read_timeout: settings.body_read_timeout,
        tasks: tracker.clone(),
    });
    tracker.spawn(async move {
        server::serve(listener, relay, settings.server, cancel).await;
        // Every response has ended or been cut, so every record is queued:
        // deliver them now, for a bounded time; the rest stays journaled.
        reporter_stop.cancel();
        if tokio::time::timeout(FINAL_DELIVERY, reporter)
            .await
            .is_err()
        {
            tracing::warn!(
                "usage not all delivered before exit; the journal keeps it for the next start"
            );
            usage::report_lost(&journal);
        }
    });
    Ok(DataPlane {
        proxy_addr,
        snapshot,
        holdings,
    })
}
