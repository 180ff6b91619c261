//! The node-facing gRPC service: snapshot watch, ACKs and usage ingestion.
use aiproxy_shared::sync::LockExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use aiproxy_shared::keys::constant_time_eq;
use aiproxy_shared::pricing::TokenUsage;
use futures_util::Stream;
use rust_decimal::Decimal;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use aiproxy_shared::state::MarkKind;

use crate::health::HealthChecker;
use crate::oauth::{Outcome as RefreshOutcome, RefreshError};
use crate::store::{HealthOutcome, UsageRow};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Largest usage batch accepted in one call.
const MAX_BATCH: usize = 5_000;

/// What the control plane last heard from a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub applied_version: u64,
    pub last_error: String,
    /// Entries of the applied snapshot the node left out, with reasons.
    pub dropped: Vec<String>,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    /// Its last report, once it sent one.
    pub report: Option<NodeReportView>,
}

/// What a node last reported of itself.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeReportView {
    /// The aiproxy release and commit it runs.
    pub build: String,
    /// Since the control plane last spoke to it, when it reported.
    pub snapshot_age_ms: u64,
    /// Requests holding an account lease.
    pub requests_in_flight: u64,
    /// Requests waiting for a free account.
    pub requests_waiting: u64,
    /// Usage on its disk not yet delivered.
    pub journal_pending_bytes: u64,
    pub reported_at: chrono::DateTime<chrono::Utc>,
}

impl NodeStatus {
    fn new(node_id: &str) -> Self {
        NodeStatus {
            node_id: node_id.to_string(),
            applied_version: 0,
            last_error: String::new(),
            dropped: Vec::new(),
            last_seen: chrono::Utc::now(),
            report: None,
        }
    }
}

#[derive(Clone)]
pub struct NodeApi {
    /// The store, publisher, refresher, health checks, state store, billing
    /// zone, node registry and task tracker the admin side uses too.
    services: crate::service::Services,
    /// Shutdown: watch streams end, so the server can stop.
    shutdown: tokio_util::sync::CancellationToken,
}

/// The data planes this control plane serves, by node id.
pub type NodeRegistry = Arc<Mutex<HashMap<String, NodeStatus>>>;

/// The nodes, by id.
pub fn list_nodes(nodes: &NodeRegistry) -> Vec<NodeStatus> {
    let mut v: Vec<_> = nodes.locked().values().cloned().collect();
    v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    v
}

impl NodeApi {
    pub fn new(
        services: crate::service::Services,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self { services, shutdown }
    }

    /// The tonic service, with every call checked against the node tokens
    /// (the current one, and the previous one during a rotation).
    pub fn into_server(
        self,
        node_tokens: Vec<String>,
    ) -> tonic::service::interceptor::InterceptedService<
        NodeServiceServer<NodeApi>,
        impl tonic::service::Interceptor + Clone,
    > {
        let server = NodeServiceServer::new(self)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024);
        tonic::service::interceptor::InterceptedService::new(server, require_token(node_tokens))
    }
}

