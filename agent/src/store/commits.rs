//! A link session's commits, made durable in the store (what a channel driver calls with
//! each `labagent_hal::session::Commit`).
//!
//! Each [`Piece`] of a commit becomes one store write, applied at once without waiting
//! (`*_nowait`); the commit then waits once, for the last write's ticket: one `fdatasync`
//! (shared with every other connection that wrote meanwhile) covers the whole commit.
//!
//! | piece | store |
//! |---|---|
//! | begins, ends complete | `append` (a whole HL7/raw message, an ASTM message in one frame) |
//! | begins, ends rejected | `append_rejected` (not HL7: kept, never uploaded) |
//! | begins, open | `append_fragment` under a new transmission id |
//! | continues | `append_fragment` to the open partial |
//! | ends complete | `complete` with the piece's text as the tail, in one write |
//! | ends incomplete | the text appended, then `abandon`: kept, not forwarded |
//!
//! # A commit that fails half-way
//!
//! The session answers it negatively (NAK, AR/CE) and, for ASTM, the instrument sends the
//! same frame again, which yields the same pieces. Before the next commit the partial is
//! put back as it was after the last acknowledged frame: cut back to that length if a
//! piece reached it, left alone if the failed commit completed it (the store then holds
//! the whole message; the piece that completed it is skipped), and partials the failed
//! commit opened are abandoned (kept as incomplete). Whole messages it stored come back as
//! duplicates of themselves.

use std::time::{SystemTime, UNIX_EPOCH};

use labagent_hal::session::{Commit, End, MessageEnd, Piece};

use super::{Appended, Fragment, NewMessage, Protocol, Store, StoreError, Ticket};

/// Whose messages a commit writes: the channel, its protocol, and the clock's state now.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub channel: &'a str,
    pub protocol: Protocol,
    pub clock_synced: Option<bool>,
}

impl Origin<'_> {
    fn message(&self, bytes: Vec<u8>) -> NewMessage {
        NewMessage {
            channel: self.channel.to_string(),
            protocol: self.protocol,
            received_at: SystemTime::now(),
            clock_synced: self.clock_synced,
            bytes,
            meta: super::Meta::null(),
        }
    }

    fn fragment(&self, transmission: &str, bytes: Vec<u8>) -> Fragment {
        Fragment {
            channel: self.channel.to_string(),
            transmission: transmission.to_string(),
            protocol: self.protocol,
            received_at: SystemTime::now(),
            clock_synced: self.clock_synced,
            bytes,
        }
    }
}

/// What a commit did, for counters and logs.
#[derive(Debug, Default)]
pub struct Applied {
    /// Messages stored (or found stored): id and length.
    pub stored: Vec<(Appended, usize)>,
    /// Bytes kept as rejected (not a message of the protocol).
    pub rejected: Vec<(Appended, usize, &'static str)>,
    /// Messages kept as incomplete, and why.
    pub incomplete: Vec<(usize, MessageEnd)>,
}

/// The durable state of one connection: its open partial, if any.
pub struct Durable {
    /// Unique per connection and start (time-based): transmission ids never collide.
    prefix: String,
    counter: u64,
    /// The open partial: transmission id and its bytes so far.
    open: Option<(String, u64)>,
    /// `open` before the commit now being applied or waited for.
    baseline: Option<(String, u64)>,
    /// Transmissions the commit being waited for opened.
    unconfirmed: Vec<String>,
    /// Set by a failed commit: the repair to make before the next one.
    failed: Option<Failed>,
}

struct Failed {
    /// Transmissions the failed commit opened.
    opened: Vec<String>,
}

/// How the agent builds a message's meta from its bytes and how it ended (protocol
/// specific; `End::Rejected` for bytes that are not a message).
pub type MetaFn<'a> = &'a (dyn Fn(&[u8], &End) -> super::Meta + Sync);

impl Default for Durable {
    fn default() -> Self {
        Self::new()
    }
}

impl Durable {
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Durable {
            prefix: format!("{nanos:x}"),
            counter: 0,
            open: None,
            baseline: None,
            unconfirmed: Vec::new(),
            failed: None,
        }
    }

    fn new_transmission(&mut self) -> String {
        self.counter += 1;
        format!("{}-{}", self.prefix, self.counter)
    }

