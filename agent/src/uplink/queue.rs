//! What the uplink needs from the store: a queue to drain and a place for the token.
//!
//! The traits are blocking (sled is) and are called only from the uplink's own thread.
//! In-memory implementations serve tests and benchmarks; [`MemoryQueue`] keeps a log of
//! confirmations so tests can check order and that nothing was lost.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Secret;

/// The link protocol a message came from; picks the `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

    /// The `Content-Type` of a raw-format POST (see "Upload contract").
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Hl7 => "x-application/hl7-v2+er7",
            Protocol::Astm | Protocol::Raw => "text/plain; charset=utf-8",
        }
    }
}

/// One stored message, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Stable across retries and restarts; sent as `Idempotency-Key`.
    pub id: String,
    pub channel: String,
    pub protocol: Protocol,
    /// Wall-clock time the message was stored.
    pub received_at: SystemTime,
    /// Whether the system clock was synchronized when `received_at` was taken.
    pub clock_synced: bool,
    /// The message as UTF-8 text (frame envelopes removed).
    pub text: String,
    pub meta: serde_json::Value,
}

/// The JSON envelope of ARCHITECTURE.md "Upload contract": one per message, in HTTP
/// `format = "json"` batches and as each MQTT publish.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub agent: &'a str,
    pub channel: &'a str,
    pub protocol: &'a str,
    pub received_at: String,
    pub clock_synced: bool,
    pub text: &'a str,
    pub meta: &'a serde_json::Value,
}

impl<'a> Envelope<'a> {
    pub fn of(agent: &'a str, m: &'a Outgoing) -> Envelope<'a> {
        Envelope {
            id: &m.id,
            agent,
            channel: &m.channel,
            protocol: m.protocol.as_str(),
            received_at: rfc3339(m.received_at),
            clock_synced: m.clock_synced,
            text: &m.text,
            meta: &m.meta,
        }
    }
}

/// The queue of undelivered messages, per channel, oldest first.
pub trait Queue: Send + Sync {
    /// Channels that may have pending messages.
    fn channels(&self) -> Vec<String>;
    /// Up to `max` oldest pending messages of `channel`, oldest first, without removing them.
    fn next_batch(&self, channel: &str, max: usize) -> Vec<Outgoing>;
    /// The server accepted these (2xx): they are delivered.
    fn confirm(&self, ids: &[String]);
    /// The server refused this message itself (400/409/413/415/422): park it as rejected.
    fn reject(&self, id: &str, reason: &str);
    /// Not sent, by policy (`format = "fhir"`: a query, QC, no results): delivered, with
    /// the reason kept (the store writes it into the message's meta).
    fn skip(&self, id: &str, reason: &str) {
        let _ = reason;
        self.confirm(&[id.to_string()]);
    }
}

/// A persisted access token. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub access_token: Secret,
    pub token_type: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix seconds when it was obtained (by this host's clock).
    pub obtained_at: u64,
    /// Granted scope as returned (or as requested when the response had none).
    pub scope: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Where the token survives restarts (sled in the agent).
pub trait TokenCache: Send + Sync {
    fn load(&self) -> Option<StoredToken>;
    fn save(&self, token: &StoredToken);
    fn clear(&self);
}

/// An in-memory [`TokenCache`], shareable between uplink instances to simulate restarts.
#[derive(Debug, Default, Clone)]
pub struct MemoryTokenCache {
    inner: Arc<Mutex<Option<StoredToken>>>,
}

impl MemoryTokenCache {
    pub fn new() -> Self {
        Self::default()
    }
}

impl TokenCache for MemoryTokenCache {
    fn load(&self) -> Option<StoredToken> {
        lock(&self.inner).clone()
    }
    fn save(&self, token: &StoredToken) {
        *lock(&self.inner) = Some(token.clone());
    }
    fn clear(&self) {
        *lock(&self.inner) = None;
    }
}

/// What happened to a message in a [`MemoryQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Confirmed(String),
    Rejected(String, String),
    /// Delivered by policy, not sent (`Queue::skip`).
    Skipped(String, String),
}

