//! The local spool: append-only segment files that hold every usage record until the database
//! has it.
//!
//! # Format
//! A segment is a file `NNNNNNNNNNNNNNNNNNNN.spool` (a sequence number, so names sort by age) of
//! lines `CRC32 SP JSON LF`, the CRC (IEEE, 8 hex digits) taken over the JSON. Whole lines are
//! written with one `write` call (one line, or a group of staged ones: [`Spool::stage_prepared`]),
//! so a crashed process leaves whole lines; a torn last line (power loss, a full disk) fails its
//! CRC and is skipped and counted.
//!
//! # Lanes
//! Writers are spread over lanes (one per CPU by default), each with its own open segment behind
//! its own lock, so request threads do not contend. A segment that reaches its size limit is
//! sealed and a new one started.
//!
//! # Two ways out: memory, and the files after a crash
//! A record appended to a lane's segment is also queued in that lane's memory, in file order
//! ([`Spool::take_queued`]): the writer inserts it from there and never reads the file back.
//! The segment's committed offset advances as its queued records are committed
//! ([`Spool::commit_queued`]); a sealed segment committed to its end is deleted. The committed
//! offsets are saved in `COMMITTED` after each drain (a hint, not synced: a lost or stale hint
//! only replays more).
//!
//! The files are read ([`Spool::read`]) only for segments whose records are not in memory:
//! segments found at start (a crash or a database that was away), replayed from their saved
//! committed offset, and segments a lane wrote while its memory queue was full
//! ([`QUEUE_MAX`], a database too slow or away: the lane then writes to a new segment that is
//! drained from the file, and goes back to memory once its queue has room). The reader reads a
//! segment only up to the length its writer published after the `write` returned (never a line
//! still being copied), and advances the offsets only after the database commit
//! ([`Spool::commit`]). The database skips records it already has (by id), so a replay never
//! counts twice.
//!
//! The directory is locked (`LOCK`, an advisory file lock) so two processes never share a spool.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rampart_store::UsageRecord;

use crate::record::Prepared;

const SUFFIX: &str = ".spool";
/// The committed offsets of the segments (`SEQ OFFSET` lines), saved after each drain.
const HINT: &str = "COMMITTED";
/// Bytes read from a segment at a time.
const READ_STEP: u64 = 256 * 1024;
/// Records a lane keeps in memory for the writer; past this the lane writes to a segment that is
/// drained from its file, until its queue is down to half.
pub const QUEUE_MAX: usize = 32 * 1024;

/// The spool. See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    lanes: Box<[Mutex<Lane>]>,
    segments: Mutex<BTreeMap<u64, Segment>>,
    next_seq: AtomicU64,
    segment_bytes: u64,
    sync_each_write: bool,
    /// Records a lane queues in memory at most ([`QUEUE_MAX`]).
    queue_max: usize,
    /// Bytes in segment files not yet deleted.
    bytes: AtomicU64,
    /// Records in the spool not yet committed to the database.
    pending: AtomicU64,
    /// `write` calls made to segments.
    writes: AtomicU64,
    /// The reader's buffer, kept between batches.
    scratch: Mutex<Vec<u8>>,
    /// What [`Spool::save_committed`] last wrote: the same offsets are not written again.
    saved_hint: Mutex<Option<String>>,
    _lock: File,
}

#[derive(Debug, Default)]
struct Lane {
    active: Option<Active>,
    /// Records appended to memory-mode segments, in file order, not yet taken by the writer.
    queued: Queued,
    /// Lines staged for the lane's next group write ([`Spool::stage_prepared`]), and their
    /// records with each line's length.
    staged: Vec<u8>,
    staged_records: Vec<(UsageRecord, usize)>,
    /// The group being staged: groups before it are written.
    group: u64,
}

#[derive(Debug)]
struct Active {
    file: File,
    seq: u64,
    published: Arc<AtomicU64>,
    /// Its records are queued in memory (else drained from the file).
    in_memory: bool,
}

/// Records taken from the lanes' memory, with where each ends in its segment.
#[derive(Debug, Default)]
pub struct Queued {
    /// The records, each lane's in file order.
    pub records: Vec<UsageRecord>,
    /// `(segment, offset just past the record's line)` of each record.
    marks: Vec<(u64, u64)>,
}

