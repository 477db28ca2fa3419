//! The durable store: every message from an instrument is here, on disk, before the
//! instrument hears "ACK". This module doc is the design doc.
//!
//! # What it holds
//!
//! * per channel, a FIFO **inbox** of messages: id, channel, protocol, received-at (wall
//!   clock), clock-synced flag, bytes, meta (small JSON), state
//!   (`pending` / `delivered` / `rejected` / `incomplete`);
//! * **partials**: an ASTM transmission being received, one fragment (frame) at a time;
//! * an **outbox** of orders for the instruments, keyed by the order's own id, with a
//!   **specimen index** of the pending ones (the order cache host queries are answered
//!   from) and, with `order_reports`, each final state's report written in the same batch
//!   as a pending message of the reserved channel `#order-reports`;
//! * **feed cursors** (how far the HTTPS order feed was read);
//! * the uplink's access **token** with its expiry;
//! * a **duplicate index** (channel + SHA-256 of the bytes) over the messages kept;
//! * **counters** per channel (backlog, bytes, states, drops), so `stats()` is O(channels).
//!
//! Key layout: see `keys.rs`. Engine: sled 0.34 behind the `Engine` trait (`engine.rs`),
//! with the store's own write-ahead log in front of it (`wal.rs`); redb 2 implements the
//! same trait for the benchmark (`redb.rs`, feature `bench-redb`).
//!
//! # Invariants
//!
//! 1. **Durable before return.** [`Store::append`], [`Store::append_fragment`],
//!    [`Store::complete`], [`Store::put_order`] and [`Store::save_token`] return `Ok` only
//!    after an `Engine::sync` that started after their batch was applied has succeeded:
//!    the batch is a checksummed record in `wal/<n>.wal` and `sync` is `fdatasync(2)` of
//!    that file (sled itself only calls `sync_file_range`, see `engine.rs`). sled receives
//!    the batches at checkpoints, which flush it and `fsync` `sled/db` before the log
//!    files they cover are deleted. A caller may ACK the instrument on `Ok` and must
//!    answer negatively on `Err`.
//! 2. **No blobs.** No value written is larger than [`engine::CHUNK`] (8 KiB); a message
//!    whose header and bytes fit in one value is kept in its header record (store format
//!    3), a larger one is split into chunks, so sled never creates unsynced `blobs/`
//!    files. The sync still fsyncs any blob file and the `blobs/` directory if one ever
//!    appears.
//! 3. **Atomic records.** A message (header with its bytes or every chunk, queue entry,
//!    duplicate entry, counters, next sequence) is written in one atomic batch (one log
//!    record, checked by its CRC at replay); after a crash it is there whole or not at
//!    all. Counters live in the same batches as the changes they count, so they are
//!    exact after any crash.
//! 4. **Group commit.** Concurrent writers share syncs (`group_commit.rs`): a leader
//!    (the first writer to wait while no sync runs) syncs once for every writer whose batch
//!    was applied before the sync started.
//! 5. **Stable ids.** A message id is `<store id>-<sequence>` (`1a2b3c4d-000000000042`): the
//!    sequence is a persisted u64 that only grows; the store id is random per store, so ids
//!    never repeat, even if the store directory is deleted. Use it as `Idempotency-Key`.
//! 6. **FIFO per channel.** `next_pending` returns pending messages of a channel in
//!    sequence order. A retried message goes back to its original place in that order.
//! 7. **Delete only on confirmation.** A message leaves `pending` only by `confirm`
//!    (delivered), `reject` (parked, kept), or `drop_oldest` (logged at error, counted).
//!    Delivered messages are deleted by `prune` after `keep_delivered`, by
//!    `purge_delivered`, or first by `drop_oldest`. Confirmations are not synced on their
//!    own: after a crash a confirmed message may be pending again and is sent again with
//!    the same id (at-least-once).
//! 8. **Duplicates.** Appending bytes equal (SHA-256) to a complete message of the same
//!    channel still kept (pending, delivered within `keep_delivered`, rejected) stores
//!    nothing and returns that message's id with `duplicate = true`, after the sync that
//!    makes the original durable.
//! 9. **Partials are incomplete until completed.** A partial is stored as an `incomplete`
//!    message from its first fragment on; `complete` turns it `pending` atomically. After a
//!    restart (or `abandon`) an unfinished partial stays `incomplete`: kept, counted, never
//!    forwarded until `retry`.
//! 10. **Bounded.** `max_bytes` bounds the sum of every kept message's charge (bytes, meta
//!     and a fixed overhead); `min_free` refuses when the file system has less available.
//!     `when_full = refuse` returns [`StoreError::Full`]; `drop_oldest` deletes delivered
//!     messages (oldest delivery first), then undelivered ones (lowest sequence first), each
//!     logged with `tracing::error!` (never the bytes) and counted, until the new message
//!     fits the quota. `min_free` always refuses: sled's file never shrinks, deleting does
//!     not give the disk back.
//! 11. **IO errors.** After any engine error the store marks itself failed; the next write
//!     drops the engine and reopens it (sled stays failed after ENOSPC until reopened).
//!     Writes applied but not synced before the reopen get an error, never `Ok`. A message
//!     whose append failed may still be found after recovery; the instrument's resend is
//!     then a duplicate and ACKed.
//! 12. **Versioned.** The format version is checked at open; a different version is
//!     [`StoreError::UnsupportedFormat`], never a misread.
//! 13. **No channel list at open.** Channels are enumerated from the data, so a channel
//!     removed from the config keeps draining.
//!
//! # Blocking
//!
//! Every method blocks (disk IO, and appends wait for a sync, typically 0.3–5 ms). From
//! async code call them in `tokio::task::spawn_blocking`. [`Store`] is `Clone + Send +
//! Sync`: clones share one engine, one group commit and one write lock.
//!
//! # Measured (sled 0.34.7)
//!
//! See `docs/perf/store.md`: with the log, one writer reaches 90–119 % of the disk's raw
//! (appending) fsync rate and eight writers ~11k appends/s (sled alone: ~40 % and ~4k/s). sled's RSS
//! is not bounded by `cache_capacity`, and its file never shrinks.

