//! Key layout and record encoding. One ordered key space; the first byte names the table.
//!
//! | key | value | what |
//! |---|---|---|
//! | `V` | format version, u32 BE | checked at open |
//! | `U` | store id, u32 BE | random per store; first half of every message id |
//! | `S` | next sequence, u64 BE | persisted in the same batch as each append |
//! | `M` seq | [`Header`] JSON, then NUL and the bytes if they fit | one per kept message (any state) |
//! | `B` seq chunk(u32) | bytes, ≤ `CHUNK` | the bytes of a message they do not fit beside |
//! | `Q` chan 0 seq | — | pending FIFO per channel |
//! | `D` chan 0 sha256 | seq | duplicate index (complete messages kept) |
//! | `T` at(u64 secs) seq | — | delivered, by delivery time (prune, drop_oldest) |
//! | `P` chan 0 transmission | seq | open partial messages (ASTM transmissions) |
//! | `C` chan | [`Counters`] JSON | O(1) per-channel counters |
//! | `O` order id | order JSON | outbox |
//! | `R` chan 0 seq | order id | pending orders FIFO per channel |
//! | `X` chan 0 specimen 0 seq | order id | specimen index of pending orders (order cache) |
//! | `F` name | cursor text | feed cursors (the HTTPS order feed) |
//! | `K` | token JSON | uplink access token |
//! | `G` id 0 chunk(u32) | command record JSON, chunked | remote commands (`remote.rs`) |

use serde::{Deserialize, Serialize};

/// 2: the write-ahead log (`wal/`) is part of the store; a version-1 binary would ignore
/// it after a crash, so it must refuse the store.
/// 3: a complete message's bytes may follow its header in its `M` value ([`encode`]); a
/// version-2 binary would read that value as corrupt JSON.
/// Version 1 and 2 stores are upgraded in place: their records read as they are.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// Formats this binary opens and upgrades to [`FORMAT_VERSION`].
pub(crate) const UPGRADABLE: &[u32] = &[1, 2];

pub(crate) const VERSION: &[u8] = b"V";
pub(crate) const STORE_ID: &[u8] = b"U";
pub(crate) const NEXT_SEQ: &[u8] = b"S";
pub(crate) const TOKEN: &[u8] = b"K";

pub(crate) fn msg(seq: u64) -> Vec<u8> {
    cat(b"M", &[], &seq.to_be_bytes())
}
pub(crate) fn body(seq: u64, chunk: u32) -> Vec<u8> {
    let mut k = cat(b"B", &[], &seq.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}
pub(crate) fn body_prefix(seq: u64) -> Vec<u8> {
    cat(b"B", &[], &seq.to_be_bytes())
}
pub(crate) fn queue(chan: &str, seq: u64) -> Vec<u8> {
    cat(b"Q", chan.as_bytes(), &seq.to_be_bytes())
}
/// The channel and sequence of a [`queue`] key; `None` for any other key.
pub(crate) fn parse_queue(key: &[u8]) -> Option<(&str, u64)> {
    let rest = key.strip_prefix(b"Q")?;
    if rest.len() < 10 || rest[rest.len() - 9] != 0 {
        return None;
    }
    let chan = std::str::from_utf8(&rest[..rest.len() - 9]).ok()?;
    Some((chan, seq_suffix(key)))
}
pub(crate) fn queue_prefix(chan: &str) -> Vec<u8> {
    cat(b"Q", chan.as_bytes(), &[])
}
pub(crate) fn dedup(chan: &str, sha: &[u8; 32]) -> Vec<u8> {
    cat(b"D", chan.as_bytes(), sha)
}
pub(crate) fn dedup_prefix() -> Vec<u8> {
    b"D".to_vec()
}
pub(crate) fn delivered(at_secs: u64, seq: u64) -> Vec<u8> {
    let mut k = b"T".to_vec();
    k.extend_from_slice(&at_secs.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
pub(crate) fn partial(chan: &str, transmission: &str) -> Vec<u8> {
    cat(b"P", chan.as_bytes(), transmission.as_bytes())
}
pub(crate) fn counters(chan: &str) -> Vec<u8> {
    let mut k = b"C".to_vec();
    k.extend_from_slice(chan.as_bytes());
    k
}
pub(crate) fn order(id: &str) -> Vec<u8> {
    let mut k = b"O".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}
pub(crate) fn order_queue(chan: &str, seq: u64) -> Vec<u8> {
    cat(b"R", chan.as_bytes(), &seq.to_be_bytes())
}
pub(crate) fn order_queue_prefix(chan: &str) -> Vec<u8> {
    cat(b"R", chan.as_bytes(), &[])
}

/// Specimen index entry: `X chan 0 specimen 0 seq`. Specimen ids never hold a NUL (see
/// `specimens.rs`), so the prefix of one id never matches another.
pub(crate) fn specimen(chan: &str, specimen: &str, seq: u64) -> Vec<u8> {
    let mut k = specimen_prefix(chan, specimen);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
pub(crate) fn specimen_prefix(chan: &str, specimen: &str) -> Vec<u8> {
    let mut k = cat(b"X", chan.as_bytes(), specimen.as_bytes());
    k.push(0);
    k
}
pub(crate) fn cursor(name: &str) -> Vec<u8> {
    let mut k = b"F".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// `table chan 0 tail`; channel names never contain NUL (checked by the store).
fn cat(table: &[u8], chan: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + chan.len() + tail.len());
    k.extend_from_slice(table);
    if !chan.is_empty() {
        k.extend_from_slice(chan);
        k.push(0);
    }
    k.extend_from_slice(tail);
    k
}

/// End of the key range that starts with `prefix` (exclusive).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut e = prefix.to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return e;
        }
    }
    vec![0xff; 64]
}

pub(crate) fn seq_suffix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(b)
}

