//! A write-ahead log in front of the engine: one `write` and one `fdatasync` per group
//! of appends, and the engine written in big batches instead of one per append.
//!
//! Why: a durable sled 0.34 append costs three disk waits (sled writes the batch manifest
//! and the batch in two IO buffers, each followed by `sync_file_range`, then our
//! `fdatasync` of `sled/db`), and sled writes every leaf a batch touches to its log as
//! soon as the batch is applied (~16 KB written per 1 KiB message, since an append touches
//! about five leaves). With this log, a batch is encoded into one record, written after
//! the previous one in `wal/<n>.wal` (a file preallocated with `fallocate`, so the
//! `fdatasync` has no new file size to commit), and kept in memory (the *live* layer)
//! instead of going to the engine.
//! `sync` is one `fdatasync` of the log. A background checkpointer moves the live layer
//! to the engine as one batch every [`CHECKPOINT_BYTES`] or [`CHECKPOINT_AFTER`], syncs
//! the engine, and deletes the log files that batch covered; a key rewritten by every
//! append (counters, the sequence) then reaches sled once per checkpoint.
//!
//! Reads see the live layer over the layer being checkpointed over the engine.
//!
//! # Invariants
//!
//! 1. Every batch goes to the log *before* the live layer, both under the log's lock, in
//!    the same order. A batch whose log write failed is not applied, and the log refuses
//!    every later batch (poisoned) until the store is reopened: no record follows a torn
//!    one.
//! 2. `sync` returns `Ok` only after `fdatasync` of the current log file succeeded. A
//!    checkpoint `fdatasync`s the file before it switches to the next one, so every record
//!    in an older file is durable too.
//! 3. A checkpoint switches files and freezes the live layer in one step (under the log's
//!    lock): the frozen layer holds exactly the batches of the older files. A log file is
//!    deleted only after the engine's `sync` that followed writing the frozen layer.
//! 4. At open every log file is replayed in order into the live layer; the first
//!    checkpoint writes it to the engine, syncs it and deletes the files. Records are
//!    whole batches of absolute puts and removes, so replaying a batch the engine already
//!    has is harmless once every later batch is replayed too: the last write of each key
//!    wins, as it did before the crash.
//!    The records end at a zero length followed only by zeros (preallocated space never
//!    written). In the newest file, what a crash leaves of the writes whose `fdatasync` had
//!    not returned is cut off (a record cut short by the end of the file, a zero length with
//!    data after it, a record failing only its checksum with only zeros after it; a copy of
//!    the bytes is kept when the disk has room). Anything else, and any bad record in an
//!    older file, is corruption: a copy is kept (opening fails if it cannot be) and the rest
//!    of that file is skipped.
//! 5. sled writes its snapshot only when it opens, so its own crash recovery replays its
//!    log since the last open. The checkpointer reopens the engine after
//!    [`REOPEN_AFTER_BYTES`] of batches to keep that bounded.
//! 6. Memory: the live layer is bounded; once it holds [`BACKPRESSURE`] × the checkpoint
//!    size (the engine cannot keep up), writers wait for the checkpoint.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{dir_size, sync_dir, Engine, Op, Opener};

/// Checkpoint once the current log file holds this much (the live layer holds about as
/// much in memory).
pub(crate) const CHECKPOINT_BYTES: u64 = 512 << 10;
/// Writers wait for a checkpoint once the live layer holds this many checkpoints' worth.
const BACKPRESSURE: u64 = 4;
/// The frozen layer goes to the engine in batches of this many writes.
const ENGINE_BATCH: usize = 128;
/// Checkpoint at least this often while batches arrive (and once after they stop).
pub(crate) const CHECKPOINT_AFTER: Duration = Duration::from_secs(2);
/// Reopen the engine (sled then writes a snapshot) after this much has gone through it.
pub(crate) const REOPEN_AFTER_BYTES: u64 = 256 << 20;

/// How often the checkpointer hands memory freed by checkpoints back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Space reserved for each new log file: twice the checkpoint size, so the file rarely
/// grows past it before the checkpoint switches to the next one.
const PREALLOC_BYTES: u64 = 2 * CHECKPOINT_BYTES;

/// Largest record accepted at replay; a length above it is a torn or corrupt record.
const MAX_RECORD: u32 = 64 << 20;

/// Wraps the engine opened by `inner` with the log in `<dir>/wal`.
pub(crate) fn wal_opener(inner: Opener) -> Opener {
    Arc::new(move |dir: &Path| {
        WalEngine::open(dir, Arc::clone(&inner), Tuning::default())
            .map(|e| Box::new(e) as Box<dyn Engine>)
    })
}

#[derive(Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) checkpoint_bytes: u64,
    pub(crate) checkpoint_after: Duration,
    pub(crate) reopen_after_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            checkpoint_bytes: CHECKPOINT_BYTES,
            checkpoint_after: CHECKPOINT_AFTER,
            reopen_after_bytes: REOPEN_AFTER_BYTES,
        }
    }
}

pub(crate) struct WalEngine {
    core: Arc<Core>,
    checkpointer: Option<JoinHandle<()>>,
}

struct Core {
    store_dir: PathBuf,
    wal_dir: PathBuf,
    opener: Opener,
    tuning: Tuning,
    /// The engine; the write side is taken only to reopen it.
    inner: RwLock<Box<dyn Engine>>,
    /// Batches not yet in the engine: `None` is a removal.
    layers: RwLock<Layers>,
    /// Bytes in the current log file (a copy of `Log::bytes` readable without the lock).
    live_bytes: AtomicU64,
    log: Mutex<Log>,
    wake: Condvar,
    /// Serialises checkpoints (the background thread and the final one at drop).
    checkpointing: Mutex<()>,
}

