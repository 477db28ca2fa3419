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

/// The link protocol a message came from (the store's type); picks the `Content-Type`.
pub use crate::store::Protocol;

/// One stored message, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Stable across retries and restarts; sent as `Idempotency-Key`.
    pub id: String,
    pub channel: String,
    pub protocol: Protocol,
    /// Wall-clock time the message was stored.
    pub received_at: SystemTime,
    /// Whether the system clock was synchronized when `received_at` was taken (`None`:
    /// unknown; `null` in envelopes).
    pub clock_synced: Option<bool>,
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
    pub clock_synced: Option<bool>,
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

/// The queue could not answer (the store failed). Never an empty answer in disguise: the
/// caller decides whether to wait and retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// The queue of undelivered messages, per channel, oldest first.
pub trait Queue: Send + Sync {
    /// Channels that may have pending messages.
    fn channels(&self) -> Result<Vec<String>, QueueError>;
    /// Up to `max` oldest pending messages of `channel`, oldest first, without removing them.
    fn next_batch(&self, channel: &str, max: usize) -> Result<Vec<Outgoing>, QueueError>;
    /// The server accepted these (2xx): they are delivered. On `Err` none or some are
    /// marked; the rest go again with their ids.
    fn confirm(&self, ids: &[String]) -> Result<(), QueueError>;
    /// The server refused this message itself (400/409/413/415/422): park it as rejected.
    fn reject(&self, id: &str, reason: &str) -> Result<(), QueueError>;
    /// Not sent, by policy (`format = "fhir"`: a query, QC, no results): delivered, with
    /// the reason kept (the store writes it into the message's meta).
    fn skip(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        let _ = reason;
        self.confirm(&[id.to_string()])
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
    fn channels(&self) -> Result<Vec<String>, QueueError> {
        Ok(lock(&self.inner).pending.keys().cloned().collect())
    }

    fn next_batch(&self, channel: &str, max: usize) -> Result<Vec<Outgoing>, QueueError> {
        Ok(lock(&self.inner)
            .pending
            .get(channel)
            .map(|q| q.iter().take(max).cloned().collect())
            .unwrap_or_default())
    }

    fn confirm(&self, ids: &[String]) -> Result<(), QueueError> {
        let mut st = lock(&self.inner);
        for id in ids {
            if Self::remove(&mut st, id) {
                st.log.push(Fate::Confirmed(id.clone()));
            }
        }
        Ok(())
    }

    fn reject(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        let mut st = lock(&self.inner);
        if Self::remove(&mut st, id) {
            st.log
                .push(Fate::Rejected(id.to_string(), reason.to_string()));
        }
        Ok(())
    }

    fn skip(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        let mut st = lock(&self.inner);
        if Self::remove(&mut st, id) {
            st.log
                .push(Fate::Skipped(id.to_string(), reason.to_string()));
        }
        Ok(())
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

pub use crate::calendar::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown clock state travels as `null`, known as `true`/`false`.
    #[test]
    fn envelopes_carry_an_unknown_clock_as_null() {
        let mut m = Outgoing {
            id: "m1".into(),
            channel: "c".into(),
            protocol: Protocol::Hl7,
            received_at: UNIX_EPOCH,
            clock_synced: None,
            text: "x".into(),
            meta: serde_json::Value::Null,
        };
        let json = |m: &Outgoing| serde_json::to_value(Envelope::of("a", m)).unwrap();
        assert_eq!(json(&m)["clock_synced"], serde_json::Value::Null);
        assert_eq!(json(&m)["protocol"], "hl7");
        m.clock_synced = Some(false);
        assert_eq!(json(&m)["clock_synced"], false);
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
                clock_synced: Some(true),
                text: "x".into(),
                meta: serde_json::Value::Null,
            });
        }
        assert_eq!(q.next_batch("c", 2).unwrap().len(), 2);
        q.confirm(&["m0".into()]).unwrap();
        q.reject("m1", "bad").unwrap();
        assert_eq!(q.next_batch("c", 5).unwrap()[0].id, "m2");
        assert_eq!(
            q.log(),
            vec![
                Fate::Confirmed("m0".into()),
                Fate::Rejected("m1".into(), "bad".into())
            ]
        );
    }
}
