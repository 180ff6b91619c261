//! Usage delivery: every record is appended to an on-disk journal before its
//! response ends (so a killed node loses nothing it served), batched to the
//! control plane, and replayed from disk whatever the control plane did not
//! take, including after a restart. A node also adopts the segments of any
//! node that left them in its spool and no longer runs, whatever its name.
use aiproxy_shared::sync::LockExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// How often a running node looks for segments of nodes that stopped
/// beside it, in flush intervals.
const ADOPT_EVERY: u32 = 30;

/// Every segment starts with this; segments without it are of the earlier
/// format (bare length-delimited records) and are still read.
const SEGMENT_MAGIC: &[u8; 8] = b"AIPXJNL2";
/// Every record starts with this, so a reader finds the next whole record
/// after a damaged one.
const RECORD_MAGIC: [u8; 4] = [0xA1, 0x5E, 0xC0, 0xDE];
/// Magic, payload length (u32 LE), CRC-32 of the payload (u32 LE).
const RECORD_HEADER: usize = 12;
/// Larger lengths are damage, not records.
const MAX_RECORD: usize = 4 << 20;

/// One record framed for the journal.
fn frame(record: &pb::UsageRecord) -> Vec<u8> {
    let len = record.encoded_len();
    let mut buf = Vec::with_capacity(RECORD_HEADER + len);
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    // Into a Vec, encoding cannot run out of room.
    record.encode_raw(&mut buf);
    let crc = crc32fast::hash(&buf[RECORD_HEADER..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// What the bytes at the start of a slice are.
enum Framed {
    Record(Box<pb::UsageRecord>, usize),
    /// A prefix of a record: the bytes end before it does.
    Truncated,
    Invalid,
}

fn unframe(bytes: &[u8]) -> Framed {
    if bytes.len() < RECORD_HEADER {
        return if RECORD_MAGIC.starts_with(&bytes[..bytes.len().min(4)]) {
            Framed::Truncated
        } else {
            Framed::Invalid
        };
    }
    if bytes[..4] != RECORD_MAGIC {
        return Framed::Invalid;
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let len = word(4) as usize;
    if len > MAX_RECORD {
        return Framed::Invalid;
    }
    let Some(payload) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Framed::Truncated;
    };
    let crc = word(8);
    if crc32fast::hash(payload) != crc {
        return Framed::Invalid;
    }
    match pb::UsageRecord::decode(payload) {
        Ok(r) => Framed::Record(Box::new(r), RECORD_HEADER + len),
        Err(_) => Framed::Invalid,
    }
}

/// The records a segment holds, and what could not be read.
#[derive(Debug, Default)]
struct SegmentRead {
    records: Vec<pb::UsageRecord>,
    /// Bytes skipped between whole records (damage, not a crash).
    damaged_bytes: u64,
    /// Damaged stretches skipped.
    damaged_spans: u64,
    /// Bytes of a last record cut short by a crash.
    torn_bytes: u64,
}

impl SegmentRead {
    fn parse(bytes: &[u8]) -> SegmentRead {
        match bytes.strip_prefix(SEGMENT_MAGIC) {
            Some(body) => Self::parse_framed(body),
            None => Self::parse_legacy(bytes),
        }
    }

    /// Reads record after record; after damage, resumes at the next whole
    /// record (its magic, length and checksum all agree).
    fn parse_framed(bytes: &[u8]) -> SegmentRead {
        let mut read = SegmentRead::default();
        let mut pos = 0;
        while pos < bytes.len() {
            let framed = unframe(&bytes[pos..]);
            if let Framed::Record(record, size) = framed {
                read.records.push(*record);
                pos += size;
                continue;
            }
            let next = memchr::memmem::find_iter(&bytes[pos + 1..], &RECORD_MAGIC)
                .map(|at| pos + 1 + at)
                .find(|&at| matches!(unframe(&bytes[at..]), Framed::Record(..)));
            match (next, framed) {
                (Some(at), _) => {
                    read.damaged_bytes += (at - pos) as u64;
                    read.damaged_spans += 1;
                    pos = at;
                }
                (None, Framed::Truncated) => {
                    read.torn_bytes = (bytes.len() - pos) as u64;
                    break;
                }
                (None, _) => {
                    read.damaged_bytes += (bytes.len() - pos) as u64;
                    read.damaged_spans += 1;
                    break;
                }
            }
        }
        read
    }

    /// The earlier format: length-delimited records; a torn tail ends it.
    fn parse_legacy(bytes: &[u8]) -> SegmentRead {
        let mut read = SegmentRead::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let left = rest.len();
            match pb::UsageRecord::decode_length_delimited(&mut rest) {
                Ok(r) => read.records.push(r),
                Err(_) => {
                    read.torn_bytes = left as u64;
                    break;
                }
            }
        }
        read
    }
}

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
    /// Bytes of whole records (and the header) in the file: a failed write
    /// is cut back to this.
    len: u64,
}

/// The append-only journal: numbered segment files in one directory.
pub struct Journal {
    dir: PathBuf,
    /// The node's name as the spool spells it.
    owner: String,
    prefix: String,
    /// Stamped on every record, so replay by another node keeps who served it.
    node_id: String,
    /// Held while the node runs: a node that can take it knows we are gone.
    _lock: File,
    /// The number of the next segment, own or adopted.
    next_seq: AtomicU64,
    current: Mutex<Current>,
    /// Segments closed full on a request's path, synced by the next beat.
    unsynced: Mutex<Vec<Arc<File>>>,
    segments: Mutex<BTreeMap<u64, SegmentState>>,
    /// Bytes on disk; above `max_bytes` new requests are refused.
    bytes: AtomicU64,
    max_bytes: u64,
    /// A write or sync failed: nothing is appended until a fresh segment
    /// has been written and synced.
    failed: AtomicBool,
    /// Records that could not be written; kept here until they are
    /// journaled or delivered.
    held: Mutex<Vec<pb::UsageRecord>>,
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

/// Segment files in `dir` by name, with their writer (as spelt in the
/// spool) and number: `usage-<owner>-<seq>.log`.
fn segment_files(dir: &Path) -> std::io::Result<Vec<(String, (String, u64))>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        let parsed = name
            .strip_prefix("usage-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.rsplit_once('-'))
            .and_then(|(owner, seq)| Some((owner.to_string(), seq.parse::<u64>().ok()?)));
        if let Some(parsed) = parsed {
            found.push((name, parsed));
        }
    }
    Ok(found)
}

/// Takes `owner`'s lock file, unless a running node holds it.
fn claim(dir: &Path, owner: &str) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(format!("usage-{owner}.lock"));
    loop {
        let file = aiproxy_shared::fs::private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // An adopter may have removed the file between our open and lock:
        // the lock counts only on the file the path still names.
        let held = file.metadata()?.ino();
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == held => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Renames into `owner`'s numbering every segment whose writer is not
/// running (its lock is free), numbering them from `next_seq`; returns each
/// adopted segment's number and size. Ingestion drops records it already
/// holds, so a segment partly delivered by its writer is safe to replay.
fn adopt(dir: &Path, owner: &str, next_seq: &AtomicU64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut orphans: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (name, (writer, seq)) in segment_files(dir)? {
        if writer != owner {
            orphans.entry(writer).or_default().push((seq, name));
        }
    }
    let mut adopted = Vec::new();
    for (writer, mut files) in orphans {
        let Some(_lock) = claim(dir, &writer)? else {
            continue;
        };
        files.sort();
        for (_, name) in &files {
            let seq = next_seq.fetch_add(1, Ordering::Relaxed);
            let to = dir.join(format!("usage-{owner}-{seq:012}.log"));
            std::fs::rename(dir.join(name), &to)?;
            adopted.push((seq, std::fs::metadata(&to)?.len()));
        }
        tracing::warn!(
            node = %writer,
            segments = files.len(),
            "adopted the usage journal of a node that is no longer running; replaying it"
        );
        // Removed while held, so the writer, if it returns, starts afresh.
        let _ = std::fs::remove_file(dir.join(format!("usage-{writer}.lock")));
    }
    Ok(adopted)
}

/// Why the journal takes no records now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Undelivered usage has reached `journal_max_bytes`.
    Full,
    /// The disk refused a write or a sync.
    Failing,
}

impl Journal {
    /// Opens the journal in `dir`; segments left by an earlier run, or by
    /// any node that is no longer running, are queued for replay. Fails if
    /// a running node already uses `dir` under this name.
    pub fn open(dir: &Path, node_id: &str, max_bytes: u64) -> std::io::Result<Journal> {
        aiproxy_shared::fs::private_dir(dir)?;
        let owner = safe_name(node_id);
        let lock = claim(dir, &owner)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another running data plane uses {} as node {node_id:?}: give each data plane its own AIPROXY_NODE_ID or data directory",
                    dir.display()
                ),
            )
        })?;
        let prefix = format!("usage-{owner}-");
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for (name, seq) in segment_files(dir)?
            .into_iter()
            .filter(|(_, (o, _))| *o == owner)
            .map(|(name, (_, seq))| (name, seq))
        {
            bytes += std::fs::metadata(dir.join(name))?.len();
            segments.insert(
                seq,
                SegmentState {
                    replay: true,
                    ..Default::default()
                },
            );
        }
        let next_seq = AtomicU64::new(segments.keys().next_back().map_or(1, |s| s + 1));
        for (seq, len) in adopt(dir, &owner, &next_seq)? {
            bytes += len;
            segments.insert(
                seq,
                SegmentState {
                    replay: true,
                    ..Default::default()
                },
            );
        }
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let file = Self::create(dir, &prefix, seq)?;
        bytes += SEGMENT_MAGIC.len() as u64;
        segments.insert(seq, SegmentState::default());
        Ok(Journal {
            dir: dir.to_path_buf(),
            owner,
            prefix,
            node_id: node_id.to_string(),
            _lock: lock,
            next_seq,
            current: Mutex::new(Current {
                file: Arc::new(file),
                seq,
                opened: Instant::now(),
                len: SEGMENT_MAGIC.len() as u64,
            }),
            unsynced: Mutex::default(),
            segments: Mutex::new(segments),
            bytes: bytes.into(),
            max_bytes,
            failed: AtomicBool::new(false),
            held: Mutex::default(),
        })
    }

    /// Takes over the segments of nodes that stopped since the last look
    /// (several nodes may share a spool). Blocks on the disk.
    fn adopt_orphans(&self) -> std::io::Result<usize> {
        let adopted = adopt(&self.dir, &self.owner, &self.next_seq)?;
        let mut segments = self.segments.locked();
        for (seq, len) in &adopted {
            self.bytes.fetch_add(*len, Ordering::Relaxed);
            segments.insert(
                *seq,
                SegmentState {
                    replay: true,
                    ..Default::default()
                },
            );
        }
        Ok(adopted.len())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{}{seq:012}.log", self.prefix))
    }

    /// A new segment file with its header written; removed again if the
    /// header cannot be written.
    fn create(dir: &Path, prefix: &str, seq: u64) -> std::io::Result<File> {
        let path = dir.join(format!("{prefix}{seq:012}.log"));
        let mut file = aiproxy_shared::fs::append_private(&path)?;
        if let Err(e) = file.write_all(SEGMENT_MAGIC) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(file)
    }

    /// Bytes of undelivered usage on disk.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the journal takes records now, and why not.
    pub fn availability(&self) -> Result<(), Unavailable> {
        if self.failed.load(Ordering::Relaxed) {
            Err(Unavailable::Failing)
        } else if self.bytes.load(Ordering::Relaxed) >= self.max_bytes {
            Err(Unavailable::Full)
        } else {
            Ok(())
        }
    }

    /// Appends one record (one write, no fsync: it survives the process
    /// being killed; the beat fsyncs for power loss). Returns its segment.
    /// A write that fails is cut back to the last whole record, and the
    /// journal takes nothing more until `recover` succeeds.
    fn append(&self, record: &pb::UsageRecord) -> std::io::Result<u64> {
        let buf = frame(record);
        let mut current = self.current.locked();
        if self.failed.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("usage journal is failing"));
        }
        if let Err(e) = (&*current.file).write_all(&buf) {
            self.failed.store(true, Ordering::Relaxed);
            // A partial write must not stay in front of later records; if it
            // cannot be cut, recovery starts a new segment anyway and replay
            // skips the torn end.
            if let Err(cut) = current.file.set_len(current.len) {
                tracing::error!(error = %cut, "cannot cut a partial usage journal write back");
            }
            return Err(e);
        }
        current.len += buf.len() as u64;
        let seq = current.seq;
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut segments = self.segments.locked();
        let state = segments.entry(seq).or_default();
        state.written += 1;
        if state.written >= SEGMENT_RECORDS {
            drop(segments);
            // Full: the next beat syncs it, off the request's path.
            match self.next_segment(&mut current) {
                Ok(closed) => self.unsynced.locked().push(closed),
                Err(e) => {
                    self.failed.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot open the next usage journal segment");
                }
            }
        }
        Ok(seq)
    }

    /// After a failure: opens a fresh segment and syncs it; the journal
    /// takes records again only if both work. Blocks on the disk.
    fn recover(&self) -> std::io::Result<()> {
        let mut current = self.current.locked();
        let closed = self.next_segment(&mut current)?;
        current.file.sync_data()?;
        self.unsynced.locked().push(closed);
        self.failed.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps a record that could not be written, for the reporter.
    fn hold(&self, record: pb::UsageRecord) {
        self.held.locked().push(record);
    }

    fn take_held(&self) -> Vec<pb::UsageRecord> {
        std::mem::take(&mut *self.held.locked())
    }

    /// Closes the current segment (when old enough, or `force`) and opens
    /// the next, then syncs what was written. Blocks on the disk: not for a
    /// runtime worker. A failure stops appends until `recover`.
    fn rotate(&self, force: bool) -> std::io::Result<()> {
        let result = self.rotate_and_sync(force);
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn rotate_and_sync(&self, force: bool) -> std::io::Result<()> {
        let synced = {
            let mut current = self.current.locked();
            let written = self
                .segments
                .locked()
                .get(&current.seq)
                .map_or(0, |s| s.written);
            let mut files = std::mem::take(&mut *self.unsynced.locked());
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
        let next = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(Self::create(&self.dir, &self.prefix, next)?);
        self.bytes
            .fetch_add(SEGMENT_MAGIC.len() as u64, Ordering::Relaxed);
        self.segments.locked().insert(next, SegmentState::default());
        current.seq = next;
        current.opened = Instant::now();
        current.len = SEGMENT_MAGIC.len() as u64;
        Ok(std::mem::replace(&mut current.file, file))
    }

    fn settle(&self, seq: u64, records: u64, taken: bool) {
        let mut segments = self.segments.locked();
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
        let current = self.current.locked().seq;
        self.segments
            .locked()
            .iter()
            .filter(|(seq, _)| **seq != current)
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
            Ok(()) => self.forget(seq, len),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot remove a delivered usage journal segment")
            }
        }
    }

    /// Keeps a damaged segment, delivered as far as it could be read, as
    /// `<name>.damaged` for the operator; it is not read again.
    fn set_aside(&self, seq: u64) {
        let path = self.path(seq);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        // Segment numbers start over once the journal is empty: the time
        // keeps an earlier damaged segment of the same number.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = path.with_extension(format!("log.{stamp}.damaged"));
        match std::fs::rename(&path, &aside) {
            Ok(()) => self.forget(seq, len),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot set a damaged usage journal segment aside")
            }
        }
    }

    fn forget(&self, seq: u64, len: u64) {
        // A file may be longer than what was counted (a failed write that
        // could not be cut back): never wrap below zero.
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            });
        self.segments.locked().remove(&seq);
    }

    /// Every whole record of a segment, past any damage.
    fn read(&self, seq: u64) -> std::io::Result<SegmentRead> {
        let mut bytes = Vec::new();
        File::open(self.path(seq))?.read_to_end(&mut bytes)?;
        Ok(SegmentRead::parse(&bytes))
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
        std::mem::take(&mut *self.items.locked())
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

    /// Whether records can be kept now; when not, requests are refused
    /// rather than served unbilled.
    pub fn availability(&self) -> Result<(), Unavailable> {
        self.journal.availability()
    }

    /// Journals the record, then queues it for delivery. A record the disk
    /// refuses is held in memory until it is journaled or delivered.
    pub fn report(&self, mut record: pb::UsageRecord) {
        record.node_id.clone_from(&self.journal.node_id);
        match self.journal.append(&record) {
            Ok(seq) => self.queue.push(seq, record),
            Err(e) => {
                tracing::error!(error = %e, request_id = %record.request_id, "cannot journal a usage record; holding it in memory, refusing new requests until the journal recovers");
                self.journal.hold(record);
            }
        }
    }
}

