//! The inbox: appends, partials, state changes, retention, listing and export.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::engine::{Engine, Op, CHUNK};
use super::keys::{self, Counters, Header};
use super::quota;
use super::*;

/// Reads a message header.
pub(super) fn header(eng: &dyn Engine, seq: u64) -> Result<Option<Header>> {
    match eng.get(&keys::msg(seq))? {
        Some(v) => Ok(Some(keys::decode(&v).map_err(corrupt)?)),
        None => Ok(None),
    }
}

/// The bytes of message `seq`: taken from `h` if they are kept beside its header, else
/// read from their chunks.
fn read_bytes(eng: &dyn Engine, seq: u64, h: &mut Header) -> Result<Vec<u8>> {
    let out = match h.inline.take() {
        Some(b) => b,
        None => {
            let p = keys::body_prefix(seq);
            let mut out = Vec::with_capacity(h.len as usize);
            for (_, v) in eng.range(&p, &keys::prefix_end(&p), usize::MAX)? {
                out.extend_from_slice(&v);
            }
            out
        }
    };
    if out.len() as u64 != h.len {
        return Err(StoreError::Corrupt(format!(
            "message {seq}: {} bytes stored, {} expected",
            out.len(),
            h.len
        )));
    }
    Ok(out)
}

/// Writes `h` (with its bytes, if it holds them) as the `M` value of `seq`.
fn put_header(ops: &mut Vec<Op>, seq: u64, h: &Header) -> Result<()> {
    ops.push((keys::msg(seq), Some(keys::encode(h).map_err(corrupt)?)));
    Ok(())
}

/// Writes a new complete message `h` with its `bytes`: beside the header in one `M` value
/// when the whole value stays within [`CHUNK`], else in `B` chunks.
fn put_message(ops: &mut Vec<Op>, seq: u64, h: &mut Header, bytes: Vec<u8>) -> Result<()> {
    h.chunks = 0;
    h.inline = Some(bytes);
    let v = keys::encode(h).map_err(corrupt)?;
    if v.len() <= CHUNK {
        h.inline = None;
        ops.push((keys::msg(seq), Some(v)));
        return Ok(());
    }
    let bytes = h.inline.take().unwrap_or_default();
    h.chunks = put_chunks(ops, seq, 0, &bytes);
    put_header(ops, seq, h)
}

fn put_chunks(ops: &mut Vec<Op>, seq: u64, first: u32, bytes: &[u8]) -> u32 {
    let mut n = 0;
    for c in bytes.chunks(CHUNK) {
        ops.push((keys::body(seq, first + n), Some(c.to_vec())));
        n += 1;
    }
    n
}

use crate::text::hex;

#[test]
fn hex_digests_parse_back() {
    let sha = [0x5au8; 32];
    assert_eq!(sha_bytes(&hex(&sha)), Some(sha));
}

fn sha_bytes(hex_sha: &str) -> Option<[u8; 32]> {
    if hex_sha.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex_sha[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Counters of `ch`, copied into `changed` on first touch.
fn ctr<'a>(w: &Writer, changed: &'a mut BTreeMap<String, Counters>, ch: &str) -> &'a mut Counters {
    changed
        .entry(ch.to_string())
        .or_insert_with(|| w.counters.get(ch).cloned().unwrap_or_default())
}

impl Store {
    fn id(&self, w: &Writer, seq: u64) -> MessageId {
        MessageId {
            store: w.store_id,
            seq,
        }
    }