type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Layers {
    /// Batches in the current log file.
    live: Layer,
    /// Batches of the older files, being written to the engine by a checkpoint.
    frozen: Arc<Layer>,
}

impl Layers {
    /// The newest layer's word on `key`: `Some(None)` = removed, `None` = ask the engine.
    fn get(&self, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        self.live
            .get(key)
            .or_else(|| self.frozen.get(key))
            .map(Option::as_ref)
    }

    /// Both layers' entries in `[start, end)`, the live one winning, in key order.
    fn range<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        let bounds = (
            Bound::Included(start.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        let mut live = self.live.range::<Vec<u8>, _>(bounds.clone()).peekable();
        let mut frozen = self.frozen.range::<Vec<u8>, _>(bounds).peekable();
        std::iter::from_fn(move || match (live.peek(), frozen.peek()) {
            (None, None) => None,
            (Some(_), None) => live.next(),
            (None, Some(_)) => frozen.next(),
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => live.next(),
                std::cmp::Ordering::Greater => frozen.next(),
                std::cmp::Ordering::Equal => {
                    frozen.next();
                    live.next()
                }
            },
        })
    }
}

struct Log {
    file: Arc<File>,
    number: u64,
    /// Where the next record goes in the current file (its records' bytes).
    offset: u64,
    /// Record bytes since the last checkpoint froze the live layer (what triggers the next
    /// one; after a replay it also counts the replayed records).
    bytes: u64,
    /// Batches applied since the engine was opened (or reopened).
    since_open: u64,
    /// Set by a failed log write or checkpoint; cleared only by reopening the store.
    poisoned: Option<(io::ErrorKind, String)>,
    stop: bool,
}

impl Log {
    fn check(&self) -> io::Result<()> {
        match &self.poisoned {
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("write-ahead log unusable until the store is reopened: {msg}"),
            )),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn file_name(n: u64) -> String {
    format!("{n:020}.wal")
}

/// Log files in `dir`, oldest first.
fn log_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A new, empty log file with [`PREALLOC_BYTES`] allocated. Why: `fdatasync` after an
/// append must also commit the file's new size to the file system's journal; after a write
/// into space already allocated it flushes the data alone. On this ext4 disk one writer
/// went from 74 % to 90–119 % of the (appending) fsync reference (docs/perf/store.md). Allocated space reads as zeros, which replay takes
/// for the end of the records. Where the file system cannot allocate (no `fallocate`, or
/// full), the file grows with each record as before.
fn create_log(dir: &Path, n: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(dir.join(file_name(n)))?;
    if let Err(e) =
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, PREALLOC_BYTES)
    {
        tracing::debug!(error = %e, "store log: space not preallocated; the file grows with each record");
        // Whatever a failed allocation left is released.
        f.set_len(0)?;
    }
    // The new name must survive a power cut before anything in it is called durable.
    sync_dir(dir)?;
    Ok(f)
}

/// `len u32 LE | crc32 u32 LE | payload`, payload = `count u32` then per op
/// `kind u8 (1 put, 0 remove) | key len u32 | key | [value len u32 | value]`.
/// Refuses a batch over [`MAX_RECORD`] (replay would take it for corruption).
fn encode(ops: &[Op]) -> io::Result<Vec<u8>> {
    let size: usize = ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    if size + 4 > MAX_RECORD as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a store batch of {size} bytes is over the {} MiB record limit (lower max_message)",
                MAX_RECORD >> 20
            ),
        ));
    }
    let mut rec = Vec::with_capacity(12 + size);
    rec.extend_from_slice(&[0; 8]);
    rec.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, v) in ops {
        rec.push(u8::from(v.is_some()));
        rec.extend_from_slice(&(k.len() as u32).to_le_bytes());
        rec.extend_from_slice(k);
        if let Some(v) = v {
            rec.extend_from_slice(&(v.len() as u32).to_le_bytes());
            rec.extend_from_slice(v);
        }
    }
    let len = (rec.len() - 8) as u32;
    let crc = crc32fast::hash(&rec[8..]);
    rec[0..4].copy_from_slice(&len.to_le_bytes());
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(rec)
}

fn decode(payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Some(a)
    }
    fn u32_of(p: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
    }
    let mut p = payload;
    let count = u32_of(&mut p)?;
    let mut ops = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let kind = take(&mut p, 1)?[0];
        let klen = u32_of(&mut p)?;
        let key = take(&mut p, klen)?.to_vec();
        let value = match kind {
            1 => {
                let vlen = u32_of(&mut p)?;
                Some(take(&mut p, vlen)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        ops.push((key, value));
    }
    p.is_empty().then_some(ops)
}

enum Next {
    /// A batch and the bytes its record took.
    Record(Vec<Op>, u64),
    End,
    /// A zero length: preallocated space no record was written to (the end of the
    /// records if everything after it is zero too).
    Unwritten(u64),
    /// A record cut short by the end of the file (a write the crash interrupted).
    Torn(u64),
    /// A record that fails its length bound, checksum or decoding; `true` when it was read
    /// whole and failed only its checksum (the reader is past it).
    Corrupt(u64, bool),
}

fn read_record(r: &mut impl Read, offset: u64) -> io::Result<Next> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(Next::End),
            0 => return Ok(Next::Torn(offset)),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        // A record holds at least its op count: nothing was written here.
        return Ok(if crc == 0 {
            Next::Unwritten(offset)
        } else {
            Next::Corrupt(offset, false)
        });
    }
    if len > MAX_RECORD {
        return Ok(Next::Corrupt(offset, false));
    }
    let mut payload = vec![0u8; len as usize];
    if let Err(e) = r.read_exact(&mut payload) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(Next::Torn(offset)),
            _ => Err(e),
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Next::Corrupt(offset, true));
    }
    Ok(
        decode(&payload).map_or(Next::Corrupt(offset, false), |ops| {
            Next::Record(ops, 8 + u64::from(len))
        }),
    )
}

