//! Usage delivery: every record is appended to an on-disk journal before its
//! response ends (so a killed node loses nothing it served), batched to the
//! control plane, and replayed from disk whatever the control plane did not
//! take, including after a restart.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiproxy_proto::v1 as pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::control::Client;

const BATCH_MAX: usize = 500;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A segment is closed after this long (or this many records), so delivered
/// records leave the disk soon.
const SEGMENT_AGE: Duration = Duration::from_secs(2);
const SEGMENT_RECORDS: u64 = 20_000;

/// Delivery bookkeeping of one journal segment.
#[derive(Debug, Default)]
struct SegmentState {
    written: u64,
    /// Records the control plane took from memory.
    acked: u64,
    /// Records whose in-memory delivery was attempted (taken or not).
    attempted: u64,
    /// Left from an earlier run, or a delivery failed: replay from disk.
    replay: bool,
}

struct Current {
    file: Arc<File>,
    seq: u64,
    opened: Instant,
}

/// The append-only journal: numbered segment files in one directory.
pub struct Journal {
    dir: PathBuf,
    prefix: String,
    current: Mutex<Current>,
    /// Segments closed full on a request's path, synced by the next beat.
    unsynced: Mutex<Vec<Arc<File>>>,
    segments: Mutex<BTreeMap<u64, SegmentState>>,
    /// Bytes on disk; above `max_bytes` new requests are refused.
    bytes: std::sync::atomic::AtomicU64,
    max_bytes: u64,
}

fn safe_name(node_id: &str) -> String {
    node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Journal {
    /// Opens the journal in `dir`; segments left by an earlier run are
    /// queued for replay.
    pub fn open(dir: &Path, node_id: &str, max_bytes: u64) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let prefix = format!("usage-{}-", safe_name(node_id));
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(seq) = name
                .strip_prefix(&prefix)
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                bytes += entry.metadata()?.len();
                segments.insert(
                    seq,
                    SegmentState {
                        replay: true,
                        ..Default::default()
                    },
                );
            }
        }
        let seq = segments.keys().next_back().map_or(1, |s| s + 1);
        let file = Self::create(dir, &prefix, seq)?;
        segments.insert(seq, SegmentState::default());
        Ok(Journal {
            dir: dir.to_path_buf(),
            prefix,
            current: Mutex::new(Current {
                file: Arc::new(file),
                seq,
                opened: Instant::now(),
            }),
            unsynced: Mutex::default(),
            segments: Mutex::new(segments),
            bytes: bytes.into(),
            max_bytes,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{}{seq:012}.log", self.prefix))
    }

    fn create(dir: &Path, prefix: &str, seq: u64) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{prefix}{seq:012}.log")))
    }

    /// Whether the journal has room for more records.
    pub fn has_room(&self) -> bool {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed) < self.max_bytes
    }

    /// Appends one record (one write, no fsync: it survives the process
    /// being killed; the beat fsyncs for power loss). Returns its segment.
    fn append(&self, record: &pb::UsageRecord) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(record.encoded_len() + 5);
        record.encode_length_delimited(&mut buf).expect("Vec grows");
        let mut current = self.current.lock().expect("journal lock");
        (&*current.file).write_all(&buf)?;
        let seq = current.seq;
        self.bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut segments = self.segments.lock().expect("journal lock");
        let state = segments.entry(seq).or_default();
        state.written += 1;
        if state.written >= SEGMENT_RECORDS {
            drop(segments);
            // Full: the next beat syncs it, off the request's path.
            let closed = self.next_segment(&mut current)?;
            self.unsynced.lock().expect("journal lock").push(closed);
        }
        Ok(seq)
    }

    /// Closes the current segment (when old enough, or `force`) and opens
    /// the next, then syncs what was written. Blocks on the disk: not for a
    /// runtime worker.
    fn rotate(&self, force: bool) -> std::io::Result<()> {
        let synced = {
            let mut current = self.current.lock().expect("journal lock");
            let written = self
                .segments
                .lock()
                .expect("journal lock")
                .get(&current.seq)
                .map_or(0, |s| s.written);
            let mut files = std::mem::take(&mut *self.unsynced.lock().expect("journal lock"));
            if written == 0
                || (!force && current.opened.elapsed() < SEGMENT_AGE && written < SEGMENT_RECORDS)
            {
                files.push(current.file.clone());
            } else {
                files.push(self.next_segment(&mut current)?);
            }
            files
        };
        // Appends go on meanwhile: the lock is not held across the sync.
        // Every file is tried; the first failure is reported.
        let mut result = Ok(());
        for file in synced {
            if let Err(e) = file.sync_data()
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }

    /// Makes the next segment current; returns the closed one's file.
    fn next_segment(&self, current: &mut Current) -> std::io::Result<Arc<File>> {
        let next = current.seq + 1;
        let file = Arc::new(Self::create(&self.dir, &self.prefix, next)?);
        self.segments
            .lock()
            .expect("journal lock")
            .insert(next, SegmentState::default());
        current.seq = next;
        current.opened = Instant::now();
        Ok(std::mem::replace(&mut current.file, file))
    }

    fn settle(&self, seq: u64, records: u64, taken: bool) {
        let mut segments = self.segments.lock().expect("journal lock");
        if let Some(s) = segments.get_mut(&seq) {
            s.attempted += records;
            if taken {
                s.acked += records;
            } else {
                s.replay = true;
            }
        }
    }

    /// Closed segments and what to do with each: delete (all delivered) or
    /// replay from disk (earlier run, or a delivery failed).
    fn closed(&self) -> Vec<(u64, bool)> {
        let current = self.current.lock().expect("journal lock").seq;
        self.segments
            .lock()
            .expect("journal lock")
            .iter()
            .filter(|(seq, _)| **seq < current)
            .filter_map(|(seq, s)| {
                if s.replay && s.attempted >= s.written {
                    Some((*seq, false))
                } else if !s.replay && s.acked >= s.written {
                    Some((*seq, true))
                } else {
                    None
                }
            })
            .collect()
    }

    fn remove(&self, seq: u64) {
        let path = self.path(seq);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.bytes
                    .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
                self.segments.lock().expect("journal lock").remove(&seq);
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot remove a delivered usage journal segment")
            }
        }
    }

    /// Every complete record of a segment; a torn tail from a crash is ignored.
    fn read(&self, seq: u64) -> std::io::Result<Vec<pb::UsageRecord>> {
        let path = self.path(seq);
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match pb::UsageRecord::decode_length_delimited(&mut rest) {
                Ok(r) => records.push(r),
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring a torn record at the end of a usage journal segment");
                    break;
                }
            }
        }
        Ok(records)
    }
}