/// Everything about a stored message except its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Header {
    pub channel: String,
    pub protocol: super::Protocol,
    /// Milliseconds since the Unix epoch (wall clock; may be before 1970 on a bad clock).
    pub received_at_ms: i64,
    /// `null` when unknown; records written before it could be unknown hold `true` or
    /// `false` and read as known.
    pub clock_synced: Option<bool>,
    pub meta: super::Meta,
    pub state: super::State,
    pub len: u64,
    pub chunks: u32,
    /// Hex SHA-256 of the bytes; empty while the message is an open partial.
    pub sha256: String,
    pub reason: Option<String>,
    pub delivered_at: Option<u64>,
    /// Set while this message is an open partial (ASTM transmission in progress).
    pub transmission: Option<String>,
    /// The bytes, when they are kept in the `M` value beside the header rather than in
    /// `B` chunks (`chunks` is then 0). Not part of the JSON: [`encode`] appends them.
    #[serde(skip)]
    pub inline: Option<Vec<u8>>,
}

/// The `M` value of `h`: its JSON, and if it holds its bytes, a NUL and the bytes. JSON
/// text never holds a raw NUL (serde_json escapes control characters), so the first NUL
/// ends the header. One key per message instead of two: each key costs sled about 10 µs
/// of CPU at the checkpoint (docs/perf/ingest.md).
pub(crate) fn encode(h: &Header) -> serde_json::Result<Vec<u8>> {
    let extra = h.inline.as_ref().map_or(0, |b| b.len() + 1);
    let mut v = Vec::with_capacity(384 + extra);
    serde_json::to_writer(&mut v, h)?;
    if let Some(b) = &h.inline {
        v.push(0);
        v.extend_from_slice(b);
    }
    Ok(v)
}

/// Reads an `M` value written by [`encode`] (or by formats 1 and 2: JSON alone).
pub(crate) fn decode(v: &[u8]) -> serde_json::Result<Header> {
    match v.iter().position(|&b| b == 0) {
        None => serde_json::from_slice(v),
        Some(nul) => {
            let mut h: Header = serde_json::from_slice(&v[..nul])?;
            h.inline = Some(v[nul + 1..].to_vec());
            Ok(h)
        }
    }
}

impl Header {
    /// Bytes charged to the quota for this message.
    pub fn charge(&self) -> u64 {
        self.len + self.meta.as_str().len() as u64 + super::quota::PER_MESSAGE_OVERHEAD
    }
}

