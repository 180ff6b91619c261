//! The node's report to the control plane every few seconds (what it runs,
//! how fresh its snapshot is, its load, its undelivered usage), for the
//! console's view of the data planes.
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::control::Client;
use crate::metrics::Holdings;

const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Reports at once, then every `REPORT_EVERY`, until cancelled; a report
/// that fails is simply superseded by the next.
pub async fn run(
    mut client: Client,
    node_id: String,
    build: String,
    holdings: Holdings,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (in_flight, waiting) = (holdings.scheduling)();
        let report = pb::NodeReport {
            node_id: node_id.clone(),
            build: build.clone(),
            snapshot_version: holdings.snapshot.load().map_or(0, |s| s.version),
            snapshot_age_ms: holdings
                .snapshot
                .silence()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            requests_in_flight: in_flight as u64,
            requests_waiting: waiting,
            journal_pending_bytes: holdings.journal.pending_bytes(),
        };
        let sent = tokio::time::timeout(REPORT_EVERY, client.report_node(report)).await;
        if let Ok(Err(e)) = sent {
            tracing::debug!(error = %e, "node report not delivered");
        }
    }
}