/// Whether everything from the reader's position to the end of the file is zero.
fn rest_is_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Replays `path` into `layer`; returns the batches replayed and the bytes they took.
/// The unsynced tail a crash leaves in the newest file is cut off.
fn replay(layer: &mut Layer, path: &Path, last: bool) -> io::Result<(u64, u64)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let (mut offset, mut n) = (0u64, 0u64);
    // Where the records stop, and whether what follows is the newest file's unsynced tail,
    // as a crash leaves it after the last record whose fdatasync returned: a record cut
    // short by the end of the file; a zero length with data after it (a later page of the
    // unsynced writes reached the disk, the header's did not); or a record failing only its
    // checksum with nothing but zeros after it. Anything else, and anything at all in an
    // older file (synced before the next one was started), is corruption.
    let (at, tail) = loop {
        match read_record(&mut r, offset)? {
            Next::Record(ops, len) => {
                offset += len;
                layer.extend(ops);
                n += 1;
            }
            Next::End => return Ok((n, offset)),
            Next::Unwritten(at) => {
                if rest_is_zero(&mut r)? {
                    return Ok((n, offset));
                }
                break (at, last);
            }
            Next::Torn(at) => break (at, last),
            Next::Corrupt(at, checksum) => {
                break (at, last && checksum && rest_is_zero(&mut r)?);
            }
        }
    };
    if tail {
        // Never acknowledged (its fdatasync had not returned). A flipped bit in the last
        // record looks the same, so the bytes are kept when possible — but not at the cost
        // of opening the store on a full disk.
        let copy = keep_copy(path, at).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "store log: could not keep a copy of the unsynced tail");
            None
        });
        tracing::warn!(file = %path.display(), offset = at, copy = ?copy, "store log: unsynced tail of the newest file removed (a write the crash cut short)");
    } else {
        // Go on with what could be read: the records after this one cannot be delimited.
        let copy = keep_copy(path, at)?;
        tracing::error!(file = %path.display(), offset = at, copy = ?copy, "store log: corrupt record; the rest of the file is skipped and a copy kept");
    }
    if last {
        // So that once a newer file exists, this tail does not read as corruption.
        truncate(path, at)?;
    }
    Ok((n, offset))
}

/// Keeps the bytes of `path` from `from` on (trailing zeros dropped: preallocated space)
/// as `<n>.wal.corrupt`, durably, for inspection. `None` when they are all zero.
fn keep_copy(path: &Path, from: u64) -> io::Result<Option<PathBuf>> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end == 0 {
        return Ok(None);
    }
    let copy = path.with_extension("wal.corrupt");
    let mut out = File::create(&copy)?;
    out.write_all(&bytes[..end])?;
    // The copy must outlive the truncation or deletion that follows.
    out.sync_all()?;
    if let Some(dir) = copy.parent() {
        sync_dir(dir)?;
    }
    Ok(Some(copy))
}

fn truncate(path: &Path, at: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(at)?;
    f.sync_all()
}

impl WalEngine {
    pub(crate) fn open(dir: &Path, opener: Opener, tuning: Tuning) -> io::Result<Self> {
        let wal_dir = dir.join("wal");
        if !wal_dir.exists() {
            std::fs::create_dir(&wal_dir)?;
            sync_dir(dir)?;
        }
        let inner = opener(dir)?;
        // Invariant 4: the files' batches become the live layer; the files stay until the
        // first checkpoint has written that layer to the engine. Opening writes nothing to
        // the engine, so it succeeds on a full disk.
        let files = log_files(&wal_dir)?;
        let (mut live, mut batches, mut bytes) = (Layer::new(), 0, 0);
        for (i, (_, path)) in files.iter().enumerate() {
            let (n, b) = replay(&mut live, path, i + 1 == files.len())?;
            batches += n;
            bytes += b;
        }
        if batches > 0 {
            tracing::info!(batches, bytes, "store log replayed after an unclean stop");
        } else {
            // Nothing to carry over: the old files need no checkpoint to go.
            for (_, path) in &files {
                std::fs::remove_file(path)?;
            }
        }
        let number = files.last().map_or(1, |(n, _)| n + 1);
        let file = create_log(&wal_dir, number)?;
        let core = Arc::new(Core {
            store_dir: dir.to_path_buf(),
            wal_dir,
            opener,
            tuning,
            inner: RwLock::new(inner),
            layers: RwLock::new(Layers {
                live,
                frozen: Arc::default(),
            }),
            live_bytes: AtomicU64::new(bytes),
            log: Mutex::new(Log {
                file: Arc::new(file),
                number,
                offset: 0,
                // The replayed layer counts as the current file's, so it is checkpointed
                // on the usual schedule.
                bytes,
                since_open: bytes,
                poisoned: None,
                stop: false,
            }),
            wake: Condvar::new(),
            checkpointing: Mutex::new(()),
        });
        let c = Arc::clone(&core);
        let checkpointer = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || c.run())?;
        Ok(Self {
            core,
            checkpointer: Some(checkpointer),
        })
    }

    /// Drops the engine like a crash would: no final checkpoint (tests).
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        lock(&self.core.log).stop = true;
        self.core.wake.notify_all();
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
        lock(&self.core.log).poisoned = Some((io::ErrorKind::Other, "crashed".into()));
    }

    /// Log files present now (tests).
    #[cfg(test)]
    pub(crate) fn log_files(&self) -> Vec<PathBuf> {
        log_files(&self.core.wal_dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }
}