    /// Applies every piece (durable once the returned ticket is); on `Err` the commit
    /// must be answered negatively.
    pub fn apply(
        &mut self,
        store: &Store,
        origin: &Origin<'_>,
        commit: Commit<'_>,
        meta: MetaFn<'_>,
    ) -> Result<(Applied, Option<Ticket>), StoreError> {
        let mut skip_first_end = false;
        if let Some(f) = self.failed.take() {
            match self.repair(store, origin.channel, &f) {
                Ok(completed) => skip_first_end = completed,
                Err(e) => {
                    self.failed = Some(f);
                    return Err(e);
                }
            }
        }
        self.baseline = self.open.clone();
        let mut out = Applied::default();
        let mut ticket: Option<Ticket> = None;
        let mut opened = Vec::new();
        let mut r = Ok(());
        for p in commit {
            if skip_first_end && p.end.is_some() && !p.begins {
                // The failed attempt completed this message already.
                skip_first_end = false;
                self.open = None;
                continue;
            }
            match self.piece(store, origin, &p, meta, &mut out, &mut opened) {
                Ok(Some(t)) => ticket = Some(ticket.map_or(t, |x| x.max(t))),
                Ok(None) => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        match r {
            Ok(()) => {
                self.unconfirmed = opened;
                Ok((out, ticket))
            }
            Err(e) => {
                self.failed = Some(Failed { opened });
                self.open = self.baseline.take();
                Err(e)
            }
        }
    }

    /// The commit's writes did not become durable: repair before the next one.
    pub fn not_durable(&mut self) {
        let opened = std::mem::take(&mut self.unconfirmed);
        self.failed = Some(Failed { opened });
        self.open = self.baseline.take();
    }

    /// The commit is durable: what it wrote is the new baseline.
    pub fn durable(&mut self) {
        self.unconfirmed.clear();
        self.baseline = None;
    }

    /// Puts the store back as it was after the last successful commit. Returns true if
    /// the open partial was completed by the failed commit.
    fn repair(&mut self, store: &Store, channel: &str, f: &Failed) -> Result<bool, StoreError> {
        for t in &f.opened {
            if self.open.as_ref().map_or(true, |(o, _)| o != t) {
                store.abandon(channel, t)?;
            }
        }
        let Some((t, len)) = self.open.clone() else {
            return Ok(false);
        };
        match store.partial_len(channel, &t)? {
            Some(now) if now > len => {
                let tk = store.truncate_partial(channel, &t, len)?;
                store.wait_durable_blocking(tk)?;
                Ok(false)
            }
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    fn piece(
        &mut self,
        store: &Store,
        origin: &Origin<'_>,
        p: &Piece<'_>,
        meta: MetaFn<'_>,
        out: &mut Applied,
        opened: &mut Vec<String>,
    ) -> Result<Option<Ticket>, StoreError> {
        let channel = origin.channel;
        let text = || {
            let mut v = Vec::with_capacity(p.len());
            v.extend_from_slice(p.text);
            if p.cr {
                v.push(b'\r');
            }
            v
        };
        if p.begins {
            if let Some((old, _)) = self.open.take() {
                // Cannot happen with a consistent session: keep what was stored.
                store.abandon(channel, &old)?;
            }
        }
        match (&p.end, self.open.clone()) {
            (Some(End::Complete(end)), None) => {
                let bytes = text();
                let len = bytes.len();
                let m = origin.message(bytes);
                let m = NewMessage {
                    meta: meta(&m.bytes, &End::Complete(*end)),
                    ..m
                };
                let (a, t) = store.append_nowait(m)?;
                out.stored.push((a, len));
                Ok(Some(t))
            }
            (Some(End::Rejected(why)), None) => {
                let bytes = text();
                let len = bytes.len();
                let m = origin.message(bytes);
                let m = NewMessage {
                    meta: meta(&m.bytes, &End::Rejected(why)),
                    ..m
                };
                let (a, t) = store.append_rejected_nowait(m, why)?;
                out.rejected.push((a, len, why));
                Ok(Some(t))
            }
            (Some(End::Complete(end)), Some((tr, len))) => {
                let tail = text();
                let total = len as usize + tail.len();
                let end = End::Complete(*end);
                let (a, t) = store.complete_nowait(channel, &tr, &tail, &|b| meta(b, &end))?;
                self.open = None;
                out.stored.push((a, total));
                Ok(Some(t))
            }
            (Some(End::Incomplete(why)), open) => {
                let tr = match open {
                    Some((tr, _)) => tr,
                    None => {
                        let tr = self.new_transmission();
                        opened.push(tr.clone());
                        tr
                    }
                };
                let mut last = None;
                let mut len = self.open.as_ref().map_or(0, |(_, l)| *l);
                if !p.is_empty() {
                    let (_, t) = store.append_fragment_nowait(origin.fragment(&tr, text()))?;
                    len += p.len() as u64;
                    last = Some(t);
                }
                store.abandon(channel, &tr)?;
                self.open = None;
                out.incomplete.push((len as usize, *why));
                Ok(last)
            }
            (Some(End::Rejected(_)), Some(_)) | (None, _) => {
                let (tr, len) = match self.open.clone() {
                    Some(o) => o,
                    None => {
                        let tr = self.new_transmission();
                        opened.push(tr.clone());
                        (tr, 0)
                    }
                };
                if p.is_empty() {
                    self.open = Some((tr, len));
                    return Ok(None);
                }
                let (_, t) = store.append_fragment_nowait(origin.fragment(&tr, text()))?;
                self.open = Some((tr, len + p.len() as u64));
                Ok(Some(t))
            }
        }
    }
}
