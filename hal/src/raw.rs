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
//! until one event is ready, [`RawFramer::poll_event`] returns it.
//!
//! Decisions:
//! - Bytes outside start..end are ignored and counted ([`RawStats::junk_bytes`]).
//! - The end sequence is checked before the start sequence, so `start == end` works as
//!   a plain separator.
//! - **Start seen again inside a message:** the sender restarted. The partial message is
//!   reported as [`RawError::Restarted`] *with its bytes* (the agent may keep them as an
//!   incomplete message: nothing was acknowledged for them) and a new message starts.
//! - **Too large:** past `max_message` bytes the message is discarded (memory stays
//!   bounded by `max_message` + the delimiter lengths) until its end or a new start, then
//!   [`RawError::TooLarge`] is reported with the total length.
//! - **Reply:** the optional reply bytes (an instrument-specific "got it") are only held
//!   here; the agent sends them after the message is durable, never before.

use alloc::vec::Vec;

/// Why a configuration is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawConfigError {
    /// The end sequence must not be empty.
    EmptyEnd,
    /// `max_message` must be at least 1.
    ZeroMaxMessage,
}

/// Raw channel framing settings (validated by [`RawConfig::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig {
    start: Vec<u8>,
    end: Vec<u8>,
    reply: Option<Vec<u8>>,
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
        Ok(RawConfig {
            start: start.to_vec(),
            end: end.to_vec(),
            reply: reply.map(<[u8]>::to_vec),
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

/// A message the framer could not deliver whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// Longer than `max_message`; `len` counts the whole message (delimiters excluded).
    TooLarge {
        /// Total length.
        len: usize,
    },
    /// The start sequence came again before the end: the bytes received so far.
    Restarted {
        /// The abandoned fragment.
        fragment: Vec<u8>,
    },
}

/// What the raw framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// A complete message, delimiters stripped.
    Message(Vec<u8>),
    /// A message that was cut short or too large.
    Error(RawError),
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

/// Incremental start/end framer; see the module docs.
#[derive(Debug)]
pub struct RawFramer {
    cfg: RawConfig,
    state: State,
    buf: Vec<u8>,
    /// The last few bytes, to match delimiters across reads (bounded by the longer one).
    window: Vec<u8>,
    pending: Option<RawEvent>,
    stats: RawStats,
}

impl RawFramer {
    /// A framer for `cfg`.
    pub fn new(cfg: RawConfig) -> Self {
        let state = if cfg.start.is_empty() {
            State::In
        } else {
            State::Idle
        };
        RawFramer {
            cfg,
            state,
            buf: Vec::new(),
            window: Vec::new(),
            pending: None,
            stats: RawStats::default(),
        }
    }

    /// The configuration.
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

    /// Drop a partial message (receive timeout, connection closed); returns how many
    /// bytes were discarded. Counters and a pending event are kept.
    pub fn reset(&mut self) -> usize {
        let n = match self.state {
            State::In => self.buf.len(),
            State::Discarding { len } => len,
            State::Idle => 0,
        };
        self.buf = Vec::new();
        self.window.clear();
        self.state = if self.cfg.start.is_empty() {
            State::In
        } else {
            State::Idle
        };
        n
    }

    /// Feed bytes; returns how many were consumed (stops after a byte that produced an
    /// event; 0 while an event is pending).
    pub fn push(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() && self.pending.is_none() {
            let b = input[used];
            used += 1;
            self.byte(b);
        }
        used
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<RawEvent> {
        self.pending.take()
    }

    /// Push all of `input`, handing every event to `on_event`.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(RawEvent)) {
        loop {
            if let Some(ev) = self.poll_event() {
                on_event(ev);
            }
            if input.is_empty() {
                break;
            }
            let n = self.push(input);
            input = &input[n..];
        }
        if let Some(ev) = self.poll_event() {
            on_event(ev);
        }
    }

    fn byte(&mut self, b: u8) {
        let keep = self.cfg.start.len().max(self.cfg.end.len());
        if self.window.len() == keep {
            self.window.remove(0);
        }
        self.window.push(b);
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
                self.buf.push(b);
                if self.window.ends_with(&self.cfg.end) {
                    let n = self.buf.len().saturating_sub(self.cfg.end.len());
                    self.buf.truncate(n);
                    self.window.clear();
                    self.stats.messages += 1;
                    let msg = core::mem::take(&mut self.buf);
                    self.pending = Some(RawEvent::Message(msg));
                    self.state = if start_empty { State::In } else { State::Idle };
                } else if !start_empty && self.window.ends_with(&self.cfg.start) {
                    let n = self.buf.len().saturating_sub(self.cfg.start.len());
                    self.buf.truncate(n);
                    self.window.clear();
                    self.stats.restarted += 1;
                    let fragment = core::mem::take(&mut self.buf);
                    self.pending = Some(RawEvent::Error(RawError::Restarted { fragment }));
                } else if self.buf.len() > self.cfg.max_message + keep {
                    // Keep `keep` extra bytes so a delimiter split over the limit still
                    // matches; past that the message is certainly too large.
                    let len = self.buf.len();
                    self.buf = Vec::new();
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
                    self.pending = Some(RawEvent::Error(RawError::TooLarge {
                        len: len.saturating_sub(dl),
                    }));
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
        // A complete message that turned out larger than the limit is still too large.
        if let Some(RawEvent::Message(m)) = &self.pending {
            if m.len() > self.cfg.max_message {
                let len = m.len();
                self.stats.messages -= 1;
                self.stats.too_large += 1;
                self.pending = Some(RawEvent::Error(RawError::TooLarge { len }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn run(cfg: RawConfig, input: &[u8]) -> (Vec<RawEvent>, RawStats) {
        let mut f = RawFramer::new(cfg);
        let mut v = Vec::new();
        f.feed(input, |e| v.push(e));
        (v, f.stats())
    }

    #[test]
    fn stx_etx() {
        let cfg = RawConfig::new(&[2], &[3], Some(&[6]), 100).unwrap();
        let (ev, st) = run(cfg, b"\x05\x02H|1\rL|1\r\x03\x04");
        assert_eq!(ev, vec![RawEvent::Message(b"H|1\rL|1\r".to_vec())]);
        assert_eq!(st.junk_bytes, 2);
    }

    #[test]
    fn multibyte_restart_and_limit() {
        let cfg = RawConfig::new(b"<<", b">>", None, 4).unwrap();
        let (ev, st) = run(cfg, b"x<<ab<<abcd>>z<<abcdefgh>><<a>");
        assert_eq!(
            ev,
            vec![
                RawEvent::Error(RawError::Restarted {
                    fragment: b"ab".to_vec()
                }),
                RawEvent::Message(b"abcd".to_vec()),
                RawEvent::Error(RawError::TooLarge { len: 8 }),
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
            vec![
                RawEvent::Message(b"a".to_vec()),
                RawEvent::Message(b"b".to_vec())
            ]
        );
        assert_eq!(
            RawConfig::new(b"x", b"", None, 1),
            Err(RawConfigError::EmptyEnd)
        );
    }
}