impl Queued {
    /// How many records.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Move `other`'s records to the end of these.
    pub fn append(&mut self, other: &mut Queued) {
        self.records.append(&mut other.records);
        self.marks.append(&mut other.marks);
    }

    /// The records `from..to` with their marks (a batch of these, committed by
    /// [`Spool::commit_queued`]).
    #[must_use]
    pub fn slice(&self, from: usize, to: usize) -> QueuedSlice<'_> {
        QueuedSlice {
            records: &self.records[from..to],
            marks: &self.marks[from..to],
        }
    }

    /// Drop the records and keep the room (to be handed back by [`Spool::take_queued`]).
    pub fn clear(&mut self) {
        self.records.clear();
        self.marks.clear();
    }
}

/// Some of a [`Queued`]'s records, with their marks.
#[derive(Debug, Clone, Copy)]
pub struct QueuedSlice<'a> {
    /// The records.
    pub records: &'a [UsageRecord],
    marks: &'a [(u64, u64)],
}

/// A record the spool could not take, and why (it goes back to the caller).
#[derive(Debug)]
pub struct Unwritten {
    /// Why.
    pub error: io::Error,
    /// The record.
    pub record: UsageRecord,
}

/// Where a staged record's line waits: its lane and group (see [`Spool::stage_prepared`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedAt {
    lane: usize,
    group: u64,
}

/// Where a line's CRC goes, written before the JSON it is taken over (see [`seal_line`]).
pub(crate) const CRC_PLACEHOLDER: &[u8; 9] = b"00000000 ";

/// Fill in the CRC of a line started with [`CRC_PLACEHOLDER`] and its JSON, and end it.
pub(crate) fn seal_line(buf: &mut Vec<u8>) {
    let crc = crc32fast::hash(&buf[CRC_PLACEHOLDER.len()..]);
    seal_line_with(buf, crc);
}

/// [`seal_line`] with the CRC of the line's JSON worked out already.
pub(crate) fn seal_line_with(buf: &mut Vec<u8>, crc: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in buf[..8].iter_mut().enumerate() {
        *slot = HEX[((crc >> ((7 - i) * 4)) & 0xf) as usize];
    }
    buf.push(b'\n');
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes that are completely written (the drainer reads no further).
    published: Arc<AtomicU64>,
    /// Bytes whose records are committed to the database.
    committed: u64,
    sealed: bool,
    /// Its records are queued in memory: the reader leaves it alone.
    in_memory: bool,
}

/// Records read from the spool, and how far each segment was read.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, oldest segment first.
    pub records: Vec<UsageRecord>,
    /// Corrupt lines skipped (failed CRC or JSON, or a torn last line).
    pub corrupt: u64,
    /// Complete lines consumed (records and corrupt ones).
    lines: u64,
    progress: Vec<(u64, u64)>,
}

fn lock(m: &Mutex<BTreeMap<u64, Segment>>) -> MutexGuard<'_, BTreeMap<u64, Segment>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This thread's lane (threads are given lanes round-robin on first use).
fn lane_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    LANE.with(|l| *l)
}