impl Queue {
    fn push(&self, seq: u64, record: pb::UsageRecord) {
        let mut items = self.items.locked();
        items.push((seq, record));
        let full = items.len() == BATCH_MAX;
        drop(items);
        if full {
            self.full.notify_one();
        }
    }
}

/// Delivers journaled records until cancelled, then flushes what it holds.
/// The journal's own upkeep (sync, rotation, recovery after a disk error)
/// runs beside it on its own beat, so a slow or unreachable control plane
/// never delays it.
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
        journal: journal.clone(),
    };
    let keeper_stop = CancellationToken::new();
    #[allow(
        clippy::disallowed_methods,
        reason = "joined before the reporter returns"
    )]
    let keeper = tokio::spawn(keep_journal(journal, queue.clone(), keeper_stop.clone()));
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        let beat = tokio::select! {
            _ = queue.full.notified() => false,
            _ = tick.tick() => true,
            _ = cancel.cancelled() => break,
        };
        reporter.flush_all(queue.take()).await;
        if beat {
            reporter.deliver_backlog().await;
        }
    }
    // The keeper's last beat syncs what was written and journals what it
    // can of the records held in memory; then they are delivered.
    keeper_stop.cancel();
    let _ = keeper.await;
    reporter.flush_all(queue.take()).await;
    reporter.deliver_backlog().await;
    report_lost(&reporter.journal);
}

