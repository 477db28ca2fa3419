//! Raw delimited framing, for instruments that speak neither ASTM E1381 nor MLLP.
//!
//! A message is the bytes between a configured `start` sequence and a configured `end`
//! sequence (both may be several bytes; `start` may be empty, then a message starts right
//! after the previous `end`, or at the first byte). The delimiters themselves are not
//! part of the delivered message. Examples: Snibe MAGLUMI sends `ENQ STX <records> ETX
//! EOT` (start `[0x02]`, end `[0x03]`; ENQ/EOT are ignored); Arkray Spotchem prints
//! between STX and ETX; bioMérieux mini VIDAS sends `STX ... GS cs cs LF`... whose
//! `start=[0x02]`, `end=[0x04]` or `end=[0x1D]` depending on what the site wants kept.
//!
//! The framer is sans-IO like [`crate::hl7::mllp`]: [`RawFramer::push`] consumes input
//! until one event is ready, [`RawFramer::poll_event`] returns it (borrowed) and
//! [`RawFramer::release`] frees the buffer. [`RawSession`] puts it on a link: each message
//! is one commit, and the reply goes out only after the commit succeeded.
//!
//! Decisions:
//! - Bytes outside start..end are ignored and counted ([`RawStats::junk_bytes`]).
//! - The end sequence is checked before the start sequence, so `start == end` works as
//!   a plain separator.
//! - **Start seen again inside a message:** the sender restarted. The partial message is
//!   reported as [`RawEvent::Restarted`] *with its bytes* (the agent may keep them as an
//!   incomplete message: nothing was acknowledged for them) and a new message starts.
//! - **Too large:** past `max_message` bytes the message is discarded (memory stays
//!   bounded by `max_message` + the delimiter lengths) until its end or a new start, then
//!   [`RawEvent::TooLarge`] is reported with the total length.
//! - **Reply:** the optional reply bytes (an instrument-specific "got it") are only held
//!   here; the agent sends them after the message is durable, never before.

use crate::buf::{Buffer, Queue};
use crate::session::{Commit, End, Event, MessageEnd, OrderFailure, OrderRef, Piece, Session};
use crate::time::Instant;

/// Longest start or end sequence.
pub const MAX_DELIMITER: usize = 8;
/// Longest reply.
pub const MAX_REPLY: usize = 16;

/// Why a configuration is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawConfigError {
    /// The end sequence must not be empty.
    EmptyEnd,
    /// `max_message` must be at least 1.
    ZeroMaxMessage,
    /// A start or end sequence over [`MAX_DELIMITER`] bytes, or a reply over [`MAX_REPLY`].
    TooLong,
}

/// Raw channel framing settings (validated by [`RawConfig::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig {
    start: heapless::Vec<u8, MAX_DELIMITER>,
    end: heapless::Vec<u8, MAX_DELIMITER>,
    reply: Option<heapless::Vec<u8, MAX_REPLY>>,
    max_message: usize,
}

impl RawConfig {
    /// Validate framing settings.
    pub fn new(
        start: &[u8],
        end: &[u8],
        reply: Option<&[u8]>,
        max_message: usize,
    ) -> Result<Self, RawConfigError> {
        if end.is_empty() {
            return Err(RawConfigError::EmptyEnd);
        }
        if max_message == 0 {
            return Err(RawConfigError::ZeroMaxMessage);
        }
        let too_long = |_| RawConfigError::TooLong;
        Ok(RawConfig {
            start: heapless::Vec::from_slice(start).map_err(too_long)?,
            end: heapless::Vec::from_slice(end).map_err(too_long)?,
            reply: match reply {
                Some(r) => Some(heapless::Vec::from_slice(r).map_err(too_long)?),
                None => None,
            },
            max_message,
        })
    }
    /// The start sequence (may be empty).
    pub fn start(&self) -> &[u8] {
        &self.start
    }
    /// The end sequence.
    pub fn end(&self) -> &[u8] {
        &self.end
    }
    /// Bytes to send once a message is stored, if any.
    pub fn reply(&self) -> Option<&[u8]> {
        self.reply.as_deref()
    }
    /// Limit on one message.
    pub fn max_message(&self) -> usize {
        self.max_message
    }
}

