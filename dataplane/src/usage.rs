//! Usage reporting: records are batched to the control plane, and kept in
//! an fsync'd on-disk spool whenever it cannot be reached, then replayed.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::Client;

const BATCH_MAX: usize = 500;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The spool refuses to grow past this; each refusal is logged as an error.
const SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Handle the relay uses to hand over finished records.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<pb::UsageRecord>,
}

impl UsageSink {
    pub fn channel() -> (UsageSink, mpsc::UnboundedReceiver<pb::UsageRecord>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (UsageSink { tx }, rx)
    }

    pub fn report(&self, record: pb::UsageRecord) {
        if self.tx.send(record).is_err() {
            tracing::error!("usage reporter stopped; record lost");
        }
    }
}

/// Append-only file of length-delimited `UsageRecord`s.
pub struct Spool {
    path: PathBuf,
}

impl Spool {
    pub fn new(dir: &Path, node_id: &str) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let safe: String = node_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Spool {
            path: dir.join(format!("usage-spool-{safe}.bin")),
        })
    }

    /// Appends and fsyncs; returns false when the spool is full or unwritable.
    fn append(&self, records: &[pb::UsageRecord]) -> bool {
        let mut buf = Vec::new();
        for r in records {
            r.encode_length_delimited(&mut buf).expect("Vec grows");
        }
        let write = || -> std::io::Result<bool> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if f.metadata()?.len() + buf.len() as u64 > SPOOL_MAX_BYTES {
                return Ok(false);
            }
            f.write_all(&buf)?;
            f.sync_data()?;
            Ok(true)
        };
        match write() {
            Ok(true) => true,
            Ok(false) => {
                tracing::error!(records = records.len(), path = %self.path.display(), "usage spool is full; records lost");
                false
            }
            Err(e) => {
                tracing::error!(records = records.len(), error = %e, path = %self.path.display(), "cannot write usage spool; records lost");
                false
            }
        }
    }

    /// Every complete record in the spool; a torn tail from a crash is ignored.
    fn read_all(&self) -> std::io::Result<Vec<pb::UsageRecord>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match pb::UsageRecord::decode_length_delimited(&mut rest) {
                Ok(r) => records.push(r),
                Err(_) => {
                    tracing::warn!(path = %self.path.display(), "ignoring a torn record at the end of the usage spool");
                    break;
                }
            }
        }
        Ok(records)
    }

    fn clear(&self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(0)?;
        f.sync_data()
    }

    fn is_empty(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|m| m.len() == 0)
            .unwrap_or(true)
    }
}

/// Batches records to the control plane until cancelled, then flushes what is left.
pub async fn run_reporter(
    mut rx: mpsc::UnboundedReceiver<pb::UsageRecord>,
    client: Client,
    node_id: String,
    spool: Spool,
    cancel: CancellationToken,
) {
    let reporter = Reporter {
        client,
        node_id,
        spool,
    };
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        tokio::select! {
            biased;
            record = rx.recv() => match record {
                Some(r) => {
                    batch.push(r);
                    if batch.len() >= BATCH_MAX {
                        reporter.flush(std::mem::take(&mut batch)).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    reporter.flush(std::mem::take(&mut batch)).await;
                }
                reporter.replay_spool().await;
            }
            _ = cancel.cancelled() => break,
        }
    }
    // Shutdown: whatever is still queued is sent, or spooled for the next start.
    while let Ok(r) = rx.try_recv() {
        batch.push(r);
    }
    for chunk in batch.chunks(BATCH_MAX) {
        reporter.flush(chunk.to_vec()).await;
    }
}

struct Reporter {
    client: Client,
    node_id: String,
    spool: Spool,
}

impl Reporter {
    async fn send(&self, records: Vec<pb::UsageRecord>) -> Result<pb::UsageAck, tonic::Status> {
        let mut client = self.client.clone();
        let batch = pb::UsageBatch {
            node_id: self.node_id.clone(),
            records,
        };
        match tokio::time::timeout(SEND_TIMEOUT, client.report_usage(batch)).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded("usage report timed out")),
        }
    }

    async fn flush(&self, batch: Vec<pb::UsageRecord>) {
        let n = batch.len();
        match self.send(batch.clone()).await {
            Ok(ack) => tracing::debug!(
                records = n,
                inserted = ack.inserted,
                duplicates = ack.duplicates,
                "usage reported"
            ),
            Err(e) => {
                tracing::warn!(records = n, error = %e, "control plane unreachable; spooling usage");
                let spool = Spool {
                    path: self.spool.path.clone(),
                };
                let _ = tokio::task::spawn_blocking(move || spool.append(&batch)).await;
            }
        }
    }

    async fn replay_spool(&self) {
        if self.spool.is_empty() {
            return;
        }
        let spool = Spool {
            path: self.spool.path.clone(),
        };
        let records = match tokio::task::spawn_blocking(move || spool.read_all()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read usage spool");
                return;
            }
            Err(_) => return,
        };
        let total = records.len();
        for chunk in records.chunks(BATCH_MAX) {
            if let Err(e) = self.send(chunk.to_vec()).await {
                tracing::debug!(error = %e, "usage spool replay deferred");
                return;
            }
        }
        // Everything was accepted (ingestion is idempotent, so a crash
        // before this clear only causes harmless duplicates).
        let spool = Spool {
            path: self.spool.path.clone(),
        };
        match tokio::task::spawn_blocking(move || spool.clear()).await {
            Ok(Ok(())) => tracing::info!(records = total, "usage spool replayed"),
            _ => tracing::error!("cannot truncate usage spool after replay"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            input_tokens: 5,
            ..Default::default()
        }
    }

    #[test]
    fn spool_round_trips_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), "node/1").unwrap();
        assert!(spool.is_empty());
        assert!(spool.append(&[record("a"), record("b")]));
        assert!(spool.append(&[record("c")]));
        // A crash mid-write leaves a partial record.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&spool.path)
            .unwrap();
        f.write_all(&[0x40, 1, 2]).unwrap();
        let ids: Vec<_> = spool
            .read_all()
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        spool.clear().unwrap();
        assert!(spool.is_empty());
        assert!(spool.read_all().unwrap().is_empty());
    }
}