impl Spool {
    /// Open (creating it) the spool in `dir` with `lanes` writer lanes; segments found there are
    /// sealed and will be replayed.
    ///
    /// # Errors
    /// When the directory cannot be created, locked (another process uses it) or listed.
    pub fn open(
        dir: &Path,
        lanes: usize,
        segment_bytes: u64,
        sync_each_write: bool,
    ) -> io::Result<Spool> {
        // Usage records say who called what: readable by the owner only.
        create_private_dir(dir)?;
        let lock_file = private(OpenOptions::new().create(true).truncate(false).write(true))
            .open(dir.join("LOCK"))?;
        lock_file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::other(format!(
                "the ledger spool {} is in use by another process",
                dir.display()
            )),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let hint = read_hint(dir);
        let mut segments = BTreeMap::new();
        let (mut bytes, mut pending, mut max_seq) = (0u64, 0u64, 0u64);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let mut content = Vec::new();
            File::open(&path)?.read_to_end(&mut content)?;
            let len = content.len() as u64;
            // The saved committed offset, when it is the end of a line of this segment.
            let committed = hint
                .get(&seq)
                .copied()
                .filter(|&at| at <= len && (at == 0 || content[(at - 1) as usize] == b'\n'))
                .unwrap_or(0);
            bytes += len;
            pending += memchr::memchr_iter(b'\n', &content[committed as usize..]).count() as u64;
            max_seq = max_seq.max(seq);
            segments.insert(
                seq,
                Segment {
                    path,
                    published: Arc::new(AtomicU64::new(len)),
                    committed,
                    sealed: true,
                    in_memory: false,
                },
            );
        }
        Ok(Spool {
            dir: dir.to_owned(),
            lanes: (0..lanes.max(1))
                .map(|_| Mutex::new(Lane::default()))
                .collect(),
            segments: Mutex::new(segments),
            next_seq: AtomicU64::new(max_seq + 1),
            segment_bytes,
            sync_each_write,
            queue_max: QUEUE_MAX,
            bytes: AtomicU64::new(bytes),
            pending: AtomicU64::new(pending),
            writes: AtomicU64::new(0),
            scratch: Mutex::new(Vec::new()),
            saved_hint: Mutex::new(None),
            _lock: lock_file,
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in segment files not yet deleted.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records in the spool not yet committed to the database.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Writes made to segments since the spool was opened (a group of staged records is one).
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Encode a record as one spool line (into `buf`, cleared first).
    pub fn encode(record: &UsageRecord, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(CRC_PLACEHOLDER);
        crate::line::write_json(record, buf);
        seal_line(buf);
    }

    /// Append `record` to this thread's lane as one line (see [`Spool::encode`]), with one
    /// `write` (and an `fdatasync` with `fsync = "always"`), and queue it in the lane's memory
    /// for the writer (unless the queue is full: see the module docs). On an error the lane's
    /// segment is sealed, so a partial line never has a good one appended to it.
    ///
    /// # Errors
    /// When the segment cannot be created or written; the record comes back in the error.
    pub fn append(&self, record: UsageRecord) -> Result<(), Box<Unwritten>> {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            Self::encode(&record, &mut line);
            self.append_line(&line, record)
        })
    }

    /// [`Spool::append`] for a record whose head was encoded beforehand.
    ///
    /// # Errors
    /// As [`Spool::append`].
    pub fn append_prepared(
        &self,
        prepared: Prepared,
        outcome: impl FnOnce(&mut UsageRecord),
    ) -> Result<(), Box<Unwritten>> {
        let (record, line) = prepared.finish(outcome);
        self.append_line(&line, record)
    }