/// Logs the records neither journaled nor delivered (the disk and the
/// control plane both failed), by request id.
pub fn report_lost(journal: &Journal) {
    let lost = journal.take_held();
    if !lost.is_empty() {
        let ids: Vec<&str> = lost.iter().map(|r| r.request_id.as_str()).collect();
        tracing::error!(records = lost.len(), request_ids = ?ids, "usage neither journaled nor delivered at shutdown");
    }
}

/// The journal's upkeep, every `FLUSH_INTERVAL` and once more when
/// stopped: after a disk error a fresh segment (serving resumes when it can
/// be written and synced) and the held records journaled into it; then the
/// sync of what was written, and the closing of an old segment.
async fn keep_journal(journal: Arc<Journal>, queue: Arc<Queue>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    let mut beats = 0u32;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        beats = beats.wrapping_add(1);
        if !last && beats.is_multiple_of(ADOPT_EVERY) {
            let j = journal.clone();
            match tokio::task::spawn_blocking(move || j.adopt_orphans()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot adopt usage journal segments left in the spool")
                }
                Err(e) => tracing::error!(error = %e, "usage journal adoption panicked"),
            }
        }
        if journal.availability() == Err(Unavailable::Failing) {
            let j = journal.clone();
            match tokio::task::spawn_blocking(move || j.recover()).await {
                Ok(Ok(())) => tracing::warn!("usage journal writable again; serving resumes"),
                Ok(Err(e)) => tracing::debug!(error = %e, "usage journal still failing"),
                Err(e) => tracing::error!(error = %e, "usage journal recovery panicked"),
            }
        }
        let held = journal.take_held();
        let mut left = Vec::new();
        for record in held {
            if !left.is_empty() {
                left.push(record);
                continue;
            }
            match journal.append(&record) {
                Ok(seq) => queue.push(seq, record),
                Err(_) => left.push(record),
            }
        }
        for record in left {
            journal.hold(record);
        }
        let j = journal.clone();
        let rotated = tokio::task::spawn_blocking(move || j.rotate(last))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = rotated {
            tracing::error!(error = %e, "cannot rotate or sync the usage journal; refusing requests until it recovers");
        }
        if last {
            return;
        }
    }
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

    /// Sends everything in batches of at most `BATCH_MAX`; once one fails,
    /// the rest stay journaled for replay without waiting on more sends.
    async fn flush_all(&self, mut pending: Vec<(u64, pb::UsageRecord)>) {
        let mut reachable = true;
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(BATCH_MAX));
            let batch = std::mem::replace(&mut pending, rest);
            if reachable {
                reachable = self.flush(batch).await;
            } else {
                self.settle(&batch, false);
            }
        }
    }

    fn settle(&self, batch: &[(u64, pb::UsageRecord)], taken: bool) {
        let mut per_segment: BTreeMap<u64, u64> = BTreeMap::new();
        for (seq, _) in batch {
            *per_segment.entry(*seq).or_default() += 1;
        }
        for (seq, count) in per_segment {
            self.journal.settle(seq, count, taken);
        }
    }

    /// One batch; whether the control plane took it.
    async fn flush(&self, batch: Vec<(u64, pb::UsageRecord)>) -> bool {
        let records: Vec<pb::UsageRecord> = batch.iter().map(|(_, r)| r.clone()).collect();
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
        self.settle(&batch, taken);
        taken
    }

    /// Records the disk refused go straight to the control plane while the
    /// journal is failing; deleted segments are removed, the rest replayed.
    async fn deliver_backlog(&self) {
        if self.journal.availability() == Err(Unavailable::Failing) {
            let held = self.journal.take_held();
            if !held.is_empty() {
                let n = held.len();
                match self.send(held.clone()).await {
                    Ok(_) => {
                        tracing::info!(records = n, "usage the disk refused delivered from memory")
                    }
                    Err(e) => {
                        tracing::warn!(records = n, error = %e, "usage the disk refused is still held in memory");
                        for record in held {
                            self.journal.hold(record);
                        }
                    }
                }
            }
        }
        for (seq, delivered) in self.journal.closed() {
            if delivered {
                self.journal.remove(seq);
                continue;
            }
            let read = match self.journal.read(seq) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, seq, "cannot read a usage journal segment; kept for the next try");
                    continue;
                }
            };
            for chunk in read.records.chunks(BATCH_MAX) {
                if let Err(e) = self.send(chunk.to_vec()).await {
                    tracing::debug!(error = %e, "usage replay deferred");
                    return;
                }
            }
            // All taken (ingestion is idempotent: a crash before this removal
            // only replays duplicates, never bills twice).
            let records = read.records.len();
            if read.torn_bytes > 0 {
                tracing::warn!(
                    seq,
                    records,
                    torn_bytes = read.torn_bytes,
                    "usage journal segment ended in a record cut short by a crash"
                );
            }
            if read.damaged_spans > 0 {
                tracing::error!(
                    seq,
                    records,
                    damaged_spans = read.damaged_spans,
                    damaged_bytes = read.damaged_bytes,
                    "usage journal segment was damaged; every whole record in it was replayed, the segment is kept as .damaged"
                );
                self.journal.set_aside(seq);
            } else {
                self.journal.remove(seq);
                tracing::info!(records, seq, "usage journal segment replayed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    fn record(id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            input_tokens: 5,
            ..Default::default()
        }
    }

    fn ids(read: &SegmentRead) -> Vec<&str> {
        read.records.iter().map(|r| r.request_id.as_str()).collect()
    }

    fn append_raw(journal: &Journal, seq: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal.path(seq))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn segments_round_trip_ignore_torn_tails_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "node/1", 1 << 20).unwrap();
        let seq = journal.append(&record("a")).unwrap();
        journal.append(&record("b")).unwrap();
        assert!(journal.closed().is_empty(), "the current segment is open");
        // A crash mid-write leaves the first part of a record.
        let torn = frame(&record("c"));
        append_raw(&journal, seq, &torn[..torn.len() - 3]);
        let read = journal.read(seq).unwrap();
        assert_eq!(ids(&read), vec!["a", "b"]);
        assert_eq!(read.torn_bytes, torn.len() as u64 - 3);
        assert_eq!(read.damaged_spans, 0, "a torn tail is not damage");
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
    fn replay_resynchronises_past_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        let seq = journal.append(&record("before")).unwrap();
        // A torn write, then garbage, then a record whose bytes were flipped,
        // each followed by records that must all survive.
        let torn = frame(&record("torn"));
        append_raw(&journal, seq, &torn[..torn.len() / 2]);
        for i in 0..3 {
            append_raw(&journal, seq, &frame(&record(&format!("after-tear-{i}"))));
        }
        append_raw(&journal, seq, b"\xff\x00garbage\xA1\x5E");
        append_raw(&journal, seq, &frame(&record("after-garbage")));
        let mut flipped = frame(&record("flipped"));
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        append_raw(&journal, seq, &flipped);
        append_raw(&journal, seq, &frame(&record("last")));
        let read = journal.read(seq).unwrap();
        assert_eq!(
            ids(&read),
            vec![
                "before",
                "after-tear-0",
                "after-tear-1",
                "after-tear-2",
                "after-garbage",
                "last"
            ]
        );
        assert_eq!(read.damaged_spans, 3);
        assert_eq!(read.torn_bytes, 0);
        assert!(read.damaged_bytes > 0);
    }

    #[test]
    fn segments_of_the_earlier_format_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for id in ["x", "y"] {
            record(id).encode_length_delimited(&mut bytes).unwrap();
        }
        bytes.extend_from_slice(&[0x40, 1]);
        std::fs::write(dir.path().join("usage-n-000000000007.log"), &bytes).unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        assert_eq!(journal.closed(), vec![(7, false)]);
        let read = journal.read(7).unwrap();
        assert_eq!(ids(&read), vec!["x", "y"]);
        assert_eq!(read.torn_bytes, 2);
    }

    #[test]
    fn a_failed_write_is_cut_back_and_the_journal_refuses_until_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        let seq = journal.append(&record("a")).unwrap();
        let len = std::fs::metadata(journal.path(seq)).unwrap().len();
        // The file becomes unwritable mid-record: the bytes that made it
        // are cut away and nothing more goes in.
        let broken = Arc::new(
            OpenOptions::new()
                .read(true)
                .open(journal.path(seq))
                .unwrap(),
        );
        let good = std::mem::replace(&mut journal.current.locked().file, broken);
        assert!(journal.append(&record("b")).is_err());
        assert_eq!(journal.availability(), Err(Unavailable::Failing));
        journal.current.locked().file = good;
        assert!(
            journal.append(&record("c")).is_err(),
            "nothing is appended until the journal recovers"
        );
        assert_eq!(std::fs::metadata(journal.path(seq)).unwrap().len(), len);
        journal.recover().unwrap();
        assert_eq!(journal.availability(), Ok(()));
        let next = journal.append(&record("d")).unwrap();
        assert_eq!(next, seq + 1, "recovery starts a fresh segment");
        assert_eq!(ids(&journal.read(seq).unwrap()), vec!["a"]);
        assert_eq!(ids(&journal.read(next).unwrap()), vec!["d"]);
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
    fn a_damaged_segment_is_set_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        let seq = journal.append(&record("a")).unwrap();
        journal.set_aside(seq);
        assert!(!journal.path(seq).exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".damaged"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        drop(journal);
        let journal = Journal::open(dir.path(), "n", 1 << 20).unwrap();
        assert!(
            journal.closed().is_empty(),
            "set-aside segments are not replayed"
        );
    }

    #[test]
    fn a_full_segment_closes_on_append_and_the_next_rotation_syncs_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 1 << 30).unwrap();
        let first = journal.append(&record("r0")).unwrap();
        for i in 1..SEGMENT_RECORDS {
            assert_eq!(journal.append(&record(&format!("r{i}"))).unwrap(), first);
        }
        assert_eq!(journal.unsynced.locked().len(), 1, "closed, not yet synced");
        let next = journal.append(&record("next")).unwrap();
        assert_eq!(next, first + 1);
        journal.rotate(false).unwrap();
        assert!(journal.unsynced.locked().is_empty());
        assert_eq!(
            journal.read(first).unwrap().records.len(),
            SEGMENT_RECORDS as usize
        );
        journal.settle(first, SEGMENT_RECORDS, true);
        assert_eq!(journal.closed(), vec![(first, true)]);
    }

    #[test]
    fn a_full_journal_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "n", 40).unwrap();
        assert_eq!(journal.availability(), Ok(()));
        journal.append(&record("a-request-id-long-enough")).unwrap();
        assert_eq!(journal.availability(), Err(Unavailable::Full));
    }

    #[cfg(unix)]
    #[test]
    fn the_spool_and_its_segments_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let journal = Journal::open(&spool, "n", 1 << 20).unwrap();
        let seq = journal.append(&record("a")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&journal.path(seq)), 0o600);
    }

    #[test]
    fn a_stopped_node_s_journal_is_adopted_by_a_node_of_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(Journal::open(dir.path(), "dp-7f9c", 1 << 20).unwrap());
        let (sink, _queue) = UsageSink::new(old.clone());
        sink.report(record("a"));
        sink.report(record("b"));
        // Killed: nothing delivered, nothing closed.
        drop(sink);
        drop(old);

        let new = Journal::open(dir.path(), "dp-2b41", 1 << 20).unwrap();
        let closed = new.closed();
        assert_eq!(closed.len(), 1, "the old node's open segment: {closed:?}");
        let mut served = Vec::new();
        for (seq, delivered) in closed {
            assert!(!delivered, "adopted segments are replayed");
            served.extend(new.read(seq).unwrap().records);
        }
        let named: Vec<(&str, &str)> = served
            .iter()
            .map(|r| (r.request_id.as_str(), r.node_id.as_str()))
            .collect();
        assert_eq!(named, vec![("a", "dp-7f9c"), ("b", "dp-7f9c")]);
        // Its files now carry the adopter's name: no third node takes them.
        drop(new);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("usage-dp-2b41-")),
            "{names:?}"
        );
    }

    #[test]
    fn a_running_node_keeps_its_journal_and_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let running = Journal::open(dir.path(), "dp-1", 1 << 20).unwrap();
        running.append(&record("a")).unwrap();
        let err = Journal::open(dir.path(), "dp-1", 1 << 20).err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        // A neighbour sharing the spool leaves a running node's segments alone…
        let neighbour = Journal::open(dir.path(), "dp-10", 1 << 20).unwrap();
        assert!(neighbour.closed().is_empty());
        assert_eq!(neighbour.adopt_orphans().unwrap(), 0);
        // …and takes them on its next look once that node has stopped.
        drop(running);
        assert_eq!(neighbour.adopt_orphans().unwrap(), 1);
        let replayed: Vec<String> = neighbour
            .closed()
            .into_iter()
            .flat_map(|(seq, _)| neighbour.read(seq).unwrap().records)
            .map(|r| r.request_id)
            .collect();
        assert_eq!(replayed, vec!["a".to_string()]);
        // The stopped node may come back under its name.
        Journal::open(dir.path(), "dp-1", 1 << 20).unwrap();
    }
}