impl Core {
    fn poison(&self, e: &io::Error) {
        lock(&self.log)
            .poisoned
            .get_or_insert((e.kind(), e.to_string()));
    }

    fn inner(&self) -> std::sync::RwLockReadGuard<'_, Box<dyn Engine>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The checkpointer: checkpoints when the log is big enough, or `checkpoint_after`
    /// after it stopped being empty.
    fn run(&self) {
        let after = self.tuning.checkpoint_after;
        // Opening sled (and replaying the log) allocates and frees a lot.
        trim_heap();
        let mut trimmed = Instant::now();
        let mut owed = false;
        let mut log = lock(&self.log);
        loop {
            let deadline = Instant::now() + after;
            loop {
                if log.stop {
                    return;
                }
                let now = Instant::now();
                let due = log.poisoned.is_none()
                    && log.bytes > 0
                    && (log.bytes >= self.tuning.checkpoint_bytes || now >= deadline);
                if due {
                    break;
                }
                if owed && log.bytes == 0 && now >= deadline {
                    // A quiet period after checkpoints: hand their freed memory back.
                    drop(log);
                    trim_heap();
                    (trimmed, owed) = (Instant::now(), false);
                    log = lock(&self.log);
                    continue;
                }
                let wait = if now >= deadline {
                    after
                } else {
                    deadline - now
                };
                log = self
                    .wake
                    .wait_timeout(log, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(log);
            if let Err(e) = self.checkpoint(false) {
                tracing::error!(error = %e, "store checkpoint failed; the store will be reopened on the next write");
                self.poison(&e);
            }
            // Under load at most every TRIM_EVERY; otherwise owed until the log has been
            // quiet for a checkpoint period, so an idle agent is small.
            if trimmed.elapsed() >= TRIM_EVERY {
                trim_heap();
                (trimmed, owed) = (Instant::now(), false);
            } else {
                owed = true;
            }
            log = lock(&self.log);
        }
    }

    /// Switches to a new log file and freezes the live layer; writes the frozen layer to
    /// the engine, syncs it, deletes the older files; reopens the engine when enough has
    /// gone through it. `closing`: no new file, every file goes.
    fn checkpoint(&self, closing: bool) -> io::Result<()> {
        self.checkpoint_with(closing, !closing)
    }

    /// `may_reopen`: false on a writer's path (backpressure), where a reopen would hold
    /// every read and write for the time sled takes to open.
    fn checkpoint_with(&self, closing: bool, may_reopen: bool) -> io::Result<()> {
        let _one = lock(&self.checkpointing);
        let (keep_from, reopen, frozen) = {
            let mut log = lock(&self.log);
            log.check()?;
            if !closing && log.bytes == 0 && log_files(&self.wal_dir)?.len() <= 1 {
                return Ok(());
            }
            // Invariant 2: the old file is durable before anyone syncs only the new one.
            // An fsync error is reported once per file: poison before the lock is released,
            // so a concurrent `sync` whose fdatasync then returns 0 still fails.
            if let Err(e) = log.file.sync_data() {
                log.poisoned.get_or_insert((e.kind(), e.to_string()));
                return Err(e);
            }
            let keep_from = if closing {
                log.number + 1
            } else {
                let next = log.number + 1;
                log.file = Arc::new(create_log(&self.wal_dir, next)?);
                log.number = next;
                log.offset = 0;
                log.bytes = 0;
                self.live_bytes.store(0, Ordering::Relaxed);
                next
            };
            // Invariant 3: the frozen layer is exactly the older files' batches.
            let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
            let frozen = Arc::new(std::mem::take(&mut layers.live));
            layers.frozen = Arc::clone(&frozen);
            let reopen = may_reopen && log.since_open >= self.tuning.reopen_after_bytes;
            (keep_from, reopen, frozen)
        };
        self.write_frozen(&frozen)?;
        self.layers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .frozen = Arc::default();
        for (n, path) in log_files(&self.wal_dir)? {
            if n < keep_from {
                std::fs::remove_file(path)?;
            }
        }
        if reopen {
            self.reopen()?;
        }
        Ok(())
    }

    fn write_frozen(&self, frozen: &Layer) -> io::Result<()> {
        let inner = self.inner();
        // Borrowed: the engine copies each value once into its own buffer.
        let mut ops = Vec::with_capacity(ENGINE_BATCH.min(frozen.len()));
        for (k, v) in frozen {
            ops.push((k.as_slice(), v.as_deref()));
            if ops.len() == ENGINE_BATCH {
                inner.apply_each(&ops)?;
                ops.clear();
            }
        }
        if !ops.is_empty() {
            inner.apply_each(&ops)?;
        }
        inner.sync()
    }

    /// Swaps in a freshly opened engine. Called right after a checkpoint: the engine holds
    /// everything but the live layer, which stays where it is.
    fn reopen(&self) -> io::Result<()> {
        let started = Instant::now();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // The old engine must be gone (sled's file lock) before it is opened again.
        *inner = Box::new(Closed);
        *inner = (self.opener)(&self.store_dir)?;
        drop(inner);
        lock(&self.log).since_open = 0;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store engine reopened to bound its crash recovery"
        );
        Ok(())
    }
}

/// Returns memory glibc keeps after frees to the kernel. Checkpoints free layers and sled
/// frees node versions from many threads; glibc keeps that memory in per-thread arenas,
/// and in the cycle bench 40 of 100 MiB RSS were such free memory (measured by calling
/// `malloc_trim` from gdb).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: necessary — std and rustix have no wrapper for glibc's malloc_trim(3). It
    // takes a padding size by value, has no preconditions, and only walks the
    // allocator's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// musl's allocator returns freed memory by itself.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Keeps glibc from handing memory back to the kernel on every free; the checkpointer's
/// [`trim_heap`] returns it instead, under load at most every [`TRIM_EVERY`] and once the
/// log has been quiet. Call once, before threads start (`labagent run`).
///
/// Why: sled allocates each 512 KiB IO buffer aligned to 8 KiB. glibc serves an allocation
/// that size with `mmap`, and its dynamic threshold never rises past an aligned request
/// (the freed chunk it learns from is exactly the request's size, and the test is `>=`), so
/// every buffer came as fresh zero pages: 128 page faults per 512 KiB written, 20 % of the
/// checkpointer's time (issue 23). With fixed thresholds the buffers are reused from the
/// heap, and freed heap tops stay until the next trim.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_heap() {
    // SAFETY: necessary — std and rustix have no wrapper for glibc's mallopt(3). It takes
    // two integers by value and only sets the allocator's parameters under its lock; the
    // values are in range (positive, below i32::MAX).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Other allocators: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_heap() {}

/// Stands in while the engine is reopened, or after a reopen failed.
struct Closed;

impl Engine for Closed {
    fn get(&self, _: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Err(closed())
    }
    fn apply(&self, _: Vec<Op>) -> io::Result<()> {
        Err(closed())
    }
    fn range(&self, _: &[u8], _: &[u8], _: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Err(closed())
    }
    fn sync(&self) -> io::Result<()> {
        Err(closed())
    }
    fn disk_bytes(&self) -> io::Result<u64> {
        Err(closed())
    }
}

fn closed() -> io::Error {
    io::Error::other("store engine could not be reopened")
}

impl Engine for WalEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        {
            let layers = self.core.layers.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = layers.get(key) {
                return Ok(v.cloned());
            }
        }
        self.core.inner().get(key)
    }

    fn apply(&self, ops: Vec<Op>) -> io::Result<()> {
        let limit = self.core.tuning.checkpoint_bytes;
        if self.core.live_bytes.load(Ordering::Relaxed) >= limit.saturating_mul(BACKPRESSURE) {
            // Invariant 6: the engine fell behind; write it out before growing further.
            self.core
                .checkpoint_with(false, false)
                .inspect_err(|e| self.core.poison(e))?;
        }
        let rec = encode(&ops)?;
        let mut log = lock(&self.core.log);
        log.check()?;
        if let Err(e) = log.file.write_all_at(&rec, log.offset) {
            log.poisoned = Some((e.kind(), e.to_string()));
            return Err(e);
        }
        log.offset += rec.len() as u64;
        log.bytes += rec.len() as u64;
        log.since_open += rec.len() as u64;
        self.core.live_bytes.store(log.bytes, Ordering::Relaxed);
        {
            let mut layers = self.core.layers.write().unwrap_or_else(|p| p.into_inner());
            for (k, v) in ops {
                layers.live.insert(k, v);
            }
        }
        if log.bytes >= limit {
            self.core.wake.notify_one();
        }
        Ok(())
    }

    /// The layers merged over the engine's pages; the layers' read lock is held throughout
    /// so a checkpoint cannot move entries from under the merge.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let layers = self.core.layers.read().unwrap_or_else(|p| p.into_inner());
        let inner = self.core.inner();
        let mut upper = layers.range(start, end).peekable();
        let mut out = Vec::new();
        let mut cursor = start.to_vec();
        let mut inner_done = false;
        // Pages grow while the layers hide what they bring: a drain confirms (removes)
        // the oldest queue entries, and until the next checkpoint sled still has them, so
        // a scan of the queue from its start steps over every removal since then.
        let mut page_size = 16;
        while out.len() < limit {
            let want = (limit - out.len()).clamp(page_size, 1024.max(page_size));
            page_size = (page_size * 4).min(16 * 1024);
            let page = if inner_done {
                Vec::new()
            } else {
                inner.range(&cursor, end, want)?
            };
            inner_done = page.len() < want;
            if let Some((k, _)) = page.last() {
                cursor = k.clone();
                cursor.push(0);
            }
            for (k, v) in page {
                while let Some((uk, uv)) = upper.next_if(|(uk, _)| uk.as_slice() < k.as_slice()) {
                    if let Some(uv) = uv {
                        out.push((uk.clone(), uv.clone()));
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                // A layer's entry for the same key wins, a removal hides it.
                let kv = match upper.next_if(|(uk, _)| uk.as_slice() == k.as_slice()) {
                    Some((_, None)) => continue,
                    Some((uk, Some(uv))) => (uk.clone(), uv.clone()),
                    None => (k, v),
                };
                out.push(kv);
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if inner_done {
                for (uk, uv) in upper.by_ref() {
                    if let Some(uv) = uv {
                        out.push((uk.clone(), uv.clone()));
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                break;
            }
        }
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        let file = {
            let log = lock(&self.core.log);
            log.check()?;
            Arc::clone(&log.file)
        };
        file.sync_data().inspect_err(|e| self.core.poison(e))?;
        // A checkpoint's fdatasync of the same file may have taken the error.
        lock(&self.core.log).check()
    }

    fn disk_bytes(&self) -> io::Result<u64> {
        Ok(self.core.inner().disk_bytes()? + dir_size(&self.core.wal_dir)?)
    }

    fn checkpoint(&self) -> io::Result<()> {
        self.core.checkpoint(false)
    }
}

impl Drop for WalEngine {
    fn drop(&mut self) {
        lock(&self.core.log).stop = true;
        self.core.wake.notify_all();
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
        // A clean stop leaves no log behind, so the next open replays nothing.
        if let Err(e) = self.core.checkpoint(true) {
            tracing::error!(error = %e, "store: final checkpoint failed; the log is replayed at the next open");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The log's own rules, on an in-memory engine that keeps only what was synced when it
    //! is dropped (a crash of the engine's unsynced state).

    use super::super::engine::OpRef;
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Disk {
        durable: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        opens: Mutex<u64>,
        opened: Condvar,
        /// Atomic batches the engine was given (the checkpoint should give none).
        batches: AtomicU64,
    }

    struct Mem {
        disk: Arc<Disk>,
        live: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    }

    impl Engine for Mem {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            Ok(lock(&self.live).get(key).cloned())
        }
        fn apply(&self, ops: Vec<Op>) -> io::Result<()> {
            self.disk.batches.fetch_add(1, Ordering::SeqCst);
            let mut live = lock(&self.live);
            for (k, v) in ops {
                match v {
                    Some(v) => live.insert(k, v),
                    None => live.remove(&k),
                };
            }
            Ok(())
        }
        fn apply_each(&self, ops: &[OpRef<'_>]) -> io::Result<()> {
            let mut live = lock(&self.live);
            for &(k, v) in ops {
                match v {
                    Some(v) => live.insert(k.to_vec(), v.to_vec()),
                    None => live.remove(k),
                };
            }
            Ok(())
        }
        fn range(&self, s: &[u8], e: &[u8], l: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(lock(&self.live)
                .range(s.to_vec()..e.to_vec())
                .take(l)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
        fn sync(&self) -> io::Result<()> {
            *lock(&self.disk.durable) = lock(&self.live).clone();
            Ok(())
        }
        fn disk_bytes(&self) -> io::Result<u64> {
            Ok(0)
        }
    }

    fn mem_opener(disk: &Arc<Disk>) -> Opener {
        let disk = Arc::clone(disk);
        Arc::new(move |_: &Path| {
            *lock(&disk.opens) += 1;
            disk.opened.notify_all();
            let live = Mutex::new(lock(&disk.durable).clone());
            Ok(Box::new(Mem {
                disk: Arc::clone(&disk),
                live,
            }) as Box<dyn Engine>)
        })
    }

    /// No checkpoint unless a test asks for one.
    fn manual() -> Tuning {
        Tuning {
            checkpoint_bytes: u64::MAX,
            checkpoint_after: Duration::from_secs(3600),
            reopen_after_bytes: u64::MAX,
        }
    }

    fn put(k: &str, v: &str) -> Op {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn get(e: &dyn Engine, k: &str) -> Option<String> {
        e.get(k.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn synced_batches_survive_a_crash_of_the_engine() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        e.apply(vec![put("a", "1"), put("b", "1")]).unwrap();
        e.apply(vec![put("a", "2"), (b"b".to_vec(), None)]).unwrap();
        e.sync().unwrap();
        e.crash();
        assert!(
            lock(&disk.durable).is_empty(),
            "the engine itself never synced"
        );
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "a").as_deref(), Some("2"));
        assert_eq!(get(&e, "b"), None);
        // Replayed into memory; the old file stays until a checkpoint has written the
        // batches to the engine.
        assert!(lock(&disk.durable).is_empty());
        assert_eq!(e.log_files().len(), 2);
        e.checkpoint().unwrap();
        assert_eq!(
            lock(&disk.durable).get(&b"a"[..]).map(Vec::as_slice),
            Some(&b"2"[..])
        );
        assert_eq!(e.log_files().len(), 1);
    }

    /// Bytes of the records of `batches`, as the log writes them one after the other.
    fn record_bytes(batches: &[Vec<Op>]) -> u64 {
        batches
            .iter()
            .map(|b| encode(b).unwrap().len() as u64)
            .sum()
    }

    #[test]
    fn a_torn_record_at_the_end_is_dropped_and_the_rest_replayed() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        let batches: Vec<_> = (0..3).map(|i| vec![put(&format!("k{i}"), "v")]).collect();
        for b in &batches {
            e.apply(b.clone()).unwrap();
        }
        e.sync().unwrap();
        let file = e.log_files().pop().unwrap();
        e.crash();
        // Half of a fourth record right after the third, as a crash in the middle of its
        // write leaves it: inside the preallocated space, so it fails its checksum with
        // zeros after it.
        let rec = encode(&[put("k3", "v")]).unwrap();
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&rec[..rec.len() / 2], record_bytes(&batches))
            .unwrap();
        drop(f);
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        for i in 0..3 {
            assert_eq!(get(&e, &format!("k{i}")).as_deref(), Some("v"));
        }
        assert_eq!(get(&e, "k3"), None);
        // A flipped bit in the last record would look the same: a copy is kept.
        assert!(file.with_extension("wal.corrupt").exists());
        // The same half record at the very end of the file: cut short by the end.
        e.apply(vec![put("k5", "v")]).unwrap();
        e.sync().unwrap();
        let file = e.log_files().pop().unwrap();
        e.crash();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        std::io::Write::write_all(&mut f, &rec[..rec.len() / 2]).unwrap();
        drop(f);
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "k5").as_deref(), Some("v"));
        assert_eq!(get(&e, "k3"), None);
        // A flipped byte in a record followed by another one is corruption, not a torn
        // write: a copy is kept for inspection and the records before it are replayed.
        let batches = vec![vec![put("k4", "v")], vec![put("k6", "v")]];
        for b in &batches {
            e.apply(b.clone()).unwrap();
        }
        e.sync().unwrap();
        let file = e.log_files().pop().unwrap();
        e.crash();
        let mut bytes = std::fs::read(&file).unwrap();
        let last_of_first = record_bytes(&batches[..1]) as usize - 1;
        bytes[last_of_first] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "k4"), None);
        assert_eq!(
            get(&e, "k6"),
            None,
            "records after a corrupt one cannot be delimited"
        );
        assert!(file.with_extension("wal.corrupt").exists());
        assert_eq!(get(&e, "k2").as_deref(), Some("v"));
        assert_eq!(get(&e, "k5").as_deref(), Some("v"));
    }

    /// The copy of a crash's unsynced tail is best effort (a full disk must not keep the
    /// store from opening); the copy of a corrupt record is not.
    #[test]
    fn a_torn_tail_opens_without_its_copy_but_corruption_needs_one() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        let batches = vec![vec![put("a", "1")], vec![put("b", "1")]];
        for b in &batches {
            e.apply(b.clone()).unwrap();
        }
        e.sync().unwrap();
        let file = e.log_files().pop().unwrap();
        e.crash();
        let pristine = std::fs::read(&file).unwrap();
        // The copy cannot be created: a directory holds its name.
        std::fs::create_dir(file.with_extension("wal.corrupt")).unwrap();
        // Torn: the second record's last byte flipped, zeros after it.
        let mut bytes = pristine.clone();
        bytes[record_bytes(&batches) as usize - 1] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "a").as_deref(), Some("1"));
        assert_eq!(get(&e, "b"), None);
        e.crash();
        // Corrupt: the first record's last byte flipped, a whole record after it.
        let mut bytes = pristine;
        bytes[record_bytes(&batches[..1]) as usize - 1] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        for f in log_files(&d.path().join("wal")).unwrap() {
            if f.1 != file {
                std::fs::remove_file(f.1).unwrap();
            }
        }
        let err = WalEngine::open(d.path(), mem_opener(&disk), manual())
            .err()
            .expect("corruption without a copy must not be skipped");
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn log_files_are_preallocated_and_unwritten_space_ends_the_records() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        let file = e.log_files().pop().unwrap();
        let probe = File::create(d.path().join("probe")).unwrap();
        if rustix::fs::fallocate(&probe, rustix::fs::FallocateFlags::empty(), 0, 4096).is_err() {
            eprintln!("skipped: the test directory's file system has no fallocate");
            return;
        }
        assert_eq!(std::fs::metadata(&file).unwrap().len(), PREALLOC_BYTES);
        let batches: Vec<_> = (0..3).map(|i| vec![put(&format!("k{i}"), "v")]).collect();
        for b in &batches {
            e.apply(b.clone()).unwrap();
        }
        e.sync().unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            PREALLOC_BYTES,
            "records are written inside the allocated space, not appended"
        );
        e.crash();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        for i in 0..3 {
            assert_eq!(get(&e, &format!("k{i}")).as_deref(), Some("v"));
        }
        assert!(!file.with_extension("wal.corrupt").exists());
        // The replayed file is older now: its zero tail still reads as the end.
        e.apply(vec![put("k3", "v")]).unwrap();
        e.sync().unwrap();
        e.crash();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        for i in 0..4 {
            assert_eq!(get(&e, &format!("k{i}")).as_deref(), Some("v"));
        }
        assert_eq!(
            std::fs::read_dir(d.path().join("wal"))
                .unwrap()
                .filter(|f| f
                    .as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".corrupt"))
                .count(),
            0
        );
        // Bytes after a zero length are not unwritten space: kept for inspection.
        let newest = e.log_files().pop().unwrap();
        e.apply(vec![put("k4", "v")]).unwrap();
        e.sync().unwrap();
        e.crash();
        let f = OpenOptions::new().write(true).open(&newest).unwrap();
        let after = encode(&[put("k4", "v")]).unwrap().len() as u64 + 64;
        f.write_all_at(b"junk", after).unwrap();
        drop(f);
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "k4").as_deref(), Some("v"));
        assert!(newest.with_extension("wal.corrupt").exists());
    }

    #[test]
    fn checkpoint_syncs_the_engine_then_drops_the_logs_it_covered() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        e.apply(vec![put("a", "1")]).unwrap();
        let first = e.log_files();
        assert_eq!(first.len(), 1);
        e.checkpoint().unwrap();
        assert_eq!(lock(&disk.durable).len(), 1, "engine synced");
        assert_eq!(
            disk.batches.load(Ordering::SeqCst),
            0,
            "the checkpoint writes key by key, never an engine batch (sled's global lock)"
        );
        let now = e.log_files();
        assert_eq!(now.len(), 1);
        assert_ne!(
            now, first,
            "a new file after the checkpoint, the covered one deleted"
        );
        // After the checkpoint the new file alone carries new batches.
        e.apply(vec![put("b", "1")]).unwrap();
        e.sync().unwrap();
        e.crash();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        assert_eq!(get(&e, "a").as_deref(), Some("1"));
        assert_eq!(get(&e, "b").as_deref(), Some("1"));
    }

    #[test]
    fn a_clean_close_leaves_no_log_to_replay() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        e.apply(vec![put("a", "1")]).unwrap();
        drop(e);
        assert_eq!(log_files(&d.path().join("wal")).unwrap().len(), 0);
        assert_eq!(lock(&disk.durable).len(), 1);
    }

    #[test]
    fn the_checkpointer_runs_on_size_and_reopens_the_engine() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let tuning = Tuning {
            checkpoint_bytes: 4096,
            checkpoint_after: Duration::from_secs(3600),
            reopen_after_bytes: 16 * 1024,
        };
        let e = WalEngine::open(d.path(), mem_opener(&disk), tuning).unwrap();
        let value = "x".repeat(1000);
        for i in 0..100 {
            e.apply(vec![put(&format!("k{i:03}"), &value)]).unwrap();
        }
        // Wait on the checkpointer's own effect: the engine reopened (and synced) at least
        // once, which only a checkpoint after 16 KiB of batches does.
        let opens = lock(&disk.opens);
        let (opens, timeout) = disk
            .opened
            .wait_timeout_while(opens, Duration::from_secs(30), |n| *n < 2)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "no reopen after 100 KB of batches ({})",
            *opens
        );
        drop(opens);
        e.sync().unwrap();
        e.crash();
        let e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
        for i in 0..100 {
            assert_eq!(
                get(&e, &format!("k{i:03}")).as_deref(),
                Some(value.as_str())
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(u8, u8),
        Remove(u8),
        Checkpoint,
        Reopen,
        Range(u8, u8, usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
            3 => (0u8..40).prop_map(Step::Remove),
            1 => Just(Step::Checkpoint),
            1 => Just(Step::Reopen),
            3 => (0u8..42, 0u8..42, 0usize..50).prop_map(|(a, b, l)| Step::Range(a, b, l)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Reads through the layers (live, frozen, engine) equal a plain ordered map, across
        /// checkpoints and crash-and-reopen.
        #[test]
        fn layered_reads_match_a_model(steps in proptest::collection::vec(step(), 1..120)) {
            let d = tempfile::tempdir().unwrap();
            let disk = Arc::new(Disk::default());
            let key = |k: u8| vec![b'k', k];
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
            for st in steps {
                match st {
                    Step::Put(k, v) => {
                        e.apply(vec![(key(k), Some(vec![v]))]).unwrap();
                        model.insert(key(k), vec![v]);
                    }
                    Step::Remove(k) => {
                        e.apply(vec![(key(k), None)]).unwrap();
                        model.remove(&key(k));
                    }
                    Step::Checkpoint => e.checkpoint().unwrap(),
                    Step::Reopen => {
                        e.sync().unwrap();
                        e.crash();
                        e = WalEngine::open(d.path(), mem_opener(&disk), manual()).unwrap();
                    }
                    Step::Range(a, b, limit) => {
                        let (a, b) = (key(a), key(b));
                        let got = e.range(&a, &b, limit).unwrap();
                        let want: Vec<_> = if a < b {
                            model
                                .range(a..b)
                                .take(limit)
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                for k in [0u8, 7, 39] {
                    proptest::prop_assert_eq!(e.get(&key(k)).unwrap(), model.get(&key(k)).cloned());
                }
            }
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let ops = vec![put("k", "v"), (b"gone".to_vec(), None), put("", "")];
        let rec = encode(&ops).unwrap();
        match read_record(&mut &rec[..], 0).unwrap() {
            Next::Record(back, len) => {
                assert_eq!(back, ops);
                assert_eq!(len, rec.len() as u64);
            }
            _ => panic!("record not read back"),
        }
        let mut huge = rec.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_record(&mut &huge[..], 0).unwrap(),
            Next::Corrupt(0, false)
        ));
        let short = &rec[..rec.len() - 1];
        assert!(matches!(
            read_record(&mut &short[..], 0).unwrap(),
            Next::Torn(0)
        ));
        let mut flipped = rec.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_record(&mut &flipped[..], 0).unwrap(),
            Next::Corrupt(0, true)
        ));
        assert!(matches!(read_record(&mut &[][..], 0).unwrap(), Next::End));
        // A zero length with a checksum is not unwritten space; a payload that passes its
        // checksum but does not decode is corruption, never a torn write.
        let mut head = [0u8; 8];
        head[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            read_record(&mut &head[..], 0).unwrap(),
            Next::Corrupt(0, false)
        ));
        let payload = 9u32.to_le_bytes();
        let mut bad = (payload.len() as u32).to_le_bytes().to_vec();
        bad.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bad.extend_from_slice(&payload);
        assert!(matches!(
            read_record(&mut &bad[..], 0).unwrap(),
            Next::Corrupt(0, false)
        ));
        assert!(matches!(
            read_record(&mut &[0u8; 64][..], 0).unwrap(),
            Next::Unwritten(0)
        ));
        let big = vec![(b"k".to_vec(), Some(vec![0u8; MAX_RECORD as usize]))];
        assert_eq!(
            encode(&big).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
