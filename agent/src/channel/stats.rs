//! Per-channel counters for status and metrics: lock-free, updated by the drivers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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
    /// Host queries answered, by where the answer came from ([`QuerySource`] order).
    queries: [AtomicU64; 3],
    /// Unix milliseconds of the last answered query (0: none yet).
    last_query_ms: AtomicU64,
    /// Query latency: counts per bucket of [`QUERY_LATENCY_BUCKETS`] (the last one is +Inf).
    query_latency: [AtomicU64; QUERY_LATENCY_BUCKETS.len() + 1],
    query_latency_sum_us: AtomicU64,
}

/// Where a host query's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuerySource {
    /// `[uplink] query_url` or the MQTT answers topic.
    Upstream,
    /// The order cache.
    Cache,
    /// Nothing known: "no information" was sent.
    None,
}

impl QuerySource {
    pub const ALL: [QuerySource; 3] = [Self::Upstream, Self::Cache, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Cache => "cache",
            Self::None => "none",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the query-latency histogram's buckets; the queries wait at
/// most `query_timeout` (< 60 s).
pub const QUERY_LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Host queries of one channel, in a [`ChannelSnapshot`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QuerySnapshot {
    pub upstream: u64,
    pub cache: u64,
    pub none: u64,
    /// Unix milliseconds of the last answer, None before the first.
    pub last_answer_ms: Option<u64>,
    /// Cumulative counts per bucket of [`QUERY_LATENCY_BUCKETS`], then +Inf (= the total).
    pub latency_buckets: Vec<u64>,
    pub latency_sum_seconds: f64,
}

impl QuerySnapshot {
    pub fn total(&self) -> u64 {
        self.upstream + self.cache + self.none
    }

    pub fn count(&self, source: QuerySource) -> u64 {
        match source {
            QuerySource::Upstream => self.upstream,
            QuerySource::Cache => self.cache,
            QuerySource::None => self.none,
        }
    }
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
        self.queries[source.index()].fetch_add(1, Relaxed);
        self.last_query_ms.store(now_ms(), Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = QUERY_LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(QUERY_LATENCY_BUCKETS.len());
        self.query_latency[bucket].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.query_latency_sum_us.fetch_add(us, Relaxed);
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
            queries: self.query_snapshot(),
        }
    }

    fn query_snapshot(&self) -> QuerySnapshot {
        let last = self.last_query_ms.load(Relaxed);
        let mut total = 0;
        let latency_buckets = self
            .query_latency
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect();
        QuerySnapshot {
            upstream: self.queries[QuerySource::Upstream.index()].load(Relaxed),
            cache: self.queries[QuerySource::Cache.index()].load(Relaxed),
            none: self.queries[QuerySource::None.index()].load(Relaxed),
            last_answer_ms: (last != 0).then_some(last),
            latency_buckets,
            latency_sum_seconds: self.query_latency_sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_are_counted_by_source_with_latency_buckets() {
        let c = ChannelCounters::default();
        assert_eq!(c.snapshot().queries.total(), 0);
        assert_eq!(c.snapshot().queries.last_answer_ms, None);
        c.query_answered(QuerySource::Cache, Duration::from_millis(3));
        c.query_answered(QuerySource::Upstream, Duration::from_millis(80));
        c.query_answered(QuerySource::None, Duration::from_secs(90));
        let q = c.snapshot().queries;
        assert_eq!((q.upstream, q.cache, q.none), (1, 1, 1));
        assert!(q.last_answer_ms.is_some());
        assert_eq!(q.latency_buckets.len(), QUERY_LATENCY_BUCKETS.len() + 1);
        assert_eq!(q.latency_buckets[0], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(q.latency_buckets[4], 2, "80 ms is in the 100 ms bucket");
        assert_eq!(q.latency_buckets[QUERY_LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(*q.latency_buckets.last().unwrap(), 3, "+Inf holds all");
        assert!((q.latency_sum_seconds - 90.083).abs() < 1e-6);
    }
}