mod call;
pub use call::calls_in_place;
pub use wal::tune_heap;
pub mod commits;
mod dedup;
mod engine;
mod group_commit;
mod inbox;
mod keys;
#[cfg(test)]
mod order_tests;
mod outbox;
mod quota;
#[cfg(feature = "bench-redb")]
mod redb;
pub mod remote;
mod specimens;
#[cfg(test)]
mod tests;
mod wal;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::calendar::rfc3339_ms;
pub use keys::Counters;
pub use outbox::{
    NewOrder, Order, OrderOutcome, OrderReportRecord, OrderState, Secret, Sweep, Token,
    ORDER_REPORTS,
};
pub use quota::FullReason;
pub use remote::{CommandRecord, CommandState};
pub use specimens::order_specimens;

use engine::{Engine, Op, Opener};
use group_commit::GroupCommit;

/// What to do when a message does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the message ([`StoreError::Full`]): the instrument is answered negatively.
    #[default]
    Refuse,
    /// Drop delivered messages first, then the oldest undelivered ones (logged as loss).
    DropOldest,
}

/// Limits, from `[buffer]` in the config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_bytes: u64,
    pub min_free: u64,
    pub when_full: WhenFull,
    pub keep_delivered: Duration,
    /// sled page cache; does not bound RSS (see docs/perf/store.md).
    pub cache_capacity: u64,
    /// Whether an order's final state writes its report as a pending message of
    /// [`ORDER_REPORTS`] in the same batch, for the uplink to deliver (durably). Off: the
    /// report only goes to `Hooks::order` (MQTT status topic, not durable).
    pub order_reports: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            min_free: 256 << 20,
            when_full: WhenFull::Refuse,
            keep_delivered: Duration::from_secs(7 * 86_400),
            cache_capacity: 8 << 20,
            order_reports: false,
        }
    }
}

/// Which engine backs the store. Only `Sled` is used by the agent; the others exist for
/// the benchmark comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// sled behind the store's write-ahead log (`wal.rs`): one fdatasync per group.
    #[default]
    Sled,
    /// sled alone, flushed and fsynced per group (the design before the log).
    SledDirect,
    #[cfg(feature = "bench-redb")]
    Redb,
}