/// Admits calls that carry `authorization: Bearer <token>` for one of `tokens`.
pub fn require_token(
    tokens: Vec<String>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
        tokens
            .into_iter()
            .map(|token| format!("Bearer {token}"))
            .collect(),
    );
    move |req: Request<()>| {
        let ok = req.metadata().get("authorization").is_some_and(|v| {
            // Every token is compared, so the time says nothing of which matched.
            expected.iter().fold(false, |any, token| {
                constant_time_eq(v.as_bytes(), token.as_bytes()) | any
            })
        });
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid node token"))
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        tracing::info!(node_id = %req.node_id, last_version = req.last_version, "node watching");
        let mut rx = self.services.publisher.subscribe();
        let mut usage = self.services.publisher.subscribe_usage();
        let (tx, out) = tokio::sync::mpsc::channel(2);
        let shutdown = self.shutdown.clone();
        self.services.tasks.spawn(async move {
            let mut sent = req.last_version;
            let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
            heartbeat.tick().await;
            loop {
                let latest = rx.borrow_and_update().clone();
                if let Some(snapshot) = latest
                    && snapshot.version != sent
                {
                    sent = snapshot.version;
                    let event = pb::WatchEvent {
                        event: Some(pb::watch_event::Event::Snapshot((*snapshot).clone())),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    update = usage.recv() => match update {
                        Ok(update) => {
                            let event = pb::WatchEvent { event: Some(pb::watch_event::Event::Usage((*update).clone())) };
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        // Missed updates: the next ones carry the latest figures.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = heartbeat.tick() => {
                        let beat = pb::Heartbeat { version: sent, server_time_ms: chrono::Utc::now().timestamp_millis() };
                        if tx.send(Ok(pb::WatchEvent { event: Some(pb::watch_event::Event::Heartbeat(beat)) })).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    // Ending the stream lets the node reconnect elsewhere.
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let ack = request.into_inner();
        if ack.applied && !ack.dropped.is_empty() {
            tracing::warn!(node_id = %ack.node_id, version = ack.version, dropped = ?ack.dropped, "node applied snapshot without entries it could not use");
        } else if ack.applied {
            tracing::debug!(node_id = %ack.node_id, version = ack.version, "node applied snapshot");
        } else {
            tracing::warn!(node_id = %ack.node_id, version = ack.version, error = %ack.error, "node rejected snapshot");
        }
        let mut nodes = self.services.nodes.locked();
        let entry = nodes
            .entry(ack.node_id.clone())
            .or_insert_with(|| NodeStatus::new(&ack.node_id));
        entry.last_seen = chrono::Utc::now();
        if ack.applied {
            entry.applied_version = ack.version;
            entry.last_error.clear();
            entry.dropped = ack.dropped;
        } else {
            entry.last_error = ack.error;
        }
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn report_node(
        &self,
        request: Request<pb::NodeReport>,
    ) -> Result<Response<pb::NodeReportAck>, Status> {
        let report = request.into_inner();
        if report.node_id.is_empty() || report.node_id.chars().count() > MAX_NODE_ID {
            return Err(Status::invalid_argument(format!(
                "node_id must be 1 to {MAX_NODE_ID} characters"
            )));
        }
        let now = chrono::Utc::now();
        let mut nodes = self.services.nodes.locked();
        let entry = nodes
            .entry(report.node_id.clone())
            .or_insert_with(|| NodeStatus::new(&report.node_id));
        entry.last_seen = now;
        // What it serves from, also after this control plane restarted.
        if report.snapshot_version != 0 {
            entry.applied_version = report.snapshot_version;
        }
        entry.report = Some(NodeReportView {
            build: report.build.chars().take(128).collect(),
            snapshot_age_ms: report.snapshot_age_ms,
            requests_in_flight: report.requests_in_flight,
            requests_waiting: report.requests_waiting,
            journal_pending_bytes: report.journal_pending_bytes,
            reported_at: now,
        });
        Ok(Response::new(pb::NodeReportAck {}))
    }

    async fn refresh_account(
        &self,
        request: Request<pb::RefreshAccountRequest>,
    ) -> Result<Response<pb::RefreshAccountResponse>, Status> {
        let req = request.into_inner();
        let refused: [u8; 32] = req
            .refused_token_sha256
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("refused_token_sha256 must be 32 bytes"))?;
        tracing::info!(node_id = %req.node_id, account_id = req.account_id, "node reports a refused OAuth token");
        let refresher = self.services.refresher.clone();
        let health = self.services.health.clone();
        let state = self.services.state.clone();
        self.services.tasks.spawn(async move {
            match refresher.refresh(req.account_id, Some(refused)).await {
                Ok(outcome) => {
                    tracing::info!(
                        account_id = req.account_id,
                        ?outcome,
                        "refresh on node report"
                    );
                    // The nodes marked it unavailable when its token was
                    // refused; a new token makes it usable again at once.
                    if outcome != RefreshOutcome::NoRefreshToken
                        && let Err(e) = state
                            .clear_marks(Some(MarkKind::Unavailable), Some(req.account_id))
                            .await
                    {
                        tracing::warn!(account_id = req.account_id, error = %e, "could not clear the account's unavailable mark");
                    }
                }
                Err(e) => {
                    tracing::warn!(account_id = req.account_id, error = %e, "refresh on node report failed");
                    // The token was refused and cannot be renewed: that is
                    // a credential failure like any other.
                    if let RefreshError::Refused { status, message } = &e {
                        let outcome = HealthOutcome::Refused {
                            source: "relayed request",
                            message: format!(
                                "token refused; refresh refused ({status}): {message}"
                            ),
                        };
                        count_failure(&health, req.account_id, &outcome).await;
                    }
                }
            }
        });
        Ok(Response::new(pb::RefreshAccountResponse {}))
    }

    async fn report_account_state(
        &self,
        request: Request<pb::AccountStateReport>,
    ) -> Result<Response<pb::AccountStateAck>, Status> {
        let req = request.into_inner();
        if req.rate_limit_reset_at_ms > 0 {
            let reset = chrono::DateTime::from_timestamp_millis(req.rate_limit_reset_at_ms)
                .ok_or_else(|| Status::invalid_argument("rate_limit_reset_at_ms out of range"))?;
            let changed = self
                .services
                .store
                .note_rate_limit(req.account_id, reset)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if changed {
                tracing::info!(node_id = %req.node_id, account_id = req.account_id, reset_at = %reset.to_rfc3339(), "account rate-limited upstream");
            }
        }
        if !req.suspected_ban.is_empty() {
            let message: String = req.suspected_ban.chars().take(300).collect();
            self.services
                .store
                .flag_suspected_ban(req.account_id, &message)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            tracing::warn!(node_id = %req.node_id, account_id = req.account_id, %message, "upstream refused the account with permission_error: flagged as likely banned");
        }
        if !req.credential_failure.is_empty() {
            let outcome = HealthOutcome::Refused {
                source: "relayed request",
                message: req.credential_failure.chars().take(300).collect(),
            };
            tracing::warn!(node_id = %req.node_id, account_id = req.account_id, failure = %req.credential_failure, "upstream refused the account's credentials");
            count_failure(&self.services.health, req.account_id, &outcome).await;
        }
        Ok(Response::new(pb::AccountStateAck {}))
    }

    async fn report_usage(
        &self,
        request: Request<pb::UsageBatch>,
    ) -> Result<Response<pb::UsageAck>, Status> {
        let batch = request.into_inner();
        if batch.records.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch larger than {MAX_BATCH} records"
            )));
        }
        let rows = batch
            .records
            .into_iter()
            .map(|r| usage_row(&batch.node_id, r))
            .collect::<Result<Vec<_>, _>>()?;
        let span = aiproxy_shared::traced_span!(
            "ingest_usage",
            node = batch.node_id.as_str(),
            records = rows.len(),
            inserted = tracing::field::Empty,
            duplicates = tracing::field::Empty,
        );
        let outcome = tracing::Instrument::instrument(
            self.services
                .store
                .ingest_usage(&rows, self.services.billing_tz),
            span.clone(),
        )
        .await
        .inspect(|o| {
            span.record("inserted", o.inserted)
                .record("duplicates", o.duplicates);
        })
        .map_err(|e| {
            tracing::error!(error = %e, node_id = %batch.node_id, "usage ingestion failed");
            Status::unavailable("usage ingestion failed; retry")
        })?;
        tracing::debug!(node_id = %batch.node_id, inserted = outcome.inserted, duplicates = outcome.duplicates, "usage ingested");
        let now = chrono::Utc::now();
        self.services.metrics.ingested(
            u64::from(outcome.inserted),
            u64::from(outcome.duplicates),
            rows.iter()
                .filter_map(|r| (now - r.created_at).to_std().ok()),
        );
        // A request the upstream served proves the account's credentials.
        let mut served: Vec<i64> = rows
            .iter()
            .filter(|r| (200..300).contains(&r.status_code))
            .filter_map(|r| r.account_id)
            .collect();
        served.sort_unstable();
        served.dedup();
        if let Err(e) = self
            .services
            .store
            .clear_account_errors_served(&served)
            .await
        {
            tracing::warn!(error = %e, "could not reset the error counts of serving accounts");
        }
        Ok(Response::new(pb::UsageAck {
            inserted: outcome.inserted,
            duplicates: outcome.duplicates,
        }))
    }
}

/// Counts a credential failure toward the account's threshold.
async fn count_failure(health: &HealthChecker, account_id: i64, outcome: &HealthOutcome) {
    let recorded = async {
        let threshold = health.error_threshold().await?;
        health
            .record(account_id, outcome, threshold, "relayed request")
            .await
    };
    if let Err(e) = recorded.await {
        tracing::warn!(account_id, error = %e, "could not count the account's failure");
    }
}

fn decimal(field: &str, value: &str) -> Result<Decimal, Status> {
    aiproxy_shared::money::from_wire(value)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// The longest node name `request_logs` holds (the configuration refuses longer).
const MAX_NODE_ID: usize = aiproxy_shared::config::MAX_NODE_ID;

fn usage_row(node_id: &str, r: pb::UsageRecord) -> Result<UsageRow, Status> {
    if r.request_id.is_empty() || r.request_id.len() > 36 {
        return Err(Status::invalid_argument(
            "request_id must be 1 to 36 characters",
        ));
    }
    // Replayed by another node, a record still names the node that served it.
    let node_id = if r.node_id.is_empty() {
        node_id
    } else {
        r.node_id.as_str()
    };
    if node_id.chars().count() > MAX_NODE_ID {
        return Err(Status::invalid_argument(format!(
            "node_id longer than {MAX_NODE_ID} characters"
        )));
    }
    let created_at = chrono::DateTime::from_timestamp_millis(r.created_at_ms)
        .ok_or_else(|| Status::invalid_argument("created_at_ms out of range"))?;
    let tokens = TokenUsage {
        input: r.input_tokens,
        output: r.output_tokens,
        cache_creation: r.cache_creation_tokens,
        cache_creation_1h: r.cache_creation_1h_tokens,
        cache_read: r.cache_read_tokens,
    };
    if i64::try_from(tokens.total()).is_err() {
        return Err(Status::invalid_argument("token count out of range"));
    }
    Ok(UsageRow {
        upstream_cost: decimal("upstream_cost", &r.upstream_cost)?,
        cost: decimal("cost", &r.cost)?,
        tokens,
        request_id: r.request_id,
        user_id: r.user_id,
        api_key_id: r.api_key_id,
        account_id: (r.account_id != 0).then_some(r.account_id),
        node_id: node_id.to_string(),
        upstream_request_id: r
            .upstream_request_id
            .chars()
            .filter(char::is_ascii_graphic)
            .take(128)
            .collect(),
        model: r.model,
        platform: r.platform,
        endpoint: r.endpoint,
        status_code: r.status_code as i32,
        price_version: r.price_version as i64,
        duration_ms: r.duration_ms.min(i32::MAX as u32) as i32,
        ttfb_ms: r.ttfb_ms.min(i32::MAX as u32) as i32,
        stream: r.stream,
        session_hash: r.session_hash,
        error_class: r.error_class,
        usage_source: r.usage_source,
        created_at,
        package_id: (r.package_id != 0).then_some(r.package_id),
    })
}