/// Records waiting for delivery. The reporter is not woken per record (a
/// cross-thread wake costs more than the record): it drains on its beat, or
/// early when a batch is full.
#[derive(Default)]
pub struct Queue {
    items: Mutex<Vec<(u64, pb::UsageRecord)>>,
    full: tokio::sync::Notify,
}

impl Queue {
    fn take(&self) -> Vec<(u64, pb::UsageRecord)> {
        std::mem::take(&mut *self.items.lock().expect("usage queue"))
    }
}

/// Handle the relay uses to hand over finished records.
#[derive(Clone)]
pub struct UsageSink {
    journal: Arc<Journal>,
    queue: Arc<Queue>,
}

impl UsageSink {
    pub fn new(journal: Arc<Journal>) -> (UsageSink, Arc<Queue>) {
        let queue = Arc::new(Queue::default());
        (
            UsageSink {
                journal,
                queue: queue.clone(),
            },
            queue,
        )
    }

    /// Whether records can still be kept; when not, requests are refused
    /// rather than served unbilled.
    pub fn has_room(&self) -> bool {
        self.journal.has_room()
    }

    /// Journals the record, then queues it for delivery.
    pub fn report(&self, record: pb::UsageRecord) {
        let seq = match self.journal.append(&record) {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, request_id = %record.request_id, "cannot journal a usage record; delivering from memory only");
                0
            }
        };
        let mut items = self.queue.items.lock().expect("usage queue");
        items.push((seq, record));
        let full = items.len() == BATCH_MAX;
        drop(items);
        if full {
            self.queue.full.notify_one();
        }
    }
}

/// Delivers journaled records until cancelled, then flushes what it holds.
pub async fn run_reporter(
    queue: Arc<Queue>,
    client: Client,
    node_id: String,
    journal: Arc<Journal>,
    cancel: CancellationToken,
) {
    let reporter = Reporter {
        client,
        node_id,
        journal,
    };
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        let beat = tokio::select! {
            _ = queue.full.notified() => false,
            _ = tick.tick() => true,
            _ = cancel.cancelled() => break,
        };
        reporter.flush_all(queue.take()).await;
        if beat {
            reporter.beat().await;
        }
    }
    reporter.flush_all(queue.take()).await;
    // What was not delivered stays journaled for the next start.
    if let Err(e) = reporter.journal.rotate(true) {
        tracing::error!(error = %e, "cannot sync the usage journal at shutdown");
    }
    reporter.beat().await;
}

struct Reporter {
    client: Client,
    node_id: String,
    journal: Arc<Journal>,
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