    /// The record moves into the lane's memory queue (no copy); it comes back with an error.
    fn append_line(&self, line: &[u8], record: UsageRecord) -> Result<(), Box<Unwritten>> {
        let mut lane = self.lane(lane_index());
        let lane = &mut *lane;
        let (seq, start, in_memory) = match self.write_lines(lane, line) {
            Ok(at) => at,
            Err(error) => return Err(Box::new(Unwritten { error, record })),
        };
        if in_memory {
            lane.queued.records.push(record);
            lane.queued.marks.push((seq, start + line.len() as u64));
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stage a record prepared beforehand, its outcome set by `outcome`, for this thread's
    /// lane's next group write: no system call. [`Spool::write_staged`] then writes every line
    /// staged in the lane since its last group write with one `write` (and one `fdatasync` with
    /// `fsync = "always"`), so records that end in the same turn of a worker share it. A staged
    /// record is not in the spool until then: its response must wait for that write.
    pub fn stage_prepared(
        &self,
        prepared: Prepared,
        outcome: impl FnOnce(&mut UsageRecord),
    ) -> StagedAt {
        let (record, line) = prepared.finish(outcome);
        let index = lane_index() % self.lanes.len();
        let mut lane = self.lane(index);
        lane.staged.extend_from_slice(&line);
        lane.staged_records.push((record, line.len()));
        StagedAt {
            lane: index,
            group: lane.group,
        }
    }

    /// Write the group a record was staged in, unless written already, with the lines staged
    /// after it in the same lane: one `write`, the records then queued as [`Spool::append`]
    /// queues them.
    ///
    /// # Errors
    /// When the segment cannot be created or written: the group's records come back (none of
    /// them is in the spool).
    pub fn write_staged(&self, at: StagedAt) -> Result<(), Vec<Unwritten>> {
        let mut lane = self.lane(at.lane);
        let lane = &mut *lane;
        if lane.group > at.group {
            return Ok(());
        }
        lane.group += 1;
        let buf = std::mem::take(&mut lane.staged);
        let mut records = std::mem::take(&mut lane.staged_records);
        let result = match self.write_lines(lane, &buf) {
            Ok((seq, start, in_memory)) => {
                self.pending
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                if in_memory {
                    let mut end = start;
                    for (record, len) in records.drain(..) {
                        end += len as u64;
                        lane.queued.records.push(record);
                        lane.queued.marks.push((seq, end));
                    }
                }
                Ok(())
            }
            Err(error) => Err(records
                .drain(..)
                .map(|(record, _)| Unwritten {
                    error: io::Error::new(error.kind(), error.to_string()),
                    record,
                })
                .collect()),
        };
        // The buffers go back (emptied) for the next group: no allocation per group.
        lane.staged = buf;
        lane.staged.clear();
        lane.staged_records = records;
        result
    }

    fn lane(&self, index: usize) -> MutexGuard<'_, Lane> {
        self.lanes[index % self.lanes.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write `buf` (whole lines) to the lane's segment with one `write`, rotating first when
    /// the segment is full or the lane's memory queue changes mode. The segment's sequence
    /// number, where `buf` starts in it, and whether its records are queued in memory.
    fn write_lines(&self, lane: &mut Lane, buf: &[u8]) -> io::Result<(u64, u64, bool)> {
        let queued = lane.queued.len();
        let rotate = match &lane.active {
            None => true,
            Some(a) => {
                a.published.load(Ordering::Relaxed) >= self.segment_bytes
                    // A full queue sends the lane to a file-drained segment, a queue down to
                    // half brings it back.
                    || (a.in_memory && queued >= self.queue_max)
                    || (!a.in_memory && queued <= self.queue_max / 2)
            }
        };
        if rotate {
            self.rotate(lane, queued < self.queue_max)?;
        }
        let Some(active) = lane.active.as_mut() else {
            return Err(io::Error::other("no open spool segment"));
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        let written = active.file.write_all(buf).and_then(|()| {
            if self.sync_each_write {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.seal(lane);
            return Err(e);
        }
        let start = active
            .published
            .fetch_add(buf.len() as u64, Ordering::Release);
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok((active.seq, start, active.in_memory))
    }

    /// Take the records queued in the lanes' memory (see the module docs); they are consumed
    /// by [`Spool::commit_queued`]. `spare` (emptied, its room kept) becomes the first lane's
    /// queue, and the other lanes keep their room, so the lanes do not grow their queues again
    /// from nothing (a copy of every record per doubling) after each drain.
    #[must_use]
    pub fn take_queued(&self, spare: Queued) -> Queued {
        let mut all = spare;
        all.clear();
        let mut first = true;
        for lane in &*self.lanes {
            let mut lane = lane
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if first {
                std::mem::swap(&mut all, &mut lane.queued);
                first = false;
            } else {
                all.append(&mut lane.queued);
            }
        }
        all
    }

    /// The records of `queued` are in the database: advance their segments' committed offsets
    /// and delete the sealed segments committed to their end.
    pub fn commit_queued(&self, queued: QueuedSlice<'_>) {
        let mut ends: HashMap<u64, u64> = HashMap::new();
        for &(seq, end) in queued.marks {
            let e = ends.entry(seq).or_insert(end);
            *e = (*e).max(end);
        }
        self.advance(ends.into_iter(), queued.records.len() as u64);
    }

    /// Seal the lane's segment (if any) and open a new one, its records queued in memory or not.
    fn rotate(&self, lane: &mut Lane, in_memory: bool) -> io::Result<()> {
        self.seal(lane);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{seq:020}{SUFFIX}"));
        let file = private(OpenOptions::new().create_new(true).append(true)).open(&path)?;
        if self.sync_each_write {
            File::open(&self.dir)?.sync_all()?;
        }
        let published = Arc::new(AtomicU64::new(0));
        lock(&self.segments).insert(
            seq,
            Segment {
                path,
                published: published.clone(),
                committed: 0,
                sealed: false,
                in_memory,
            },
        );
        lane.active = Some(Active {
            file,
            seq,
            published,
            in_memory,
        });
        Ok(())
    }

    fn seal(&self, lane: &mut Lane) {
        if let Some(active) = lane.active.take()
            && let Some(seg) = lock(&self.segments).get_mut(&active.seq)
        {
            seg.sealed = true;
        }
    }

    /// Seal every lane's segment (at shutdown, after the last request).
    pub fn seal_all(&self) {
        for lane in &*self.lanes {
            let mut lane = lane
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.seal(&mut lane);
        }
    }

    /// `fdatasync` every open segment and the directory (`fsync = "interval"`).
    ///
    /// # Errors
    /// The first failure.
    pub fn sync(&self) -> io::Result<()> {
        let open: Vec<PathBuf> = lock(&self.segments)
            .values()
            .filter(|s| !s.sealed)
            .map(|s| s.path.clone())
            .collect();
        for path in open {
            match File::open(&path) {
                Ok(f) => f.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Read up to `max` records from the oldest segments, past what is committed. Nothing is
    /// consumed until [`Spool::commit`].
    ///
    /// # Errors
    /// When a segment cannot be read.
    pub fn read(&self, max: usize) -> io::Result<Batch> {
        let plan: Vec<(u64, PathBuf, u64, u64, bool)> = lock(&self.segments)
            .iter()
            .filter(|(_, s)| !s.in_memory)
            .map(|(seq, s)| {
                (
                    *seq,
                    s.path.clone(),
                    s.committed,
                    s.published.load(Ordering::Acquire),
                    s.sealed,
                )
            })
            .filter(|(_, _, committed, published, sealed)| committed < published || *sealed)
            .collect();
        let mut batch = Batch::default();
        let mut buf = self
            .scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (seq, path, from, to, sealed) in plan {
            if batch.records.len() >= max {
                break;
            }
            let room = max - batch.records.len();
            let end = read_segment(&path, (from, to), sealed, room, &mut batch, &mut buf)?;
            batch.progress.push((seq, end));
        }
        Ok(batch)
    }

    /// The records of `batch` are in the database: advance the offsets and delete the sealed
    /// segments read to their end.
    pub fn commit(&self, batch: &Batch) {
        self.advance(batch.progress.iter().copied(), batch.lines);
    }

    /// Move committed offsets to `ends` (`(segment, offset)`), count `lines` as no longer
    /// pending, and delete every sealed segment committed to its end.
    fn advance(&self, ends: impl Iterator<Item = (u64, u64)>, lines: u64) {
        let mut deleted = Vec::new();
        {
            let mut segments = lock(&self.segments);
            for (seq, end) in ends {
                if let Some(seg) = segments.get_mut(&seq) {
                    seg.committed = seg.committed.max(end);
                }
            }
            // Also segments sealed after their last records were committed.
            for (seq, seg) in segments.iter() {
                if seg.sealed && seg.committed >= seg.published.load(Ordering::Acquire) {
                    deleted.push((*seq, seg.path.clone(), seg.committed));
                }
            }
            for (seq, _, _) in &deleted {
                segments.remove(seq);
            }
        }
        for (_, path, len) in deleted {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(target: "rampart::ledger", path = %path.display(), error = %e, "cannot delete a drained spool segment");
            }
            self.bytes
                .fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
        }
        let n = lines.min(self.pending());
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }

    /// Save the segments' committed offsets in `COMMITTED` (written aside, then renamed), so a
    /// restart replays only what follows them. Offsets unchanged since the last save are not
    /// written again (an idle gateway's drains would otherwise rewrite and rename the file five
    /// times a second).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_committed(&self) -> io::Result<()> {
        let mut text = String::new();
        for (seq, seg) in lock(&self.segments).iter() {
            if seg.committed > 0 {
                text.push_str(&format!("{seq} {}\n", seg.committed));
            }
        }
        let mut saved = self
            .saved_hint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if saved.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{HINT}.tmp"));
        private(OpenOptions::new().create(true).write(true).truncate(true))
            .open(&tmp)?
            .write_all(text.as_bytes())?;
        std::fs::rename(tmp, self.dir.join(HINT))?;
        *saved = Some(text);
        Ok(())
    }
}

/// The committed offsets saved by [`Spool::save_committed`] (none when absent or unreadable).
fn read_hint(dir: &Path) -> HashMap<u64, u64> {
    let Ok(text) = std::fs::read_to_string(dir.join(HINT)) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (seq, at) = l.split_once(' ')?;
            Some((seq.parse().ok()?, at.parse().ok()?))
        })
        .collect()
}

/// `options` creating files with mode 0600 (on Unix).
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Create `dir` (and its parents) with mode 0700 for the last component (on Unix).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Parse the complete lines of `path` in `[from, to)` into `batch` (at most `max` records),
/// reading [`READ_STEP`] bytes at a time into `buf`; returns the offset just past the last line
/// consumed. In a sealed segment a trailing partial line is corrupt (and consumed); in an open
/// one it is left for later.
fn read_segment(
    path: &Path,
    (from, to): (u64, u64),
    sealed: bool,
    max: usize,
    batch: &mut Batch,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    if to <= from {
        return Ok(from);
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(to),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    buf.clear();
    // `buf[0]` is at file offset `base`; `buf[..pos]` is consumed; the file is read to `read_to`.
    let (mut base, mut pos, mut read_to, mut taken) = (from, 0usize, from, 0usize);
    loop {
        while taken < max {
            let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                break;
            };
            batch.lines += 1;
            match decode(&buf[pos..pos + nl]) {
                Some(r) => {
                    batch.records.push(r);
                    taken += 1;
                }
                None => {
                    batch.corrupt += 1;
                    tracing::error!(target: "rampart::ledger", path = %path.display(), offset = base + pos as u64, "corrupt spool line skipped");
                }
            }
            pos += nl + 1;
        }
        if taken >= max || read_to >= to {
            break;
        }
        buf.drain(..pos);
        base += pos as u64;
        pos = 0;
        let got = (&mut file)
            .take((to - read_to).min(READ_STEP))
            .read_to_end(buf)?;
        if got == 0 {
            break;
        }
        read_to += got as u64;
    }
    let end = base + pos as u64;
    // A sealed segment read to its last byte with a partial line left: a torn write.
    if sealed && taken < max && end < to && read_to >= to {
        batch.corrupt += 1;
        tracing::error!(target: "rampart::ledger", path = %path.display(), offset = end, "torn spool line at the end of a segment skipped");
        return Ok(to);
    }
    Ok(end)
}

/// A record from one spool line (without its `\n`), if its CRC and JSON are good.
fn decode(line: &[u8]) -> Option<UsageRecord> {
    let (crc_hex, json) = (line.get(..8)?, line.get(9..)?);
    if line.get(8) != Some(&b' ') {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc_hex).ok()?, 16).ok()?;
    if crc != crc32fast::hash(json) {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use time::OffsetDateTime;
    use uuid::Uuid;

    pub(crate) fn record(n: u64) -> UsageRecord {
        UsageRecord {
            id: Uuid::from_u128(u128::from(n) + 1),
            at: OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap(),
            request_id: format!("req_{n}"),
            key_id: None,
            team_id: None,
            user_id: None,
            key_label: Some("abcd1234".to_owned()),
            endpoint: "/v1/messages".to_owned(),
            model_requested: Some("claude-sonnet-4-6".to_owned()),
            model_served: Some("claude-sonnet-4-6".to_owned()),
            status: 200,
            error_type: None,
            input_tokens: n,
            output_tokens: 2 * n,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            cost_micro_usd: 33 * n,
            priced: true,
            latency_us: 1500,
            upstream_latency_us: Some(1000),
            upstream_attempts: 1,
            streamed: false,
            cache_hit: false,
            client_aborted: false,
            saved_micro_usd: 0,
        }
    }

    fn append(spool: &Spool, n: u64) {
        spool.append(record(n)).map_err(|u| u.error).unwrap();
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(SUFFIX)
            })
            .count()
    }

    #[test]
    fn lines_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        Spool::encode(&record(7), &mut buf);
        assert_eq!(buf.last(), Some(&b'\n'));
        let line = &buf[..buf.len() - 1];
        assert_eq!(decode(line), Some(record(7)));
        let mut flipped = line.to_vec();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped), None);
        assert_eq!(decode(&line[..line.len() / 2]), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn records_go_to_the_writer_in_memory_and_committed_segments_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2, 64 * 1024, false).unwrap();
        for n in 0..10 {
            append(&spool, n);
        }
        assert_eq!(spool.pending(), 10);
        let queued = spool.take_queued(Queued::default());
        assert_eq!(queued.records, (0..10).map(record).collect::<Vec<_>>());
        assert!(spool.take_queued(Queued::default()).is_empty());
        // Records in memory are never read back from their files.
        assert!(spool.read(100).unwrap().records.is_empty());
        spool.commit_queued(queued.slice(0, queued.len()));
        // The emptied queue goes back to a lane with its room, and holds what comes next.
        let room = queued.records.capacity();
        append(&spool, 10);
        let again = spool.take_queued(queued);
        assert_eq!(again.records, vec![record(10)]);
        assert!(spool.take_queued(Queued::default()).records.capacity() >= room);
        spool.commit_queued(again.slice(0, 1));
        assert_eq!(spool.pending(), 0);
        assert_eq!(segment_files(dir.path()), 1, "the open segment stays");
        spool.seal_all();
        spool.commit(&spool.read(100).unwrap());
        assert_eq!(segment_files(dir.path()), 0);
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn unchanged_committed_offsets_are_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
        for n in 0..10 {
            append(&spool, n);
        }
        let queued = spool.take_queued(Queued::default());
        spool.commit_queued(queued.slice(0, 5));
        spool.save_committed().unwrap();
        let hint = dir.path().join(HINT);
        let first = std::fs::read_to_string(&hint).unwrap();
        std::fs::remove_file(&hint).unwrap();
        spool.save_committed().unwrap();
        assert!(!hint.exists(), "the same offsets are not written again");
        spool.commit_queued(queued.slice(5, 10));
        spool.save_committed().unwrap();
        let second = std::fs::read_to_string(&hint).unwrap();
        assert_ne!(first, second, "new offsets are");
    }