/// What the raw framer produced, borrowed until [`RawFramer::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEvent<'a> {
    /// A complete message, delimiters stripped.
    Message(&'a [u8]),
    /// Longer than `max_message`; `len` counts the whole message (delimiters excluded).
    TooLarge {
        /// Total length.
        len: usize,
    },
    /// The start sequence came again before the end: the bytes received so far.
    Restarted {
        /// The abandoned fragment.
        fragment: &'a [u8],
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawStats {
    /// Bytes outside start..end (delimiters not counted).
    pub junk_bytes: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Messages over the limit.
    pub too_large: u64,
    /// Messages cut by a new start.
    pub restarted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    In,
    Discarding { len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Message,
    TooLarge { len: usize },
    Restarted,
}

/// Incremental start/end framer; see the module docs.
#[derive(Debug)]
pub struct RawFramer<B> {
    cfg: RawConfig,
    state: State,
    buf: B,
    /// The last few bytes, to match delimiters across reads (bounded by the longer one).
    window: heapless::Vec<u8, MAX_DELIMITER>,
    ready: Option<Ready>,
    stats: RawStats,
}

impl<B: Buffer> RawFramer<B> {
    /// A framer for `cfg`. Messages are limited to `max_message`, and to the buffer's
    /// capacity less the longer delimiter.
    pub fn new(mut cfg: RawConfig) -> Self {
        let keep = cfg.start.len().max(cfg.end.len());
        let buf = B::with_limit(cfg.max_message.saturating_add(keep + 1));
        cfg.max_message = cfg
            .max_message
            .min(buf.limit().saturating_sub(keep + 1))
            .max(1);
        let state = if cfg.start.is_empty() {
            State::In
        } else {
            State::Idle
        };
        RawFramer {
            cfg,
            state,
            buf,
            window: heapless::Vec::new(),
            ready: None,
            stats: RawStats::default(),
        }
    }

    /// The configuration (with the limit in force).
    pub fn config(&self) -> &RawConfig {
        &self.cfg
    }

    /// The reply bytes to send after a message is stored, if configured.
    pub fn reply(&self) -> Option<&[u8]> {
        self.cfg.reply()
    }

    /// Counters so far.
    pub fn stats(&self) -> RawStats {
        self.stats
    }

    /// True inside a message (start seen, end not yet).
    pub fn in_message(&self) -> bool {
        match self.state {
            State::In => !self.cfg.start.is_empty() || !self.buf.is_empty(),
            State::Discarding { .. } => true,
            State::Idle => false,
        }
    }

    /// Drop a partial message (connection closed); returns how many bytes were discarded.
    /// Counters and an unreleased event are kept.
    pub fn reset(&mut self) -> usize {
        let n = match self.state {
            State::In => self.buf.len(),
            State::Discarding { len } => len,
            State::Idle => 0,
        };
        if self.ready.is_none() {
            self.buf.clear();
        }
        self.window.clear();
        self.state = if self.cfg.start.is_empty() {
            State::In
        } else {
            State::Idle
        };
        n
    }

    /// Feed bytes; returns how many were consumed (stops after a byte that produced an
    /// event; 0 while an event is unreleased).
    pub fn push(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() && self.ready.is_none() {
            let b = input[used];
            used += 1;
            self.byte(b);
        }
        used
    }

    /// The event produced, if any (borrowing the framer's buffer).
    pub fn poll_event(&self) -> Option<RawEvent<'_>> {
        Some(match self.ready? {
            Ready::Message => RawEvent::Message(self.buf.as_slice()),
            Ready::TooLarge { len } => RawEvent::TooLarge { len },
            Ready::Restarted => RawEvent::Restarted {
                fragment: self.buf.as_slice(),
            },
        })
    }

    /// Done with the event: the buffer is free for the next message.
    pub fn release(&mut self) {
        if self.ready.take().is_some() {
            self.buf.clear();
        }
    }

    /// Push all of `input`, handing every event to `on_event` and releasing it.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(RawEvent<'_>)) {
        loop {
            if let Some(ev) = self.poll_event() {
                on_event(ev);
                self.release();
            }
            if input.is_empty() {
                break;
            }
            let n = self.push(input);
            input = &input[n..];
        }
    }

    fn byte(&mut self, b: u8) {
        let keep = self.cfg.start.len().max(self.cfg.end.len());
        if self.window.len() == keep {
            self.window.remove(0);
        }
        let _ = self.window.push(b);
        let start_empty = self.cfg.start.is_empty();
        match self.state {
            State::Idle => {
                if self.window.ends_with(&self.cfg.start) {
                    // Bytes of a partial start match were counted as junk; un-count them.
                    let prior = (self.cfg.start.len() - 1) as u64;
                    self.stats.junk_bytes = self.stats.junk_bytes.saturating_sub(prior);
                    self.window.clear();
                    self.buf.clear();
                    self.state = State::In;
                } else {
                    self.stats.junk_bytes += 1;
                }
            }
            State::In => {
                let _ = self.buf.try_push(b);
                if self.window.ends_with(&self.cfg.end) {
                    let n = self.buf.len().saturating_sub(self.cfg.end.len());
                    self.buf.truncate(n);
                    self.window.clear();
                    self.state = if start_empty { State::In } else { State::Idle };
                    if n > self.cfg.max_message {
                        // A complete message that turned out larger than the limit.
                        self.stats.too_large += 1;
                        self.buf.clear();
                        self.ready = Some(Ready::TooLarge { len: n });
                    } else {
                        self.stats.messages += 1;
                        self.ready = Some(Ready::Message);
                    }
                } else if !start_empty && self.window.ends_with(&self.cfg.start) {
                    let n = self.buf.len().saturating_sub(self.cfg.start.len());
                    self.buf.truncate(n);
                    self.window.clear();
                    self.stats.restarted += 1;
                    self.ready = Some(Ready::Restarted);
                } else if self.buf.len() > self.cfg.max_message + keep {
                    // Keep `keep` extra bytes so a delimiter split over the limit still
                    // matches; past that the message is certainly too large.
                    let len = self.buf.len();
                    self.buf.clear();
                    self.state = State::Discarding { len };
                }
            }
            State::Discarding { len } => {
                let len = len.saturating_add(1);
                let end = self.window.ends_with(&self.cfg.end);
                let restart = !start_empty && self.window.ends_with(&self.cfg.start);
                if end || restart {
                    let dl = if end {
                        self.cfg.end.len()
                    } else {
                        self.cfg.start.len()
                    };
                    self.window.clear();
                    self.stats.too_large += 1;
                    self.ready = Some(Ready::TooLarge {
                        len: len.saturating_sub(dl),
                    });
                    self.state = if end && !start_empty {
                        State::Idle
                    } else {
                        State::In
                    };
                } else {
                    self.state = State::Discarding { len };
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Message,
    Fragment,
}

/// A raw channel's link: one commit per message, the reply after it, nothing else.
///
/// - A complete message is one piece ([`End::Complete`]); the reply (if configured) is
///   queued only after `commit_done(true)`. A failed commit gets no reply: the
///   instrument's own timeout is the only negative answer raw framing has.
/// - A message cut short by a new start is one piece ending [`End::Incomplete`]
///   (`Restarted`): kept for inspection, nothing was acknowledged for it.
/// - Over `max_message`: dropped by the framer (bounded memory), [`Event::TooLarge`].
/// - Orders: none ([`OrderFailure::Unsupported`]).
#[derive(Debug)]
pub struct RawSession<B> {
    framer: RawFramer<B>,
    pending: Option<Pending>,
    tx: heapless::Vec<u8, MAX_REPLY>,
    events: Queue<Event, 4>,
}

impl<B: Buffer> RawSession<B> {
    /// A session for `cfg`.
    pub fn new(cfg: RawConfig) -> Self {
        RawSession {
            framer: RawFramer::new(cfg),
            pending: None,
            tx: heapless::Vec::new(),
            events: Queue::new(),
        }
    }

    /// The framer's counters.
    pub fn stats(&self) -> RawStats {
        self.framer.stats()
    }

    fn on_event(&mut self) {
        match self.framer.poll_event() {
            Some(RawEvent::Message(_)) => self.pending = Some(Pending::Message),
            Some(RawEvent::Restarted { .. }) => self.pending = Some(Pending::Fragment),
            Some(RawEvent::TooLarge { len }) => {
                let _ = self.events.push(Event::TooLarge { len });
                self.framer.release();
            }
            None => {}
        }
    }
}

impl<B: Buffer> Session for RawSession<B> {
    fn handle_input(&mut self, input: &[u8], _now: Instant) -> usize {
        let mut used = 0;
        while used < input.len() {
            if self.pending.is_some() || !self.tx.is_empty() || self.events.room() < 2 {
                break;
            }
            used += self.framer.push(&input[used..]);
            self.on_event();
        }
        used
    }

    fn poll_commit(&self) -> Option<Commit<'_>> {
        let (text, end) = match (self.pending?, self.framer.poll_event()?) {
            (Pending::Message, RawEvent::Message(m)) => (m, End::Complete(MessageEnd::Terminator)),
            (Pending::Fragment, RawEvent::Restarted { fragment }) => {
                (fragment, End::Incomplete(MessageEnd::Restarted))
            }
            _ => return None,
        };
        Some(Commit::One(Some(Piece {
            text,
            cr: false,
            begins: true,
            end: Some(end),
        })))
    }

    fn commit_done(&mut self, ok: bool, _now: Instant) {
        let Some(p) = self.pending.take() else { return };
        if p == Pending::Message {
            if ok {
                let _ = self.events.push(Event::Accepted { messages: 1 });
                if let Some(r) = self.framer.reply() {
                    // Same capacity: it fits.
                    let _ = self.tx.extend_from_slice(r);
                }
            } else {
                let _ = self.events.push(Event::Refused);
            }
        }
        self.framer.release();
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_line_lost(&mut self, _now: Instant) {
        let dropped = self.framer.reset();
        if dropped > 0 {
            let _ = self.events.push(Event::Unfinished { discarded: dropped });
        }
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.tx.is_empty() || buf.len() < self.tx.len() {
            return None;
        }
        let n = self.tx.len();
        buf[..n].copy_from_slice(&self.tx);
        self.tx.clear();
        Some(n)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn max_transmit(&self) -> usize {
        MAX_REPLY
    }

    fn set_stopping(&mut self, _stopping: bool) {}

    fn is_quiet(&self) -> bool {
        self.pending.is_none() && self.tx.is_empty() && !self.framer.in_message()
    }

    fn orders_waiting(&mut self, _waiting: bool) {}

    fn order_wanted(&self, _now: Instant) -> bool {
        false
    }

    fn send_order(
        &mut self,
        _order: OrderRef,
        _text: &[u8],
        _now: Instant,
    ) -> Result<(), OrderFailure> {
        Err(OrderFailure::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    type RawFramer = super::RawFramer<heapless::Vec<u8, 256>>;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Message(Vec<u8>),
        TooLarge { len: usize },
        Restarted { fragment: Vec<u8> },
    }

    fn run(cfg: RawConfig, input: &[u8]) -> (Vec<Ev>, RawStats) {
        let mut f = RawFramer::new(cfg);
        let mut v = Vec::new();
        f.feed(input, |e| {
            v.push(match e {
                RawEvent::Message(m) => Ev::Message(m.to_vec()),
                RawEvent::TooLarge { len } => Ev::TooLarge { len },
                RawEvent::Restarted { fragment } => Ev::Restarted {
                    fragment: fragment.to_vec(),
                },
            })
        });
        (v, f.stats())
    }

    #[test]
    fn stx_etx() {
        let cfg = RawConfig::new(&[2], &[3], Some(&[6]), 100).unwrap();
        let (ev, st) = run(cfg, b"\x05\x02H|1\rL|1\r\x03\x04");
        assert_eq!(ev, vec![Ev::Message(b"H|1\rL|1\r".to_vec())]);
        assert_eq!(st.junk_bytes, 2);
    }

    #[test]
    fn multibyte_restart_and_limit() {
        let cfg = RawConfig::new(b"<<", b">>", None, 4).unwrap();
        let (ev, st) = run(cfg, b"x<<ab<<abcd>>z<<abcdefgh>><<a>");
        assert_eq!(
            ev,
            vec![
                Ev::Restarted {
                    fragment: b"ab".to_vec()
                },
                Ev::Message(b"abcd".to_vec()),
                Ev::TooLarge { len: 8 },
            ]
        );
        assert_eq!(st.junk_bytes, 2);
    }

    #[test]
    fn empty_start_is_separator_mode() {
        let cfg = RawConfig::new(b"", b"\r\n", None, 100).unwrap();
        let (ev, _) = run(cfg, b"a\r\nb\r\n");
        assert_eq!(
            ev,
            vec![Ev::Message(b"a".to_vec()), Ev::Message(b"b".to_vec())]
        );
        assert_eq!(
            RawConfig::new(b"x", b"", None, 1),
            Err(RawConfigError::EmptyEnd)
        );
        assert_eq!(
            RawConfig::new(b"x", &[0; 9], None, 1),
            Err(RawConfigError::TooLong)
        );
    }

    #[test]
    fn the_reply_follows_a_successful_commit_only() {
        let cfg = RawConfig::new(&[2], &[3], Some(&[6]), 100).unwrap();
        let mut s = RawSession::<heapless::Vec<u8, 256>>::new(cfg);
        let t = Instant::ZERO;
        let wire = b"\x02A\x03\x02B\x03";
        let n = s.handle_input(wire, t);
        assert_eq!(n, 3);
        let p = s.poll_commit().unwrap().next().unwrap();
        assert_eq!(p.text, b"A");
        let mut buf = [0u8; MAX_REPLY];
        assert!(s.poll_transmit(&mut buf).is_none());
        s.commit_done(false, t);
        assert!(
            s.poll_transmit(&mut buf).is_none(),
            "no reply for a refused message"
        );
        let m = s.handle_input(&wire[n..], t);
        assert_eq!(m, 3);
        s.commit_done(true, t);
        assert_eq!(s.poll_transmit(&mut buf), Some(1));
        assert_eq!(buf[0], 6);
        assert!(s.is_quiet());
    }
}
