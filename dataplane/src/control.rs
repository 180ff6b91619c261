//! The gRPC link to the control plane: an authenticated client, and the
//! snapshot feed that reconnects with backoff and resumes by version.
use std::sync::Arc;
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::node_service_client::NodeServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::scheduler::Scheduler;
use crate::snapshot::{Snapshot, SnapshotHolder};

/// A watch stream with no message for this long is considered dead.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Adds the node token to every call.
#[derive(Clone)]
pub struct NodeAuth(MetadataValue<Ascii>);

impl tonic::service::Interceptor for NodeAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = NodeServiceClient<InterceptedService<Channel, NodeAuth>>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("node token is not a valid header value")]
    Token,
}

/// A lazily connecting client; calls fail fast while the control plane is down.
pub fn client(url: &str, node_token: &str) -> Result<Client, ControlError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ControlError::Url(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let token: MetadataValue<Ascii> = format!("Bearer {node_token}")
        .parse()
        .map_err(|_| ControlError::Token)?;
    Ok(
        NodeServiceClient::with_interceptor(endpoint.connect_lazy(), NodeAuth(token))
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024),
    )
}

/// Keeps `holder`, and the scheduler's settings, up to date until cancelled.
pub async fn run_feed(
    client: Client,
    node_id: String,
    holder: Arc<SnapshotHolder>,
    scheduler: Arc<Scheduler>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = watch_once(client.clone(), &node_id, &holder, &scheduler) => r,
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
    scheduler: &Scheduler,
) -> Result<(), tonic::Status> {
    let request = pb::WatchRequest {
        node_id: node_id.to_string(),
        last_version: holder.version(),
    };
    let mut stream = client.watch(request).await?.into_inner();
    loop {
        let message = tokio::time::timeout(WATCH_IDLE_TIMEOUT, stream.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no snapshot or heartbeat in time"))??;
        let Some(event) = message else { return Ok(()) };
        match event.event {
            Some(pb::watch_event::Event::Snapshot(snapshot)) => {
                let version = snapshot.version;
                let started = std::time::Instant::now();
                let ack = match Snapshot::try_from(snapshot) {
                    Ok(applied) => {
                        let (accounts, keys) = (applied.accounts.len(), applied.keys.len());
                        scheduler.adopt(&applied.scheduling);
                        holder.store(applied);
                        tracing::info!(
                            version,
                            accounts,
                            api_keys = keys,
                            apply_us = started.elapsed().as_micros() as u64,
                            "snapshot applied"
                        );
                        pb::AckRequest {
                            node_id: node_id.to_string(),
                            version,
                            applied: true,
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        tracing::error!(version, error = %e, "snapshot rejected; keeping the previous one");
                        pb::AckRequest {
                            node_id: node_id.to_string(),
                            version,
                            applied: false,
                            error: e.to_string(),
                        }
                    }
                };
                let mut acker = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = acker.ack(ack).await {
                        tracing::debug!(error = %e, "snapshot ack failed");
                    }
                });
            }
            Some(pb::watch_event::Event::Usage(update)) => holder.spending.apply(&update),
            Some(pb::watch_event::Event::Heartbeat(_)) | None => {}
        }
    }
}