#[derive(Default)]
struct MemState {
    pending: BTreeMap<String, VecDeque<Outgoing>>,
    log: Vec<Fate>,
}

/// An in-memory [`Queue`] for tests and benchmarks.
#[derive(Default, Clone)]
pub struct MemoryQueue {
    inner: Arc<Mutex<MemState>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, msg: Outgoing) {
        lock(&self.inner)
            .pending
            .entry(msg.channel.clone())
            .or_default()
            .push_back(msg);
    }

    /// Pending messages in all channels.
    pub fn pending(&self) -> usize {
        lock(&self.inner).pending.values().map(VecDeque::len).sum()
    }

    /// Confirmations and rejections, in the order they happened.
    pub fn log(&self) -> Vec<Fate> {
        lock(&self.inner).log.clone()
    }

    pub fn confirmed(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|f| match f {
                Fate::Confirmed(id) => Some(id),
                Fate::Rejected(..) | Fate::Skipped(..) => None,
            })
            .collect()
    }

    pub fn rejected(&self) -> Vec<(String, String)> {
        self.log()
            .into_iter()
            .filter_map(|f| match f {
                Fate::Rejected(id, why) => Some((id, why)),
                Fate::Confirmed(_) | Fate::Skipped(..) => None,
            })
            .collect()
    }

    fn remove(state: &mut MemState, id: &str) -> bool {
        // Confirmations come in FIFO order: the head of some channel, almost always.
        for q in state.pending.values_mut() {
            if q.front().is_some_and(|m| m.id == id) {
                q.pop_front();
                return true;
            }
        }
        for q in state.pending.values_mut() {
            if let Some(pos) = q.iter().position(|m| m.id == id) {
                q.remove(pos);
                return true;
            }
        }
        false
    }
}

impl Queue for MemoryQueue {
    fn channels(&self) -> Vec<String> {
        lock(&self.inner).pending.keys().cloned().collect()
    }

    fn next_batch(&self, channel: &str, max: usize) -> Vec<Outgoing> {
        lock(&self.inner)
            .pending
            .get(channel)
            .map(|q| q.iter().take(max).cloned().collect())
            .unwrap_or_default()
    }

    fn confirm(&self, ids: &[String]) {
        let mut st = lock(&self.inner);
        for id in ids {
            if Self::remove(&mut st, id) {
                st.log.push(Fate::Confirmed(id.clone()));
            }
        }
    }

    fn reject(&self, id: &str, reason: &str) {
        let mut st = lock(&self.inner);
        if Self::remove(&mut st, id) {
            st.log
                .push(Fate::Rejected(id.to_string(), reason.to_string()));
        }
    }

    fn skip(&self, id: &str, reason: &str) {
        let mut st = lock(&self.inner);
        if Self::remove(&mut st, id) {
            st.log
                .push(Fate::Skipped(id.to_string(), reason.to_string()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unix seconds of a wall-clock time (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC with millisecond precision, e.g. `2026-11-28T14:59:47.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_golden() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_877_987_123);
        assert_eq!(rfc3339(t), "2026-11-28T14:59:47.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn civil_roundtrip() {
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn memory_queue_fifo_confirm_reject() {
        let q = MemoryQueue::new();
        for i in 0..3 {
            q.push(Outgoing {
                id: format!("m{i}"),
                channel: "c".into(),
                protocol: Protocol::Raw,
                received_at: UNIX_EPOCH,
                clock_synced: true,
                text: "x".into(),
                meta: serde_json::Value::Null,
            });
        }
        assert_eq!(q.next_batch("c", 2).len(), 2);
        q.confirm(&["m0".into()]);
        q.reject("m1", "bad");
        assert_eq!(q.next_batch("c", 5)[0].id, "m2");
        assert_eq!(
            q.log(),
            vec![
                Fate::Confirmed("m0".into()),
                Fate::Rejected("m1".into(), "bad".into())
            ]
        );
    }
}
