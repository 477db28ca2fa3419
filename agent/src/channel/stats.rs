//! Per-channel counters for status and metrics: lock-free, updated by the drivers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::query::QueryCounters;
pub use crate::query::{QuerySnapshot, QuerySource, QUERY_LATENCY_BUCKETS};

/// Counters of one channel since the agent started.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Messages (or frames completing messages) received from the instrument.
    received: AtomicU64,
    /// Messages acknowledged to the instrument (after they were durable).
    acknowledged: AtomicU64,
    /// Messages the store refused (quota, disk): answered negatively.
    refused: AtomicU64,
    /// New messages stored.
    stored: AtomicU64,
    stored_bytes: AtomicU64,
    /// Messages equal to one already kept: acknowledged, stored once.
    duplicates: AtomicU64,
    /// Transmissions that ended before their end (timer, line lost): kept as incomplete.
    incomplete: AtomicU64,
    /// Bad input kept as rejected (HL7 that does not parse, raw over-long...).
    rejected: AtomicU64,
    /// Frames answered NAK (checksum, sequence, store refusal).
    naks: AtomicU64,
    /// Unix milliseconds of the last stored message (0: none yet).
    last_message_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Host queries answered.
    queries: QueryCounters,
}

/// A copy of the counters, for `labagent status` and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChannelSnapshot {
    pub received: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub stored: u64,
    pub stored_bytes: u64,
    pub duplicates: u64,
    pub incomplete: u64,
    pub rejected: u64,
    pub naks: u64,
    /// Unix milliseconds, None before the first message.
    pub last_message_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Host queries answered (absent in the status of an older agent).
    #[serde(default)]
    pub queries: QuerySnapshot,
}

impl ChannelCounters {
    pub fn received(&self) {
        self.received.fetch_add(1, Relaxed);
    }
    pub fn acknowledged(&self) {
        self.acknowledged.fetch_add(1, Relaxed);
    }
    pub fn stored(&self, bytes: usize) {
        self.stored.fetch_add(1, Relaxed);
        self.stored_bytes.fetch_add(bytes as u64, Relaxed);
        self.last_message_ms.store(now_ms(), Relaxed);
    }
    /// A host query was answered from `source`, `latency` after it was complete.
    pub fn query_answered(&self, source: QuerySource, latency: Duration) {
        self.queries.answered(source, latency, now_ms());
    }
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
    }
    pub fn refused(&self, why: &str) {
        self.refused.fetch_add(1, Relaxed);
        self.set_error(why);
    }
    pub fn incomplete(&self) {
        self.incomplete.fetch_add(1, Relaxed);
    }
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    pub fn nak(&self) {
        self.naks.fetch_add(1, Relaxed);
    }
    /// Last error (never data bytes).
    pub fn set_error(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    pub fn snapshot(&self) -> ChannelSnapshot {
        let last = self.last_message_ms.load(Relaxed);
        ChannelSnapshot {
            received: self.received.load(Relaxed),
            acknowledged: self.acknowledged.load(Relaxed),
            refused: self.refused.load(Relaxed),
            stored: self.stored.load(Relaxed),
            stored_bytes: self.stored_bytes.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            incomplete: self.incomplete.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            naks: self.naks.load(Relaxed),
            last_message_ms: (last != 0).then_some(last),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            queries: self.queries.snapshot(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