    fn info(&self, store: u32, seq: u64, h: Header) -> MessageInfo {
        MessageInfo {
            id: MessageId { store, seq },
            channel: h.channel,
            protocol: h.protocol,
            received_at: ms_to_time(h.received_at_ms),
            clock_synced: h.clock_synced,
            state: h.state,
            reason: h.reason,
            meta: h.meta.to_value(),
            len: h.len,
            sha256: h.sha256,
            delivered_at: h.delivered_at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    fn store_id(&self) -> u32 {
        self.lock_writer().store_id
    }

    /// Stores a complete message; returns after it is durable (invariant 1), or at once with
    /// the id of an equal message already kept (invariant 8). `Err(Full)`: answer the
    /// instrument negatively.
    pub fn append(&self, m: NewMessage) -> Result<Appended> {
        let (a, t) = self.append_as(m, None)?;
        self.durable(t.0)?;
        Ok(a)
    }

    /// [`append`](Self::append) without the wait: the message is applied (readable, in
    /// the log) but durable only once [`Store::wait_durable`] of the ticket returned `Ok`.
    /// Several writes then share one wait (a frame that ends one message and starts the
    /// next; eight connections' messages).
    pub fn append_nowait(&self, m: NewMessage) -> Result<(Appended, Ticket)> {
        self.append_as(m, None)
    }

    /// [`append_rejected`](Self::append_rejected) without the wait (see
    /// [`append_nowait`](Self::append_nowait)).
    pub fn append_rejected_nowait(
        &self,
        m: NewMessage,
        reason: &str,
    ) -> Result<(Appended, Ticket)> {
        self.append_as(m, Some(reason))
    }

    /// Stores bytes that are not a usable message (HL7 without an MSH, ...) directly as
    /// `rejected` with `reason`, in one durable write: kept for inspection, never queued for
    /// the uplink (`retry` can queue it later). The same bytes on the same channel again
    /// are a duplicate, like [`append`](Self::append).
    pub fn append_rejected(&self, m: NewMessage, reason: &str) -> Result<Appended> {
        let (a, t) = self.append_as(m, Some(reason))?;
        self.durable(t.0)?;
        Ok(a)
    }

    fn append_as(&self, m: NewMessage, rejected: Option<&str>) -> Result<(Appended, Ticket)> {
        check_channel(&m.channel)?;
        let sha: [u8; 32] = Sha256::digest(&m.bytes).into();
        let mut h = Header {
            channel: m.channel,
            protocol: m.protocol,
            received_at_ms: time_to_ms(m.received_at),
            clock_synced: m.clock_synced,
            meta: m.meta,
            state: if rejected.is_some() {
                State::Rejected
            } else {
                State::Pending
            },
            len: m.bytes.len() as u64,
            chunks: 0,
            sha256: hex(&sha),
            reason: rejected.map(str::to_string),
            delivered_at: None,
            transmission: None,
            inline: None,
        };
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        if let Some(seq) = self.find_dup(&h.channel, &sha)? {
            let id = self.id(&w, seq);
            // Durable once a sync that starts from now has succeeded.
            let gen = self.shared.gc.fresh();
            drop(w);
            return Ok((
                Appended {
                    id,
                    duplicate: true,
                },
                Ticket(gen),
            ));
        }
        let mut changed = BTreeMap::new();
        self.make_room(&mut w, h.charge(), &mut changed)?;
        let seq = w.next_seq;
        let mut ops = Vec::new();
        put_message(&mut ops, seq, &mut h, m.bytes)?;
        if h.state == State::Pending {
            ops.push((keys::queue(&h.channel, seq), Some(Vec::new())));
        }
        ops.push((
            keys::dedup(&h.channel, &sha),
            Some(seq.to_be_bytes().to_vec()),
        ));
        ctr(&w, &mut changed, &h.channel).add(&h, 1);
        let gen = self.apply(&mut w, ops, changed, seq + 1)?;
        let id = self.id(&w, seq);
        drop(w);
        Ok((
            Appended {
                id,
                duplicate: false,
            },
            Ticket(gen),
        ))
    }

    /// Ops adding a pending message of `channel` at sequence `seq` (the caller's batch
    /// allocates it): chunks, header, queue and duplicate entries, counters. No quota
    /// check: used for order reports, small and bounded by the orders kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_message_ops(
        &self,
        w: &Writer,
        channel: &str,
        protocol: Protocol,
        at: SystemTime,
        meta: super::Meta,
        bytes: &[u8],
        seq: u64,
        ops: &mut Vec<Op>,
        changed: &mut BTreeMap<String, Counters>,
    ) -> Result<()> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let mut h = Header {
            channel: channel.to_string(),
            protocol,
            received_at_ms: time_to_ms(at),
            clock_synced: None,
            meta,
            state: State::Pending,
            len: bytes.len() as u64,
            chunks: 0,
            sha256: hex(&sha),
            reason: None,
            delivered_at: None,
            transmission: None,
            inline: None,
        };
        put_message(ops, seq, &mut h, bytes.to_vec())?;
        ops.push((keys::queue(channel, seq), Some(Vec::new())));
        ops.push((keys::dedup(channel, &sha), Some(seq.to_be_bytes().to_vec())));
        ctr(w, changed, channel).add(&h, 1);
        Ok(())
    }