/// State of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Delivered,
    Rejected,
    Incomplete,
}

/// Stable message id, usable as `Idempotency-Key`: `<store id hex>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    store: u32,
    seq: u64,
}

impl MessageId {
    /// The store-local sequence number (monotonic).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:012}", self.store, self.seq)
    }
}

impl std::str::FromStr for MessageId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadId(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let store = u32::from_str_radix(a, 16).map_err(|_| bad())?;
        let seq = b.parse().map_err(|_| bad())?;
        Ok(MessageId { store, seq })
    }
}

/// The link protocol a message came from. Stored as `"astm"`, `"hl7"` or `"raw"`; a
/// record naming anything else is corrupt, never read as one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Astm,
    Hl7,
    Raw,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Astm => "astm",
            Protocol::Hl7 => "hl7",
            Protocol::Raw => "raw",
        }
    }

    /// The `Content-Type` of a raw-format upload (ARCHITECTURE.md, "Upload contract").
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Hl7 => "x-application/hl7-v2+er7",
            Protocol::Astm | Protocol::Raw => "text/plain; charset=utf-8",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<labagent_config::Protocol> for Protocol {
    fn from(p: labagent_config::Protocol) -> Self {
        match p {
            labagent_config::Protocol::Astm => Protocol::Astm,
            labagent_config::Protocol::Hl7 => Protocol::Hl7,
            labagent_config::Protocol::Raw => Protocol::Raw,
        }
    }
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: String,
    pub protocol: Protocol,
    pub received_at: SystemTime,
    /// Whether the system clock was synchronized when `received_at` was taken; `None`:
    /// unknown (the kernel could not be asked).
    pub clock_synced: Option<bool>,
    pub bytes: Vec<u8>,
    /// Small JSON object: sender, record counts, MSH-10, ...
    pub meta: Meta,
}

/// A message's meta (a small JSON object, see `crate::meta`) as the JSON text it is
/// stored as. The store copies it into and out of headers without parsing it: building a
/// `serde_json::Value` for every message, serializing it and dropping it was about a
/// tenth of the ingest thread, and every state change parsed and wrote it again
/// (docs/perf/ingest.md). Readers get a `Value` ([`MessageInfo::meta`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Meta(Box<serde_json::value::RawValue>);

impl Meta {
    /// JSON `null`: no meta. (`()` always serializes, so this never takes `of`'s
    /// fallback.)
    pub fn null() -> Meta {
        Meta::of(&())
    }

    /// The JSON of `v`, serialized once (compact, like every meta stored). A value that
    /// cannot be JSON (a map with non-text keys) is `null`; meta is never worth a refusal.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Meta {
        match serde_json::value::to_raw_value(v) {
            Ok(r) => Meta(r),
            Err(e) => {
                tracing::debug!("message meta is not JSON ({e}); stored as null");
                Meta::null()
            }
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Parsed (`null` if the text is not JSON, which the store never writes).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Meta {
    fn eq(&self, other: &Meta) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<serde_json::Value> for Meta {
    fn from(v: serde_json::Value) -> Meta {
        Meta::of(&v)
    }
}

/// One fragment (e.g. ASTM frame payload) of a message still being received.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub channel: String,
    /// Identifies the transmission within the channel (chosen by the receiver).
    pub transmission: String,
    pub protocol: Protocol,
    /// Used for the message when this is the first fragment.
    pub received_at: SystemTime,
    pub clock_synced: Option<bool>,
    pub bytes: Vec<u8>,
}

/// A write applied but perhaps not yet durable: wait for it with
/// [`Store::wait_durable`] (or the blocking [`Store::wait_durable_blocking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a write is durable only once its ticket has been waited for"]
pub struct Ticket(u64);

impl Ticket {
    /// The later of two tickets: waiting for it covers both.
    pub fn max(self, other: Ticket) -> Ticket {
        Ticket(self.0.max(other.0))
    }
}

/// Result of an append: the id, and whether the message was already kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: MessageId,
    pub duplicate: bool,
}

/// Everything about a stored message but its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInfo {
    pub id: MessageId,
    pub channel: String,
    pub protocol: Protocol,
    pub received_at: SystemTime,
    /// `None`: unknown when the message was stored.
    pub clock_synced: Option<bool>,
    pub state: State,
    pub reason: Option<String>,
    pub meta: serde_json::Value,
    pub len: u64,
    /// Hex SHA-256 of the bytes (empty while a partial is open).
    pub sha256: String,
    pub delivered_at: Option<SystemTime>,
}