    #[test]
    fn a_restart_replays_what_was_not_committed_and_without_the_hint_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
            for n in 0..500 {
                append(&spool, n);
            }
            assert!(segment_files(dir.path()) > 1, "full segments rotate");
            // Commit the first 100, then "crash" (drop without sealing or draining).
            let queued = spool.take_queued(Queued::default());
            let first = queued.slice(0, 100);
            assert_eq!(first.records[99], record(99));
            assert_eq!(queued.records[100], record(100));
            spool.commit_queued(first);
            spool.save_committed().unwrap();
        }
        let replayed = |dir: &Path| {
            let spool = Spool::open(dir, 1, 64 * 1024, false).unwrap();
            let pending = spool.pending();
            let b = spool.read(10_000).unwrap();
            let ns: Vec<u64> = b.records.iter().map(|r| r.input_tokens).collect();
            assert_eq!(pending, ns.len() as u64);
            (spool, b, ns)
        };
        // Without the hint (a copy of the segments), every record is replayed.
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(SUFFIX) {
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        let (_, _, all) = replayed(copy.path());
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        // With it, only the records not committed.
        let (spool, b, ns) = replayed(dir.path());
        assert_eq!(ns, (100..500).collect::<Vec<_>>());
        spool.commit(&b);
        assert_eq!(segment_files(dir.path()), 0);
        // A second open of a locked spool is refused.
        let err = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn a_full_queue_sends_the_lane_to_a_file_drained_segment_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1, 64 * 1024 * 1024, false).unwrap();
        spool.queue_max = 8;
        for n in 0..20 {
            append(&spool, n);
        }
        // 8 in memory, the next 12 in a second segment read from its file.
        assert_eq!(segment_files(dir.path()), 2);
        let queued = spool.take_queued(Queued::default());
        assert_eq!(queued.records, (0..8).map(record).collect::<Vec<_>>());
        let from_file = spool.read(100).unwrap();
        let ns: Vec<u64> = from_file.records.iter().map(|r| r.input_tokens).collect();
        assert_eq!(ns, (8..20).collect::<Vec<_>>());
        spool.commit(&from_file);
        spool.commit_queued(queued.slice(0, queued.len()));
        // The queue is empty again: the next record starts a new segment, in memory.
        append(&spool, 20);
        let last = spool.take_queued(queued);
        assert_eq!(last.records, vec![record(20)]);
        spool.commit_queued(last.slice(0, 1));
        assert_eq!(
            segment_files(dir.path()),
            1,
            "the first two were sealed and drained"
        );
    }

    fn stage(spool: &Spool, n: u64) -> StagedAt {
        spool.stage_prepared(Prepared::new(record(n)), |_| {})
    }

    #[test]
    fn staged_records_share_one_write_in_the_order_they_were_staged() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
        append(&spool, 0);
        let first = stage(&spool, 1);
        stage(&spool, 2);
        let last = stage(&spool, 3);
        assert_eq!(first, last, "one group");
        assert_eq!(
            (spool.writes(), spool.pending()),
            (1, 1),
            "staged is not written"
        );
        spool.write_staged(first).map_err(|_| ()).unwrap();
        assert_eq!((spool.writes(), spool.pending()), (2, 4));
        // The group is written: writing it again is nothing, and the next group is another.
        spool.write_staged(last).map_err(|_| ()).unwrap();
        assert_eq!(spool.writes(), 2);
        let next = stage(&spool, 4);
        assert_ne!(next, last);
        spool.write_staged(next).map_err(|_| ()).unwrap();
        assert_eq!((spool.writes(), spool.pending()), (3, 5));
        let queued = spool.take_queued(Queued::default());
        assert_eq!(queued.records, (0..5).map(record).collect::<Vec<_>>());
        // Each record's mark is the end of its own line: committing the first three keeps
        // the last two for a restart.
        spool.commit_queued(queued.slice(0, 3));
        spool.save_committed().unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
        let ns: Vec<u64> = spool
            .read(100)
            .unwrap()
            .records
            .iter()
            .map(|r| r.input_tokens)
            .collect();
        assert_eq!(ns, vec![3, 4]);
    }

    #[test]
    fn a_group_that_cannot_be_written_gives_all_its_records_back() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let spool = Spool::open(&dir, 1, 64 * 1024, false).unwrap();
        let at = stage(&spool, 1);
        stage(&spool, 2);
        // No segment is open yet, and its directory is gone: the group's first write fails.
        std::fs::remove_dir_all(&dir).unwrap();
        let back = spool.write_staged(at).unwrap_err();
        let ns: Vec<u64> = back.iter().map(|u| u.record.input_tokens).collect();
        assert_eq!(ns, vec![1, 2]);
        assert_eq!(spool.pending(), 0);
        // They were handed back once: the group counts as done.
        spool.write_staged(at).map_err(|_| ()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_spool_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let spool = Spool::open(&dir, 1, 64 * 1024, false).unwrap();
        append(&spool, 1);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o600);
        }
    }

    #[test]
    fn batches_cut_a_large_segment_into_consecutive_runs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1, 64 * 1024 * 1024, false).unwrap();
            for n in 0..3000 {
                append(&spool, n);
            }
        }
        // After a restart the segment is read from its file.
        let spool = Spool::open(dir.path(), 1, 64 * 1024 * 1024, false).unwrap();
        let mut next = 0;
        for max in [1000, 1, 1500, 10_000] {
            let b = spool.read(max).unwrap();
            for r in &b.records {
                assert_eq!(r.input_tokens, next);
                next += 1;
            }
            spool.commit(&b);
        }
        assert_eq!(next, 3000);
        assert_eq!(spool.pending(), 0);
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
            append(&spool, 1);
            append(&spool, 2);
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(SUFFIX))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"0badc0de {\"id\":").unwrap();
        drop(f);
        let spool = Spool::open(dir.path(), 1, 64 * 1024, false).unwrap();
        let b = spool.read(100).unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.corrupt, 1);
        spool.commit(&b);
        assert_eq!(segment_files(dir.path()), 0);
    }
}