    /// The duplicate index's entry for `key`, looked up only if the filter says the store
    /// may have it (`dedup.rs`). Call under the writer lock.
    fn dedup_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !super::dedup::lock(&self.shared.dedup).may_contain(key) {
            return Ok(None);
        }
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        Ok(eng.get(key)?)
    }

    fn find_dup(&self, ch: &str, sha: &[u8; 32]) -> Result<Option<u64>> {
        match self.dedup_get(&keys::dedup(ch, sha))? {
            Some(v) if v.len() == 8 => {
                let seq = keys::seq_suffix(&v);
                let g = self.engine()?;
                let eng = g.as_ref().ok_or_else(closed)?;
                Ok(header(&**eng, seq)?.map(|_| seq))
            }
            _ => Ok(None),
        }
    }

    /// Appends one fragment to the open partial message of `(channel, transmission)`,
    /// creating it (state `incomplete`) on the first fragment. Durable on return: the ASTM
    /// receiver ACKs the frame after this.
    pub fn append_fragment(&self, f: Fragment) -> Result<MessageId> {
        let (id, t) = self.append_fragment_nowait(f)?;
        self.durable(t.0)?;
        Ok(id)
    }

    /// [`append_fragment`](Self::append_fragment) without the wait (see
    /// [`append_nowait`](Self::append_nowait)).
    pub fn append_fragment_nowait(&self, f: Fragment) -> Result<(MessageId, Ticket)> {
        check_channel(&f.channel)?;
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let pkey = keys::partial(&f.channel, &f.transmission);
        let existing = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            match eng.get(&pkey)? {
                Some(v) => header(&**eng, keys::seq_suffix(&v))?.map(|h| (keys::seq_suffix(&v), h)),
                None => None,
            }
        };
        let mut changed = BTreeMap::new();
        let mut ops = Vec::new();
        let (seq, next) = match existing {
            Some((seq, mut h)) => {
                self.make_room(&mut w, f.bytes.len() as u64, &mut changed)?;
                ctr(&w, &mut changed, &h.channel).add(&h, -1);
                h.chunks += put_chunks(&mut ops, seq, h.chunks, &f.bytes);
                h.len += f.bytes.len() as u64;
                ctr(&w, &mut changed, &h.channel).add(&h, 1);
                put_header(&mut ops, seq, &h)?;
                (seq, w.next_seq)
            }
            None => {
                let mut h = Header {
                    channel: f.channel.clone(),
                    protocol: f.protocol,
                    received_at_ms: time_to_ms(f.received_at),
                    clock_synced: f.clock_synced,
                    meta: super::Meta::null(),
                    state: State::Incomplete,
                    len: f.bytes.len() as u64,
                    chunks: 0,
                    sha256: String::new(),
                    reason: Some("transmission in progress".into()),
                    delivered_at: None,
                    transmission: Some(f.transmission),
                    inline: None,
                };
                self.make_room(&mut w, h.charge(), &mut changed)?;
                let seq = w.next_seq;
                h.chunks = put_chunks(&mut ops, seq, 0, &f.bytes);
                put_header(&mut ops, seq, &h)?;
                ops.push((pkey, Some(seq.to_be_bytes().to_vec())));
                ctr(&w, &mut changed, &h.channel).add(&h, 1);
                (seq, seq + 1)
            }
        };
        let gen = self.apply(&mut w, ops, changed, next)?;
        let id = self.id(&w, seq);
        drop(w);
        Ok((id, Ticket(gen)))
    }

    /// Turns the open partial of `(channel, transmission)` into a pending message with
    /// `meta` (atomically, durable on return). If an equal message is already kept, the
    /// partial is deleted and that message's id returned with `duplicate = true`.
    pub fn complete(
        &self,
        channel: &str,
        transmission: &str,
        meta: super::Meta,
    ) -> Result<Appended> {
        let (a, t) = self.complete_nowait(channel, transmission, &[], &|_| meta.clone())?;
        self.durable(t.0)?;
        Ok(a)
    }

    /// Appends `tail` to the open partial and completes it, in one atomic write, without
    /// the wait (see [`append_nowait`](Self::append_nowait)): an ASTM frame that ends a
    /// message costs one write, not two. `meta` is computed from the whole message's bytes,
    /// which the store reads back anyway (for the duplicate check): the receiver never
    /// holds a copy of the message.
    pub fn complete_nowait(
        &self,
        channel: &str,
        transmission: &str,
        tail: &[u8],
        meta: &dyn Fn(&[u8]) -> super::Meta,
    ) -> Result<(Appended, Ticket)> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let pkey = keys::partial(channel, transmission);
        let no_partial = || StoreError::NoPartial {
            channel: channel.into(),
            transmission: transmission.into(),
        };
        let (seq, mut h, mut bytes) = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            let seq = keys::seq_suffix(&eng.get(&pkey)?.ok_or_else(no_partial)?);
            let mut h = header(&**eng, seq)?.ok_or_else(no_partial)?;
            let bytes = read_bytes(&**eng, seq, &mut h)?;
            (seq, h, bytes)
        };
        let mut changed = BTreeMap::new();
        let mut ops = Vec::new();
        if !tail.is_empty() {
            self.make_room(&mut w, tail.len() as u64, &mut changed)?;
            ctr(&w, &mut changed, channel).add(&h, -1);
            h.chunks += put_chunks(&mut ops, seq, h.chunks, tail);
            h.len += tail.len() as u64;
            ctr(&w, &mut changed, channel).add(&h, 1);
            bytes.extend_from_slice(tail);
        }
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        let result = if let Some(dup) = self.find_dup(channel, &sha)? {
            self.delete_ops(&w, seq, &h, &mut ops, &mut changed)?;
            Appended {
                id: self.id(&w, dup),
                duplicate: true,
            }
        } else {
            ctr(&w, &mut changed, channel).add(&h, -1);
            h.state = State::Pending;
            h.meta = meta(&bytes);
            h.sha256 = hex(&sha);
            h.reason = None;
            h.transmission = None;
            ctr(&w, &mut changed, channel).add(&h, 1);
            put_header(&mut ops, seq, &h)?;
            ops.push((pkey, None));
            ops.push((keys::queue(channel, seq), Some(Vec::new())));
            ops.push((keys::dedup(channel, &sha), Some(seq.to_be_bytes().to_vec())));
            Appended {
                id: self.id(&w, seq),
                duplicate: false,
            }
        };
        let next = w.next_seq;
        let gen = self.apply(&mut w, ops, changed, next)?;
        drop(w);
        Ok((result, Ticket(gen)))
    }

    /// Closes an open partial without completing it: it stays `incomplete` (kept, counted,
    /// not forwarded until `retry`). Returns its id.
    pub fn abandon(&self, channel: &str, transmission: &str) -> Result<Option<MessageId>> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let pkey = keys::partial(channel, transmission);
        let found = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            match eng.get(&pkey)? {
                Some(v) => header(&**eng, keys::seq_suffix(&v))?.map(|h| (keys::seq_suffix(&v), h)),
                None => None,
            }
        };
        let Some((seq, mut h)) = found else {
            return Ok(None);
        };
        h.transmission = None;
        h.reason = Some("transmission did not complete".into());
        let mut ops = vec![(pkey, None)];
        put_header(&mut ops, seq, &h)?;
        let next = w.next_seq;
        self.apply(&mut w, ops, BTreeMap::new(), next)?;
        tracing::warn!(channel, id = %self.id(&w, seq), "incomplete message kept");
        Ok(Some(self.id(&w, seq)))
    }

    /// Bytes of the open partial of `(channel, transmission)`, if it is open.
    pub fn partial_len(&self, channel: &str, transmission: &str) -> Result<Option<u64>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        match eng.get(&keys::partial(channel, transmission))? {
            Some(v) => Ok(header(&**eng, keys::seq_suffix(&v))?.map(|h| h.len)),
            None => Ok(None),
        }
    }

    /// Cuts the open partial of `(channel, transmission)` back to its first `len` bytes (a
    /// driver repairing a commit that failed half-way: what was written after the last
    /// acknowledged frame goes, since the instrument sends that frame again). Durable once
    /// the ticket is.
    pub fn truncate_partial(&self, channel: &str, transmission: &str, len: u64) -> Result<Ticket> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let pkey = keys::partial(channel, transmission);
        let (seq, mut h, mut bytes) = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            let no_partial = || StoreError::NoPartial {
                channel: channel.into(),
                transmission: transmission.into(),
            };
            let seq = keys::seq_suffix(&eng.get(&pkey)?.ok_or_else(no_partial)?);
            let mut h = header(&**eng, seq)?.ok_or_else(no_partial)?;
            let bytes = read_bytes(&**eng, seq, &mut h)?;
            (seq, h, bytes)
        };
        if h.len <= len {
            return Ok(Ticket(self.shared.gc.fresh()));
        }
        let mut changed = BTreeMap::new();
        let mut ops = Vec::new();
        ctr(&w, &mut changed, channel).add(&h, -1);
        for c in 0..h.chunks {
            ops.push((keys::body(seq, c), None));
        }
        bytes.truncate(len as usize);
        h.chunks = put_chunks(&mut ops, seq, 0, &bytes);
        h.len = len;
        ctr(&w, &mut changed, channel).add(&h, 1);
        put_header(&mut ops, seq, &h)?;
        let next = w.next_seq;
        let gen = self.apply(&mut w, ops, changed, next)?;
        Ok(Ticket(gen))
    }

    /// At open: partials of a previous run can never complete.
    pub(super) fn abandon_all_partials(&self) -> Result<()> {
        let open: Vec<(String, String)> = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            eng.range(b"P", b"Q", usize::MAX)?
                .into_iter()
                .filter_map(|(k, _)| {
                    let rest = &k[1..];
                    let nul = rest.iter().position(|&b| b == 0)?;
                    Some((
                        String::from_utf8_lossy(&rest[..nul]).into_owned(),
                        String::from_utf8_lossy(&rest[nul + 1..]).into_owned(),
                    ))
                })
                .collect()
        };
        for (ch, t) in open {
            self.abandon(&ch, &t)?;
        }
        Ok(())
    }

    /// Ops deleting message `seq` with all its index entries; counters adjusted in `changed`.
    fn delete_ops(
        &self,
        w: &Writer,
        seq: u64,
        h: &Header,
        ops: &mut Vec<Op>,
        changed: &mut BTreeMap<String, Counters>,
    ) -> Result<()> {
        ops.push((keys::msg(seq), None));
        for c in 0..h.chunks {
            ops.push((keys::body(seq, c), None));
        }
        if h.state == State::Pending {
            ops.push((keys::queue(&h.channel, seq), None));
        }
        if let Some(at) = h.delivered_at {
            ops.push((keys::delivered(at, seq), None));
        }
        if let Some(t) = &h.transmission {
            ops.push((keys::partial(&h.channel, t), None));
        }
        if let Some(sha) = sha_bytes(&h.sha256) {
            let dk = keys::dedup(&h.channel, &sha);
            if self
                .dedup_get(&dk)?
                .is_some_and(|v| v.len() == 8 && keys::seq_suffix(&v) == seq)
            {
                ops.push((dk, None));
            }
        }
        ctr(w, changed, &h.channel).add(h, -1);
        Ok(())
    }

    /// Quota check for `needed` more bytes; with `drop_oldest`, deletes until it fits.
    fn make_room(
        &self,
        w: &mut Writer,
        needed: u64,
        changed: &mut BTreeMap<String, Counters>,
    ) -> Result<()> {
        let o = &self.shared.opts;
        let free = self
            .shared
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&self.shared.dir, o.min_free, needed)?;
        if let Err(r) = free {
            return Err(StoreError::Full(r));
        }
        loop {
            let used: u64 = w
                .counters
                .iter()
                .map(|(ch, c)| changed.get(ch).unwrap_or(c).kept_bytes)
                .sum::<u64>()
                + changed
                    .iter()
                    .filter(|(ch, _)| !w.counters.contains_key(*ch))
                    .map(|(_, c)| c.kept_bytes)
                    .sum::<u64>();
            let reason = match quota::check_quota(used, needed, o.max_bytes) {
                Ok(()) => return Ok(()),
                Err(r) => r,
            };
            if o.when_full == WhenFull::Refuse || !self.drop_one(w, changed)? {
                return Err(StoreError::Full(reason));
            }
        }
    }

    /// Deletes the oldest delivered message, else the oldest kept one; applies at once.
    fn drop_one(&self, w: &mut Writer, changed: &mut BTreeMap<String, Counters>) -> Result<bool> {
        let victim = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            let from_t = eng
                .range(b"T", b"U", 1)?
                .first()
                .map(|(k, _)| keys::seq_suffix(k));
            let seq = match from_t {
                Some(s) => Some(s),
                // Oldest kept message that is not an open partial (its receiver is
                // still appending to it).
                None => {
                    let mut found = None;
                    for (k, v) in eng.range(b"M", b"N", 64)? {
                        let h = keys::decode(&v).map_err(corrupt)?;
                        if h.transmission.is_none() {
                            found = Some(keys::seq_suffix(&k));
                            break;
                        }
                    }
                    found
                }
            };
            match seq {
                Some(s) => header(&**eng, s)?.map(|h| (s, h)),
                None => None,
            }
        };
        let Some((seq, h)) = victim else {
            return Ok(false);
        };
        let mut ops = Vec::new();
        self.delete_ops(w, seq, &h, &mut ops, changed)?;
        let id = self.id(w, seq);
        if h.state == State::Delivered {
            ctr(w, changed, &h.channel).dropped_delivered += 1;
            tracing::error!(channel = %h.channel, %id, "store full (when_full = drop_oldest): delivered message dropped before keep_delivered");
        } else {
            ctr(w, changed, &h.channel).dropped_undelivered += 1;
            tracing::error!(channel = %h.channel, %id, state = ?h.state, bytes = h.len, "store full (when_full = drop_oldest): UNDELIVERED message dropped, data lost");
        }
        let next = w.next_seq;
        let all = std::mem::take(changed);
        self.apply(w, ops, all, next)?;
        Ok(true)
    }

    /// Changes the state of `id` under the writer lock. No sync (invariant 7).
    fn transition(
        &self,
        id: MessageId,
        op: &'static str,
        f: impl FnOnce(&mut Header) -> Result<bool>,
    ) -> Result<()> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        if id.store != w.store_id {
            return Err(StoreError::NotFound(id));
        }
        let (old, new) = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            let old = header(&**eng, id.seq)?.ok_or(StoreError::NotFound(id))?;
            let mut new = old.clone();
            if !f(&mut new)? {
                return Ok(());
            }
            if new.state == State::Pending && old.state == State::Incomplete {
                if old.transmission.is_some() {
                    return Err(StoreError::InvalidState {
                        id,
                        state: old.state,
                        op,
                    });
                }
                let mut with_bytes = old.clone();
                let bytes = read_bytes(&**eng, id.seq, &mut with_bytes)?;
                let sha: [u8; 32] = Sha256::digest(bytes).into();
                new.sha256 = hex(&sha);
            }
            (old, new)
        };
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        let ch = old.channel.clone();
        ctr(&w, &mut changed, &ch).add(&old, -1);
        ctr(&w, &mut changed, &ch).add(&new, 1);
        if old.state == State::Pending {
            ops.push((keys::queue(&ch, id.seq), None));
        }
        if new.state == State::Pending {
            ops.push((keys::queue(&ch, id.seq), Some(Vec::new())));
        }
        if let Some(at) = old.delivered_at {
            ops.push((keys::delivered(at, id.seq), None));
        }
        if let Some(at) = new.delivered_at {
            ops.push((keys::delivered(at, id.seq), Some(Vec::new())));
        }
        if old.sha256.is_empty() {
            if let Some(sha) = sha_bytes(&new.sha256) {
                let dk = keys::dedup(&ch, &sha);
                if self.dedup_get(&dk)?.is_none() {
                    ops.push((dk, Some(id.seq.to_be_bytes().to_vec())));
                }
            }
        }
        put_header(&mut ops, id.seq, &new)?;
        let next = w.next_seq;
        self.apply(&mut w, ops, changed, next)?;
        Ok(())
    }

    /// Marks a pending message delivered (server 2xx / PUBACK). Idempotent. Not synced.
    pub fn confirm(&self, id: MessageId) -> Result<()> {
        let now = unix_secs(SystemTime::now());
        self.transition(id, "confirm", |h| match h.state {
            State::Delivered => Ok(false),
            State::Pending => {
                h.state = State::Delivered;
                h.delivered_at = Some(now);
                Ok(true)
            }
            s => Err(StoreError::InvalidState {
                id,
                state: s,
                op: "confirm",
            }),
        })
    }

    /// [`confirm`](Self::confirm) for a batch, in one engine batch (one writer lock,
    /// counters written once): what a JSON batch or a run of PUBACKs needs. Ids that cannot
    /// be confirmed (another store's, unknown, rejected…) are skipped; the first such error
    /// is returned after the others were applied. Repeated ids count once. Not synced.
    pub fn confirm_many(&self, ids: &[MessageId]) -> Result<()> {
        let now = unix_secs(SystemTime::now());
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        let mut first_err = None;
        let mut seen = std::collections::BTreeSet::new();
        {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            for &id in ids {
                if !seen.insert(id) {
                    continue;
                }
                if id.store != w.store_id {
                    first_err.get_or_insert(StoreError::NotFound(id));
                    continue;
                }
                let Some(mut h) = header(&**eng, id.seq)? else {
                    first_err.get_or_insert(StoreError::NotFound(id));
                    continue;
                };
                match h.state {
                    State::Pending => {}
                    State::Delivered => continue,
                    state => {
                        first_err.get_or_insert(StoreError::InvalidState {
                            id,
                            state,
                            op: "confirm",
                        });
                        continue;
                    }
                }
                // Changed in place: a header may hold the message's bytes, not worth a copy.
                ctr(&w, &mut changed, &h.channel).add(&h, -1);
                ops.push((keys::queue(&h.channel, id.seq), None));
                if let Some(at) = h.delivered_at {
                    ops.push((keys::delivered(at, id.seq), None));
                }
                h.state = State::Delivered;
                h.delivered_at = Some(now);
                ctr(&w, &mut changed, &h.channel).add(&h, 1);
                ops.push((keys::delivered(now, id.seq), Some(Vec::new())));
                put_header(&mut ops, id.seq, &h)?;
            }
        }
        if !ops.is_empty() {
            let next = w.next_seq;
            self.apply(&mut w, ops, changed, next)?;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Marks a pending message delivered without sending it, by policy (FHIR: a query, QC,
    /// no results), with the reason in its meta under `delivered_by_policy`. Like
    /// [`confirm`](Self::confirm): idempotent, not synced; kept for `keep_delivered`,
    /// and `retry` can queue it again.
    pub fn confirm_by_policy(&self, id: MessageId, reason: &str) -> Result<()> {
        let now = unix_secs(SystemTime::now());
        self.transition(id, "confirm", |h| match h.state {
            State::Delivered => Ok(false),
            State::Pending => {
                h.state = State::Delivered;
                h.delivered_at = Some(now);
                let mut meta = h.meta.to_value();
                match &mut meta {
                    serde_json::Value::Object(m) => {
                        m.insert("delivered_by_policy".into(), reason.into());
                    }
                    other => {
                        *other = serde_json::json!({ "delivered_by_policy": reason });
                    }
                }
                h.meta = meta.into();
                Ok(true)
            }
            s => Err(StoreError::InvalidState {
                id,
                state: s,
                op: "confirm",
            }),
        })
    }

    /// Parks a pending message as rejected with a reason (kept, retryable).
    pub fn reject(&self, id: MessageId, reason: &str) -> Result<()> {
        self.transition(id, "reject", |h| match h.state {
            State::Pending | State::Rejected => {
                h.state = State::Rejected;
                h.reason = Some(reason.to_string());
                Ok(true)
            }
            s => Err(StoreError::InvalidState {
                id,
                state: s,
                op: "reject",
            }),
        })
    }

    /// Puts a rejected, incomplete or delivered message back in its channel's queue, at its
    /// original place in sequence order.
    pub fn retry(&self, id: MessageId) -> Result<()> {
        self.transition(id, "retry", |h| {
            if h.state == State::Pending {
                return Ok(false);
            }
            h.state = State::Pending;
            h.reason = None;
            h.delivered_at = None;
            Ok(true)
        })
    }

    /// `retry` for every message in `state`; returns how many.
    pub fn retry_all(&self, state: State) -> Result<usize> {
        let ids: Vec<MessageId> = self
            .list(None, Some(state), usize::MAX)?
            .into_iter()
            .map(|i| i.id)
            .collect();
        for id in &ids {
            self.retry(*id)?;
        }
        Ok(ids.len())
    }

    /// One message with its bytes.
    pub fn get(&self, id: MessageId) -> Result<Option<Message>> {
        if id.store != self.store_id() {
            return Ok(None);
        }
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let Some(mut h) = header(&**eng, id.seq)? else {
            return Ok(None);
        };
        let bytes = read_bytes(&**eng, id.seq, &mut h)?;
        Ok(Some(Message {
            info: self.info(id.store, id.seq, h),
            bytes,
        }))
    }

    /// Up to `limit` pending messages of `channel`, oldest first (FIFO).
    pub fn next_pending(&self, channel: &str, limit: usize) -> Result<Vec<Message>> {
        let store = self.store_id();
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let p = keys::queue_prefix(channel);
        let (floor, version) = self.floor(channel);
        let mut out = Vec::new();
        let entries = eng.range(&keys::queue(channel, floor), &keys::prefix_end(&p), limit)?;
        if let Some((k, _)) = entries.first() {
            self.raise_floor(channel, version, keys::seq_suffix(k));
        }
        for (k, _) in entries {
            let seq = keys::seq_suffix(&k);
            let mut h = header(&**eng, seq)?
                .ok_or_else(|| StoreError::Corrupt(format!("queue entry {seq} without message")))?;
            let bytes = read_bytes(&**eng, seq, &mut h)?;
            out.push(Message {
                info: self.info(store, seq, h),
                bytes,
            });
        }
        Ok(out)
    }

    /// The oldest pending message of `channel`.
    pub fn peek(&self, channel: &str) -> Result<Option<Message>> {
        Ok(self.next_pending(channel, 1)?.pop())
    }

    /// Messages (without bytes) in sequence order, filtered. Scans: for the CLI, not hot paths.
    pub fn list(
        &self,
        channel: Option<&str>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<MessageInfo>> {
        let store = self.store_id();
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let mut out = Vec::new();
        let mut from = b"M".to_vec();
        'scan: loop {
            let page = eng.range(&from, b"N", 1024)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in page {
                let h = keys::decode(&v).map_err(corrupt)?;
                if channel.is_some_and(|c| c != h.channel) || state.is_some_and(|s| s != h.state) {
                    continue;
                }
                out.push(self.info(store, keys::seq_suffix(&k), h));
                if out.len() >= limit {
                    break 'scan;
                }
            }
        }
        Ok(out)
    }

    /// Deletes delivered messages older than `keep_delivered` at `now`; returns how many.
    /// Call periodically (e.g. hourly). Not synced (deletion of delivered data).
    pub fn prune(&self, now: SystemTime) -> Result<usize> {
        let keep = self.shared.opts.keep_delivered.as_secs();
        let cutoff = unix_secs(now).saturating_sub(keep);
        self.delete_delivered_before(cutoff)
    }

    /// Deletes every delivered message now; returns how many.
    pub fn purge_delivered(&self) -> Result<usize> {
        self.delete_delivered_before(u64::MAX)
    }

    fn delete_delivered_before(&self, cutoff_secs: u64) -> Result<usize> {
        let end = keys::delivered(cutoff_secs, 0);
        let mut n = 0;
        loop {
            let mut w = self.lock_writer();
            self.ensure_healthy(&mut w)?;
            let batch: Vec<(u64, Header)> = {
                let g = self.engine()?;
                let eng = g.as_ref().ok_or_else(closed)?;
                let mut v = Vec::new();
                for (k, _) in eng.range(b"T", &end, 256)? {
                    let seq = keys::seq_suffix(&k);
                    if let Some(h) = header(&**eng, seq)? {
                        v.push((seq, h));
                    }
                }
                v
            };
            if batch.is_empty() {
                return Ok(n);
            }
            let mut ops = Vec::new();
            let mut changed = BTreeMap::new();
            for (seq, h) in &batch {
                self.delete_ops(&w, *seq, h, &mut ops, &mut changed)?;
            }
            n += batch.len();
            let next = w.next_seq;
            self.apply(&mut w, ops, changed, next)?;
        }
    }

    /// Writes messages received at or after `since` as JSON lines (envelope plus state);
    /// returns how many.
    pub fn export(&self, since: SystemTime, out: &mut dyn Write) -> Result<u64> {
        let since_ms = time_to_ms(since);
        let mut n = 0;
        for info in self.list(None, None, usize::MAX)? {
            if time_to_ms(info.received_at) < since_ms {
                continue;
            }
            let Some(m) = self.get(info.id)? else {
                continue;
            };
            let line = serde_json::json!({
                "id": info.id.to_string(),
                "channel": info.channel,
                "protocol": info.protocol,
                "received_at": rfc3339_ms(time_to_ms(info.received_at)),
                "clock_synced": info.clock_synced,
                "state": info.state,
                "reason": info.reason,
                "sha256": info.sha256,
                "meta": info.meta,
                "text": String::from_utf8_lossy(&m.bytes),
            });
            serde_json::to_writer(&mut *out, &line).map_err(corrupt)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod confirm_by_policy_tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn delivered_with_the_reason_in_meta_and_retryable() {
        let d = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            min_free: 0,
            ..StoreOptions::default()
        };
        let s = Store::open(d.path(), opts).unwrap();
        let a = s
            .append(NewMessage {
                channel: "lab".into(),
                protocol: Protocol::Astm,
                received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_874_700),
                clock_synced: Some(true),
                bytes: b"H|\\^&\rQ|1\rL|1\r".to_vec(),
                meta: serde_json::json!({"encoding": "utf-8"}).into(),
            })
            .unwrap();
        s.confirm_by_policy(a.id, "host query").unwrap();
        let info = s.get(a.id).unwrap().unwrap().info;
        assert_eq!(info.state, State::Delivered);
        assert!(info.delivered_at.is_some());
        assert_eq!(info.meta["delivered_by_policy"], "host query");
        assert_eq!(info.meta["encoding"], "utf-8");
        assert!(s.next_pending("lab", 10).unwrap().is_empty());
        assert_eq!(s.stats().unwrap().totals.delivered, 1);
        // Idempotent; a rejected message cannot be confirmed this way.
        s.confirm_by_policy(a.id, "host query").unwrap();
        s.retry(a.id).unwrap();
        s.reject(a.id, "x").unwrap();
        assert!(s.confirm_by_policy(a.id, "y").is_err());
    }
}

#[cfg(test)]
mod append_rejected_tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn msg(bytes: &[u8]) -> NewMessage {
        NewMessage {
            channel: "lab".into(),
            protocol: Protocol::Hl7,
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_874_700),
            clock_synced: Some(true),
            bytes: bytes.to_vec(),
            meta: serde_json::json!({}).into(),
        }
    }

    #[test]
    fn kept_rejected_never_queued_deduplicated_and_retryable() {
        let d = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            min_free: 0,
            ..StoreOptions::default()
        };
        let s = Store::open(d.path(), opts.clone()).unwrap();
        let a = s.append_rejected(msg(b"garbage"), "no MSH").unwrap();
        assert!(!a.duplicate);
        let info = s.get(a.id).unwrap().unwrap().info;
        assert_eq!(info.state, State::Rejected);
        assert_eq!(info.reason.as_deref(), Some("no MSH"));
        assert!(s.next_pending("lab", 10).unwrap().is_empty());
        let st = s.stats().unwrap();
        assert_eq!((st.totals.rejected, st.totals.pending), (1, 0));
        // The same bytes again: the same message, stored once.
        let b = s.append_rejected(msg(b"garbage"), "no MSH").unwrap();
        assert_eq!((b.id, b.duplicate), (a.id, true));
        assert_eq!(s.stats().unwrap().totals.rejected, 1);
        // Durable: still there after a reopen; an operator can queue it.
        drop(s);
        let s = Store::open(d.path(), opts).unwrap();
        assert_eq!(s.get(a.id).unwrap().unwrap().info.state, State::Rejected);
        s.retry(a.id).unwrap();
        assert_eq!(s.next_pending("lab", 10).unwrap()[0].bytes, b"garbage");
    }
}