/// A stored message with its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub info: MessageInfo,
    pub bytes: Vec<u8>,
}

/// Per-channel figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub channel: String,
    pub counters: Counters,
    /// Oldest pending message: id and received-at.
    pub oldest_pending: Option<(MessageId, SystemTime)>,
}

/// `stats()`: per channel and totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub channels: Vec<ChannelStats>,
    pub totals: Counters,
    /// Bytes the engine occupies on disk (sled's file never shrinks).
    pub disk_bytes: u64,
    /// Engine syncs done since open.
    pub syncs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store full, message refused: {0}")]
    Full(FullReason),
    #[error("store IO error: {0}")]
    Io(#[from] io::Error),
    #[error("store format version {found} is not supported by this labagent (supports {supported}); use the labagent version that wrote it, or move the directory away")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("no message {0}")]
    NotFound(MessageId),
    #[error("not a message id: {0:?}")]
    BadId(String),
    #[error("message {id} is {state:?}; cannot {op}")]
    InvalidState {
        id: MessageId,
        state: State,
        op: &'static str,
    },
    #[error("invalid channel name {0:?} (1..=255 bytes, no NUL)")]
    InvalidChannel(String),
    #[error("no open partial message for transmission {transmission:?} on channel {channel:?}")]
    NoPartial {
        channel: String,
        transmission: String,
    },
    #[error("no order {0:?}")]
    NoOrder(String),
    #[error("order {0:?} has already left pending (delivered, failed, answered or expired)")]
    OrderNotPending(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The durable store. Cheap to clone; see the module doc for the invariants.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

type EngineSlot = Arc<RwLock<Option<Box<dyn Engine>>>>;

struct Shared {
    dir: PathBuf,
    opts: StoreOptions,
    opener: Opener,
    engine: EngineSlot,
    writer: Mutex<Writer>,
    gc: Arc<GroupCommit>,
    failed: AtomicBool,
    floors: Mutex<QueueFloors>,
    /// The `min_free` check's last answer (taken under the writer lock).
    free: Mutex<quota::FreeSpace>,
    /// Which duplicate keys the store may hold (taken under the writer lock, or alone).
    dedup: Mutex<dedup::Filter>,
}

/// Where each channel's queue scan may start: no queue entry of the channel has a lower
/// sequence. Why: the uplink takes the oldest pending message again and again, and the
/// entries it confirmed stay in the engine (hidden by the log's layer) until the next
/// checkpoint, so a scan from the queue's start stepped over all of them on every call
/// (~150 µs per message in the raw HTTP drain, docs/perf/uplink-store.md).
///
/// A floor only rises after a scan found the queue's first entry above it, and only if no
/// entry was re-queued meanwhile (`version`); a queue entry written for a sequence
/// allocated earlier (retry, a completed fragment) lowers it and bumps `version`.
#[derive(Default)]
struct QueueFloors {
    floors: std::collections::HashMap<String, u64>,
    version: u64,
}

/// Queue entries in `ops` for sequences allocated before `next_seq` (re-queued, not new):
/// they may lie below their channel's floor.
fn requeued(ops: &[Op], next_seq: u64) -> Vec<(String, u64)> {
    ops.iter()
        .filter_map(|(k, v)| {
            v.as_ref()?;
            let (chan, seq) = keys::parse_queue(k)?;
            (seq < next_seq).then(|| (chan.to_string(), seq))
        })
        .collect()
}

/// State owned by the single writer (under `Shared::writer`).
struct Writer {
    store_id: u32,
    next_seq: u64,
    counters: BTreeMap<String, Counters>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, a directory owned by labagent (0700).
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Self::open_with(dir, opts, EngineKind::Sled)
    }

    /// Opens with an explicit engine (the benchmark compares sled and redb).
    pub fn open_with(dir: impl AsRef<Path>, opts: StoreOptions, kind: EngineKind) -> Result<Store> {
        let opener = match kind {
            EngineKind::Sled => wal::wal_opener(engine::sled_opener(opts.cache_capacity)),
            EngineKind::SledDirect => engine::sled_opener(opts.cache_capacity),
            #[cfg(feature = "bench-redb")]
            EngineKind::Redb => redb::redb_opener(),
        };
        Self::open_engine(dir.as_ref(), opts, opener)
    }

    fn open_engine(dir: &Path, opts: StoreOptions, opener: Opener) -> Result<Store> {
        create_private_dir(dir)?;
        let eng = opener(dir)?;
        sync_sled_conf(dir)?;
        let writer = load(&*eng)?;
        let engine: EngineSlot = Arc::new(RwLock::new(Some(eng)));
        let slot = Arc::clone(&engine);
        let gc = GroupCommit::new(Box::new(move || {
            let g = slot.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(e) => e.sync(),
                None => Err(io::Error::other("store engine is closed")),
            }
        }));
        let store = Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                opts,
                opener,
                engine,
                writer: Mutex::new(writer),
                gc,
                failed: AtomicBool::new(false),
                floors: Mutex::default(),
                free: Mutex::default(),
                dedup: Mutex::default(),
            }),
        };
        store.abandon_all_partials()?;
        dedup::build(&store);
        Ok(store)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.opts
    }

    /// Makes everything written so far durable (e.g. confirmations before shutdown).
    pub fn sync(&self) -> Result<()> {
        let gen = self.shared.gc.fresh();
        self.shared.gc.wait(gen).map_err(|e| self.io_failed(e))
    }

    /// Channels that have, or had, messages (from the data, not from the config).
    pub fn channels(&self) -> Vec<String> {
        self.lock_writer().counters.keys().cloned().collect()
    }

    /// Per-channel backlog and totals; O(channels).
    pub fn stats(&self) -> Result<Stats> {
        let counters = self.lock_writer().counters.clone();
        let store_id = self.lock_writer().store_id;
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let mut totals = Counters::default();
        let mut channels = Vec::new();
        for (channel, c) in counters {
            // Nothing is queued below the floor (see `QueueFloors`).
            let oldest = eng.range(
                &keys::queue(&channel, self.floor(&channel).0),
                &keys::prefix_end(&keys::queue_prefix(&channel)),
                1,
            )?;
            let oldest_pending = match oldest.first() {
                Some((k, _)) => {
                    let seq = keys::seq_suffix(k);
                    inbox::header(&**eng, seq)?.map(|h| {
                        (
                            MessageId {
                                store: store_id,
                                seq,
                            },
                            ms_to_time(h.received_at_ms),
                        )
                    })
                }
                None => None,
            };
            totals.pending += c.pending;
            totals.pending_bytes += c.pending_bytes;
            totals.incomplete += c.incomplete;
            totals.rejected += c.rejected;
            totals.delivered += c.delivered;
            totals.kept_bytes += c.kept_bytes;
            totals.dropped_undelivered += c.dropped_undelivered;
            totals.dropped_delivered += c.dropped_delivered;
            channels.push(ChannelStats {
                channel,
                counters: c,
                oldest_pending,
            });
        }
        Ok(Stats {
            channels,
            totals,
            disk_bytes: eng.disk_bytes()?,
            syncs: self.shared.gc.syncs(),
        })
    }

    // ---- plumbing shared by inbox.rs and outbox.rs ----

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.shared.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn engine(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Box<dyn Engine>>>> {
        Ok(self.shared.engine.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records an IO error: the next write reopens the engine.
    fn io_failed(&self, e: io::Error) -> StoreError {
        if !self.shared.failed.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %e, "store IO error; the store will be reopened on the next write");
        }
        StoreError::Io(e)
    }

    /// Under the writer lock: reopens the engine if an IO error happened.
    fn ensure_healthy(&self, w: &mut Writer) -> Result<()> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.gc.discard_unsynced();
        let mut slot = self
            .shared
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // sled must be dropped (file lock, failed state) before it is opened again.
        *slot = None;
        let eng = (self.shared.opener)(&self.shared.dir)?;
        *w = load(&*eng)?;
        // Writes discarded by the reopen (a confirm, say) may bring entries back below a
        // floor.
        self.reset_floors();
        *slot = Some(eng);
        self.shared.failed.store(false, Ordering::SeqCst);
        tracing::warn!("store reopened after an IO error");
        Ok(())
    }

    /// Applies `ops` plus the changed counters and the next sequence atomically. Returns the
    /// write generation to wait on for durability.
    fn apply(
        &self,
        w: &mut Writer,
        mut ops: Vec<Op>,
        changed: BTreeMap<String, Counters>,
        next_seq: u64,
    ) -> Result<u64> {
        for (ch, c) in &changed {
            ops.push((
                keys::counters(ch),
                Some(serde_json::to_vec(c).map_err(corrupt)?),
            ));
        }
        if next_seq != w.next_seq {
            ops.push((
                keys::NEXT_SEQ.to_vec(),
                Some(next_seq.to_be_bytes().to_vec()),
            ));
        }
        // Lowered before the write, so scans starting now begin low enough, and again
        // after it: a scan that read the lowered floor before the entry was visible may
        // have raised it past the entry meanwhile.
        let requeued = requeued(&ops, w.next_seq);
        self.lower_floors(&requeued);
        dedup::note_puts(&self.shared.dedup, &ops);
        let r = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            eng.apply(ops)
        };
        self.lower_floors(&requeued);
        r.map_err(|e| match e.kind() {
            // A batch the log refuses by size: this message's problem, not the store's.
            io::ErrorKind::InvalidInput => StoreError::Io(e),
            _ => self.io_failed(e),
        })?;
        w.counters.extend(changed);
        w.next_seq = next_seq;
        Ok(self.shared.gc.note_write())
    }

    fn floors(&self) -> MutexGuard<'_, QueueFloors> {
        self.shared.floors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lowers the floors to re-queued entries, and makes raises by scans that read the
    /// floors before this fail.
    fn lower_floors(&self, requeued: &[(String, u64)]) {
        if requeued.is_empty() {
            return;
        }
        let mut f = self.floors();
        f.version += 1;
        for (chan, seq) in requeued {
            if let Some(floor) = f.floors.get_mut(chan) {
                *floor = (*floor).min(*seq);
            }
        }
    }

    fn reset_floors(&self) {
        let mut f = self.floors();
        f.floors.clear();
        f.version += 1;
    }

    /// Where a scan of `channel`'s queue may start, and the version to raise it with.
    fn floor(&self, channel: &str) -> (u64, u64) {
        let f = self.floors();
        (f.floors.get(channel).copied().unwrap_or(0), f.version)
    }

    /// After a scan from `floor(channel)` found `first` as the queue's first entry.
    fn raise_floor(&self, channel: &str, version: u64, first: u64) {
        let mut f = self.floors();
        if f.version != version {
            return;
        }
        match f.floors.get_mut(channel) {
            Some(floor) => *floor = (*floor).max(first),
            None => {
                f.floors.insert(channel.to_string(), first);
            }
        }
    }

    /// Waits until write generation `gen` is durable.
    fn durable(&self, gen: u64) -> Result<()> {
        self.shared.gc.wait(gen).map_err(|e| self.io_failed(e))
    }

    /// Blocks until the write behind `t` is durable (or its sync failed).
    pub fn wait_durable_blocking(&self, t: Ticket) -> Result<()> {
        self.durable(t.0)
    }

    /// Waits until the write behind `t` is durable, without a thread hand-off: every
    /// writer of a group waits here; the first to find no sync running yields once (so
    /// tasks made ready by the same wake-up apply their writes too), then makes the one
    /// `fdatasync` for all of them on its own thread; the others are woken when it is
    /// done. On the agent's single-threaded ingest runtime eight connections share one
    /// sync with one wake-up each and no futex; a sync led by another thread (an order
    /// from MQTT, say) wakes the waiters through their wakers.
    pub async fn wait_durable(&self, t: Ticket) -> Result<()> {
        let gc = &self.shared.gc;
        let mut yielded = false;
        loop {
            match gc.check(t.0, None) {
                group_commit::Check::Done(r) => return r.map_err(|e| self.io_failed(e)),
                group_commit::Check::Idle if !yielded => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                group_commit::Check::Idle => gc.lead(),
                group_commit::Check::Running => {
                    std::future::poll_fn(|cx| match gc.check(t.0, Some(cx.waker())) {
                        group_commit::Check::Running => std::task::Poll::Pending,
                        _ => std::task::Poll::Ready(()),
                    })
                    .await
                }
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(e) = self
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if let Err(err) = e.sync() {
                tracing::error!(error = %err, "store: final sync failed");
            }
        }
        self.gc.stop();
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() {
                engine::sync_dir(parent)?;
            }
        }
    }
    Ok(())
}