/// Per-channel counters, persisted in the same batch as every change they count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub pending: u64,
    pub pending_bytes: u64,
    pub incomplete: u64,
    pub rejected: u64,
    pub delivered: u64,
    /// Quota charge of every message kept in this channel, any state.
    pub kept_bytes: u64,
    /// Undelivered messages dropped by `when_full = drop_oldest` (acknowledged data lost).
    pub dropped_undelivered: u64,
    /// Delivered messages dropped early by `when_full = drop_oldest`.
    pub dropped_delivered: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, h: &Header, sign: i64) {
        let n = |v: &mut u64, d: u64| {
            *v = if sign > 0 {
                v.saturating_add(d)
            } else {
                v.saturating_sub(d)
            };
        };
        match h.state {
            super::State::Pending => {
                n(&mut self.pending, 1);
                n(&mut self.pending_bytes, h.len);
            }
            super::State::Incomplete => n(&mut self.incomplete, 1),
            super::State::Rejected => n(&mut self.rejected, 1),
            super::State::Delivered => n(&mut self.delivered, 1),
        }
        n(&mut self.kept_bytes, h.charge());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_keys_parse_back() {
        let k = super::queue("ch-a", 42);
        assert_eq!(super::parse_queue(&k), Some(("ch-a", 42)));
        assert_eq!(super::parse_queue(&super::msg(42)), None);
        assert_eq!(super::parse_queue(&super::order_queue("ch-a", 42)), None);
        assert_eq!(super::parse_queue(b"Q"), None);
    }

    /// Records written before the flag could be unknown read as known; an unknown flag
    /// reads back as unknown; a protocol the type does not name is an error, never a guess.
    #[test]
    fn headers_old_and_new() {
        let old = r#"{"channel":"c","protocol":"hl7","received_at_ms":1,"clock_synced":true,
            "meta":{},"state":"pending","len":1,"chunks":1,"sha256":"","reason":null,
            "delivered_at":null,"transmission":null}"#;
        let h: super::Header = serde_json::from_str(old).unwrap();
        assert_eq!(h.clock_synced, Some(true));
        assert_eq!(h.protocol, super::super::Protocol::Hl7);
        let unknown = old.replace("true", "null");
        let h: super::Header = serde_json::from_str(&unknown).unwrap();
        assert_eq!(h.clock_synced, None);
        assert!(serde_json::to_string(&h)
            .unwrap()
            .contains(r#""clock_synced":null"#));
        let odd = old.replace(r#""hl7""#, r#""dicom""#);
        assert!(serde_json::from_str::<super::Header>(&odd).is_err());
    }

    /// A header with its bytes beside it reads back whole, NULs in the bytes included; a
    /// header alone (formats 1 and 2, and a message kept in chunks) reads as before.
    #[test]
    fn records_with_and_without_their_bytes() {
        let old = br#"{"channel":"c","protocol":"hl7","received_at_ms":1,"clock_synced":null,"meta":{"a":"\u0000"},"state":"pending","len":3,"chunks":1,"sha256":"","reason":null,"delivered_at":null,"transmission":null}"#;
        let mut h = super::decode(old).unwrap();
        assert_eq!(h.inline, None);
        assert_eq!(h.meta.to_value()["a"], "\0");
        assert_eq!(super::encode(&h).unwrap(), old.to_vec());
        h.chunks = 0;
        h.inline = Some(b"a\0b".to_vec());
        let v = super::encode(&h).unwrap();
        assert_eq!(v.iter().filter(|&&b| b == 0).count(), 2);
        assert_eq!(super::decode(&v).unwrap(), h);
        h.inline = Some(Vec::new());
        assert_eq!(super::decode(&super::encode(&h).unwrap()).unwrap(), h);
        assert!(super::decode(b"{\"channel\"\0x").is_err());
    }

    /// The quota charges a meta's stored text, which is the compact text of its value:
    /// a message is charged the same when stored, read back, and written again.
    #[test]
    fn a_meta_is_its_compact_text() {
        let v = serde_json::json!({"type": "ORU^R01", "n": [1, 2.5, null], "s": "é\"\n", "e": {}});
        let m = super::super::Meta::from(v.clone());
        assert_eq!(m.as_str(), v.to_string());
        assert_eq!(m.to_value(), v);
        let h = super::Header {
            channel: "c".into(),
            protocol: super::super::Protocol::Hl7,
            received_at_ms: 1,
            clock_synced: None,
            meta: m,
            state: super::super::State::Pending,
            len: 3,
            chunks: 0,
            sha256: String::new(),
            reason: None,
            delivered_at: None,
            transmission: None,
            inline: Some(b"abc".to_vec()),
        };
        let back = super::decode(&super::encode(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(
            back.charge(),
            3 + v.to_string().len() as u64 + super::super::quota::PER_MESSAGE_OVERHEAD
        );
    }
}