    /// Sends everything in batches of at most `BATCH_MAX`.
    async fn flush_all(&self, mut pending: Vec<(u64, pb::UsageRecord)>) {
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(BATCH_MAX));
            self.flush(std::mem::replace(&mut pending, rest)).await;
        }
    }

    async fn flush(&self, batch: Vec<(u64, pb::UsageRecord)>) {
        let mut per_segment: BTreeMap<u64, u64> = BTreeMap::new();
        let mut records = Vec::with_capacity(batch.len());
        for (seq, r) in batch {
            *per_segment.entry(seq).or_default() += 1;
            records.push(r);
        }
        let n = records.len();
        let taken = match self.send(records).await {
            Ok(ack) => {
                tracing::debug!(
                    records = n,
                    inserted = ack.inserted,
                    duplicates = ack.duplicates,
                    "usage reported"
                );
                true
            }
            Err(e) => {
                tracing::warn!(records = n, error = %e, "control plane unreachable; usage stays in the journal for replay");
                false
            }
        };
        for (seq, count) in per_segment {
            self.journal.settle(seq, count, taken);
        }
    }

    /// Closes an old segment, deletes delivered ones and replays the rest.
    async fn beat(&self) {
        let journal = self.journal.clone();
        let rotated = tokio::task::spawn_blocking(move || journal.rotate(false))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = rotated {
            tracing::error!(error = %e, "cannot rotate the usage journal");
        }
        for (seq, delivered) in self.journal.closed() {
            if delivered {
                self.journal.remove(seq);
                continue;
            }
            let records = match self.journal.read(seq) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, seq, "cannot read a usage journal segment");
                    continue;
                }
            };
            let total = records.len();
            for chunk in records.chunks(BATCH_MAX) {
                if let Err(e) = self.send(chunk.to_vec()).await {
                    tracing::debug!(error = %e, "usage replay deferred");
                    return;
                }
            }
            // All taken (ingestion is idempotent: a crash before this removal
            // only replays duplicates, never bills twice).
            self.journal.remove(seq);
            tracing::info!(records = total, seq, "usage journal segment replayed");
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
    fn segments_round_trip_ignore_torn_tails_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "node/1", 1 << 20).unwrap();
        let seq = journal.append(&record("a")).unwrap();
        journal.append(&record("b")).unwrap();
        assert!(journal.closed().is_empty(), "the current segment is open");
        // A crash mid-write leaves a partial record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal.path(seq))
            .unwrap();
        f.write_all(&[0x40, 1, 2]).unwrap();
        let ids: Vec<_> = journal
            .read(seq)
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        drop(journal);

        // The next start replays what the previous one left.
        let journal = Journal::open(dir.path(), "node/1", 1 << 20).unwrap();
        assert_eq!(journal.closed(), vec![(seq, false)]);
        journal.remove(seq);
        assert!(journal.closed().is_empty());
        // Another node's segments in the same directory are not ours.
        let other = Journal::open(dir.path(), "node-2", 1 << 20).unwrap();
        assert!(other.closed().is_empty());
    }

    #[test]
    fn delivered_segments_are_deleted_and_failed_ones_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        let first = journal.append(&record("a")).unwrap();
        journal.rotate(true).unwrap();
        let second = journal.append(&record("b")).unwrap();
        journal.rotate(true).unwrap();
        assert!(journal.closed().is_empty(), "nothing attempted yet");
        journal.settle(first, 1, true);
        journal.settle(second, 1, false);
        assert_eq!(journal.closed(), vec![(first, true), (second, false)]);
    }

    #[test]
    fn a_full_segment_closes_on_append_and_the_next_rotation_syncs_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 30).unwrap();
        let first = journal.append(&record("r0")).unwrap();
        for i in 1..SEGMENT_RECORDS {
            assert_eq!(journal.append(&record(&format!("r{i}"))).unwrap(), first);
        }
        assert_eq!(
            journal.unsynced.lock().unwrap().len(),
            1,
            "closed, not yet synced"
        );
        let next = journal.append(&record("next")).unwrap();
        assert_eq!(next, first + 1);
        journal.rotate(false).unwrap();
        assert!(journal.unsynced.lock().unwrap().is_empty());
        assert_eq!(journal.read(first).unwrap().len(), SEGMENT_RECORDS as usize);
        journal.settle(first, SEGMENT_RECORDS, true);
        assert_eq!(journal.closed(), vec![(first, true)]);
    }

    #[test]
    fn a_full_journal_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 10).unwrap();
        assert!(journal.has_room());
        journal.append(&record("a-request-id-long-enough")).unwrap();
        assert!(!journal.has_room());
    }
}