/// sled 0.34 writes `sled/conf` at open without an fsync: after a power cut the file can
/// be found empty, and sled warns and rewrites it at the next open. Synced once per open
/// (its directory entry is synced by the engine). Engines without the file: nothing to do.
fn sync_sled_conf(dir: &Path) -> io::Result<()> {
    match std::fs::File::open(dir.join("sled").join("conf")) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads (or initialises) version, store id, sequence and counters.
fn load(eng: &dyn Engine) -> Result<Writer> {
    match eng.get(keys::VERSION)? {
        Some(v) => {
            let found = u32::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("bad version record".into()))?,
            );
            if keys::UPGRADABLE.contains(&found) {
                eng.apply(vec![(
                    keys::VERSION.to_vec(),
                    Some(keys::FORMAT_VERSION.to_be_bytes().to_vec()),
                )])?;
                // In sled itself, not only in the log: a version-1 binary must see it.
                eng.checkpoint()?;
                tracing::info!(
                    from = found,
                    to = keys::FORMAT_VERSION,
                    "store format upgraded"
                );
            } else if found != keys::FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: keys::FORMAT_VERSION,
                });
            }
        }
        None => {
            if !eng.range(&[], &[0xff], 1)?.is_empty() {
                return Err(StoreError::Corrupt("data without a format version".into()));
            }
            let id = new_store_id();
            eng.apply(vec![
                (
                    keys::VERSION.to_vec(),
                    Some(keys::FORMAT_VERSION.to_be_bytes().to_vec()),
                ),
                (keys::STORE_ID.to_vec(), Some(id.to_be_bytes().to_vec())),
                (keys::NEXT_SEQ.to_vec(), Some(1u64.to_be_bytes().to_vec())),
            ])?;
            // In sled itself: a version-1 binary must find a version, not an empty store.
            eng.checkpoint()?;
        }
    }
    let u32_of = |k: &[u8]| -> Result<u32> {
        let v = eng
            .get(k)?
            .ok_or_else(|| StoreError::Corrupt("missing store id".into()))?;
        Ok(u32::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("bad store id".into()))?,
        ))
    };
    let store_id = u32_of(keys::STORE_ID)?;
    let seq = eng
        .get(keys::NEXT_SEQ)?
        .ok_or_else(|| StoreError::Corrupt("missing sequence".into()))?;
    let next_seq = u64::from_be_bytes(
        seq.as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("bad sequence".into()))?,
    );
    let mut counters = BTreeMap::new();
    for (k, v) in eng.range(b"C", b"D", usize::MAX)? {
        let ch = String::from_utf8(k[1..].to_vec()).map_err(corrupt)?;
        counters.insert(ch, serde_json::from_slice(&v).map_err(corrupt)?);
    }
    Ok(Writer {
        store_id,
        next_seq,
        counters,
    })
}

fn new_store_id() -> u32 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format!("{:?}{}", SystemTime::now(), std::process::id()).as_bytes());
    // RandomState is seeded from the OS's randomness.
    use std::hash::BuildHasher;
    h.update(
        std::collections::hash_map::RandomState::new()
            .hash_one(1u8)
            .to_le_bytes(),
    );
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Io(io::Error::other("store engine unavailable (reopen failed)"))
}

fn time_to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn ms_to_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_channel(ch: &str) -> Result<()> {
    if ch.is_empty() || ch.len() > 255 || ch.contains('\0') {
        return Err(StoreError::InvalidChannel(ch.to_string()));
    }
    Ok(())
}
