//! The snapshot feed: a watch on the control plane that reconnects with
//! backoff, resumes by version, applies each snapshot and acks it in order.
use std::sync::Arc;
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::control::Client;
use crate::snapshot::{Snapshot, SnapshotHolder};
use crate::spending::Spending;

/// A watch stream with no message for this long is considered dead.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps `holder`, and what was spent since its snapshot, up to date until
/// cancelled.
pub async fn run_feed(
    client: Client,
    node_id: String,
    holder: Arc<SnapshotHolder>,
    spending: Arc<Spending>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = watch_once(client.clone(), &node_id, &holder, &spending) => r,
        };
        match outcome {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "snapshot feed interrupted");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One watch stream, from connect to its end. Returns Ok when it ran and ended.
async fn watch_once(
    mut client: Client,
    node_id: &str,
    holder: &SnapshotHolder,
    spending: &Spending,
) -> Result<(), tonic::Status> {
    let request = pb::WatchRequest {
        node_id: node_id.to_string(),
        last_version: holder.version(),
    };
    let stream = client.watch(request).await?.into_inner();
    let (acks, acking) = acker(client);
    // The acker runs beside the stream and ends after the last ack is sent.
    let (watched, ()) = tokio::join!(follow(stream, node_id, holder, spending, acks), acking);
    watched
}

/// Applies what one watch stream brings until it ends.
async fn follow(
    mut stream: tonic::Streaming<pb::WatchEvent>,
    node_id: &str,
    holder: &SnapshotHolder,
    spending: &Spending,
    acks: tokio::sync::watch::Sender<Option<pb::AckRequest>>,
) -> Result<(), tonic::Status> {
    loop {
        let message = tokio::time::timeout(WATCH_IDLE_TIMEOUT, stream.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no snapshot or heartbeat in time"))??;
        let Some(event) = message else { return Ok(()) };
        holder.heard_from_control_plane();
        match event.event {
            Some(pb::watch_event::Event::Snapshot(snapshot)) => {
                let version = snapshot.version;
                let started = std::time::Instant::now();
                let (applied, problems) = Snapshot::from_proto(snapshot, holder.configured());
                let dropped: Vec<String> = problems.iter().map(ToString::to_string).collect();
                for problem in &dropped {
                    tracing::error!(version, problem = %problem, "snapshot entry unusable; the rest applies");
                }
                let (accounts, keys) = (applied.accounts.len(), applied.keys.len());
                holder.store(applied);
                // The snapshot carries everything ingested before it was built.
                spending.clear();
                tracing::info!(
                    version,
                    accounts,
                    api_keys = keys,
                    dropped = dropped.len(),
                    apply_us = started.elapsed().as_micros() as u64,
                    "snapshot applied"
                );
                let ack = pb::AckRequest {
                    node_id: node_id.to_string(),
                    version,
                    applied: true,
                    error: String::new(),
                    dropped,
                };
                acks.send_replace(Some(ack));
            }
            Some(pb::watch_event::Event::Usage(update)) => spending.apply(&update),
            Some(pb::watch_event::Event::Heartbeat(_)) | None => {}
        }
    }
}

/// Sends acks one at a time, in order, skipping any superseded while one was
/// in flight: acks sent side by side could land out of order and leave the
/// control plane believing an older version is the one applied.
fn acker(
    mut client: Client,
) -> (
    tokio::sync::watch::Sender<Option<pb::AckRequest>>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<pb::AckRequest>);
    let acking = async move {
        // Ends once the sender is dropped and its last ack is sent.
        while rx.changed().await.is_ok() {
            let Some(ack) = rx.borrow_and_update().clone() else {
                continue;
            };
            if let Err(e) = client.ack(ack).await {
                tracing::debug!(error = %e, "snapshot ack failed");
            }
        }
    };
    (tx, acking)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::sync::Mutex;

    use aiproxy_shared::sync::LockExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aiproxy_proto::v1::node_service_server::{NodeService, NodeServiceServer};
    use futures_util::StreamExt;
    use tonic::{Request, Response, Status};

    use super::*;

    /// Streams two snapshots back to back; holds the first one's ack until
    /// the second's arrives (or a second passes), as a slow network could.
    struct FakeControlPlane(Arc<Heard>);

    #[derive(Default)]
    struct Heard {
        acked: Mutex<Vec<u64>>,
        in_flight: AtomicUsize,
        second_acked: tokio::sync::Notify,
    }

    type Events =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    #[tonic::async_trait]
    impl NodeService for FakeControlPlane {
        type WatchStream = Events;

        async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Events>, Status> {
            let event = |version| {
                Ok(pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
                        version,
                        ..Default::default()
                    })),
                })
            };
            let events = futures_util::stream::iter([event(1), event(2)])
                .chain(futures_util::stream::pending());
            Ok(Response::new(Box::pin(events)))
        }

        async fn ack(
            &self,
            req: Request<pb::AckRequest>,
        ) -> Result<Response<pb::AckResponse>, Status> {
            let heard = &self.0;
            heard.in_flight.fetch_add(1, Ordering::SeqCst);
            let version = req.into_inner().version;
            if version == 1 {
                let _ = tokio::time::timeout(Duration::from_secs(1), heard.second_acked.notified())
                    .await;
            }
            heard.acked.locked().push(version);
            if version == 2 {
                heard.second_acked.notify_one();
            }
            heard.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::new(pb::AckResponse {}))
        }

        async fn report_usage(
            &self,
            _: Request<pb::UsageBatch>,
        ) -> Result<Response<pb::UsageAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn refresh_account(
            &self,
            _: Request<pb::RefreshAccountRequest>,
        ) -> Result<Response<pb::RefreshAccountResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn report_account_state(
            &self,
            _: Request<pb::AccountStateReport>,
        ) -> Result<Response<pb::AccountStateAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn report_node(
            &self,
            _: Request<pb::NodeReport>,
        ) -> Result<Response<pb::NodeReportAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn the_last_ack_the_control_plane_hears_is_the_newest_snapshot() {
        let fake = Arc::new(Heard::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(NodeServiceServer::new(FakeControlPlane(fake.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);

        let holder = Arc::new(SnapshotHolder::new(crate::settings::Effective::for_tests()));
        // Spent under an earlier snapshot: over the key's limit until a
        // newer snapshot (which counts it) arrives.
        let spending = Arc::new(Spending::default());
        let key = crate::snapshot::KeyEntry {
            cost_limit: Some(rust_decimal::Decimal::ONE),
            ..crate::snapshot::KeyEntry::for_tests(1, 1)
        };
        let earlier = Snapshot::for_tests();
        let now = chrono::Utc::now();
        spending.add(&earlier, 0, &key, rust_decimal::Decimal::TWO, now);
        assert!(spending.pre_admit(&earlier, &key, now).is_err());
        let cancel = CancellationToken::new();
        let feed = tokio::spawn(run_feed(
            crate::control::client(&url, None, "token").unwrap(),
            "node".into(),
            holder.clone(),
            spending.clone(),
            cancel.clone(),
        ));

        let settled = async {
            loop {
                let done =
                    fake.acked.locked().contains(&2) && fake.in_flight.load(Ordering::SeqCst) == 0;
                if done {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .expect("the newest snapshot was never acked");
        cancel.cancel();
        feed.await.unwrap();
        assert_eq!(holder.version(), 2);
        assert!(
            spending.pre_admit(&earlier, &key, now).is_ok(),
            "spending is cleared when a snapshot applies"
        );
        let acked = fake.acked.locked().clone();
        assert_eq!(
            acked.last(),
            Some(&2),
            "acks landed out of order: {acked:?}"
        );
    }
}
