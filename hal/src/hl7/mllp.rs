//! MLLP framing: `VT (0x0B) message FS (0x1C) CR (0x0D)`.
//!
//! The framer is sans-IO and bounded: feed it whatever a read returned with
//! [`MllpFramer::push`], then take [`MllpFramer::poll_event`] (borrowed from the framer's
//! buffer) and [`MllpFramer::release`] it. At most one event is pending at a time; while
//! one is, `push` consumes nothing (returns 0), so memory never exceeds one buffer of
//! `max_message` bytes.
//!
//! Decisions (lenient where real senders are sloppy, strict where memory is at stake):
//! - **Bytes between blocks** (before a VT) are ignored and counted in
//!   [`MllpStats::junk_bytes`]; a CR right after FS is the normal trailer, not junk.
//! - **FS ends the block on its own.** A message is complete as soon as FS arrives, so the
//!   agent can store and ACK without waiting for a CR that a sloppy sender may never send
//!   (the sender is waiting for *our* ACK). A CR directly after FS is swallowed; if
//!   something else follows, [`MllpStats::fs_without_cr`] is incremented and that byte is
//!   processed normally (a VT starts the next block). FS cannot appear inside HL7 content.
//! - **VT inside a block** means the sender restarted (e.g. after a timeout): the partial
//!   block is dropped, [`MllpEvent::Interrupted`] is reported and a new block starts.
//! - **Too large:** once a block exceeds `max_message`, its bytes are discarded (only the
//!   first [`TOO_LARGE_HEAD`] bytes are kept, so the agent can read MSH-10 and answer with
//!   an AE/CE carrying it) until the block ends (FS) or a new VT starts one; then
//!   [`MllpEvent::TooLarge`] is reported with the block's total length.

use crate::buf::{Buffer, Sink};

/// Start of block.
pub const VT: u8 = 0x0B;
/// End of block.
pub const FS: u8 = 0x1C;
/// Carriage return: block trailer and HL7 segment terminator.
pub const CR: u8 = 0x0D;

/// How many leading bytes of an oversized block are kept for the error report.
pub const TOO_LARGE_HEAD: usize = 1024;

/// Default limit for one message (64 KiB, like the ASTM frame limit).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// What the framer produced, borrowed from its buffer until [`MllpFramer::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MllpEvent<'a> {
    /// One complete message, without VT/FS/CR.
    Message(&'a [u8]),
    /// The block was longer than `max_message`: its whole length (VT and FS excluded) and
    /// its first bytes (at most [`TOO_LARGE_HEAD`]), for the ACK.
    TooLarge {
        /// Total length of the oversized block.
        len: usize,
        /// The block's first bytes.
        head: &'a [u8],
    },
    /// A VT arrived inside a block; the `discarded` bytes before it were dropped.
    Interrupted {
        /// Number of bytes of the abandoned block.
        discarded: usize,
    },
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MllpStats {
    /// Bytes outside any block (not counting the CR after FS).
    pub junk_bytes: u64,
    /// Blocks whose FS was followed by something other than CR.
    pub fs_without_cr: u64,
    /// Complete messages delivered.
    pub messages: u64,
    /// Blocks over the limit.
    pub too_large: u64,
    /// Blocks interrupted by a VT.
    pub interrupted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for VT.
    Idle,
    /// Just saw FS; a CR is expected (and swallowed).
    AfterFs,
    /// Inside a block, collecting.
    InBlock,
    /// Inside an oversized block, discarding; `len` bytes so far.
    Discarding { len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Message,
    TooLarge { len: usize },
    Interrupted { discarded: usize },
}

/// Incremental MLLP deframer. See the module docs for the exact rules.
#[derive(Debug)]
pub struct MllpFramer<B> {
    max_message: usize,
    state: State,
    buf: B,
    ready: Option<Ready>,
    stats: MllpStats,
}

impl<B: Buffer> MllpFramer<B> {
    /// A framer that refuses messages longer than `max_message` bytes (at least 1, at most
    /// the buffer's capacity).
    pub fn new(max_message: usize) -> Self {
        let buf = B::with_limit(max_message.max(1));
        MllpFramer {
            max_message: max_message.max(1).min(buf.limit()),
            state: State::Idle,
            buf,
            ready: None,
            stats: MllpStats::default(),
        }
    }

    /// The limit in force.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Counters so far.
    pub fn stats(&self) -> MllpStats {
        self.stats
    }

    /// True while a block is open (bytes received after VT, no FS yet).
    pub fn in_block(&self) -> bool {
        matches!(self.state, State::InBlock | State::Discarding { .. })
    }

    /// Drop a partial block (e.g. when the connection closes); returns how many bytes were
    /// discarded. Counters and an unreleased event are kept.
    pub fn reset(&mut self) -> usize {
        let n = match self.state {
            State::InBlock => self.buf.len(),
            State::Discarding { len } => len,
            State::Idle | State::AfterFs => 0,
        };
        if self.ready.is_none() {
            self.buf.clear();
        }
        self.state = State::Idle;
        n
    }

    /// Feed bytes; returns how many were consumed. Consumption stops right after a byte
    /// that produced an event; take it with [`poll_event`](Self::poll_event), then
    /// [`release`](Self::release) it and push the rest. Returns 0 while an event is
    /// unreleased.
    pub fn push(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() && self.ready.is_none() {
            if self.state == State::InBlock {
                // The block's plain bytes up to the next FS or VT, within `max_message`,
                // in one copy (byte by byte it was 4 % of the agent's ingest thread).
                let rest = &input[used..];
                let room = self
                    .max_message
                    .saturating_sub(self.buf.len())
                    .min(rest.len());
                let run = rest[..room]
                    .iter()
                    .position(|&b| b == FS || b == VT)
                    .unwrap_or(room);
                if run > 0 {
                    // Cannot fail: max_message <= the buffer's limit.
                    let _ = self.buf.try_extend(&rest[..run]);
                    used += run;
                    continue;
                }
            }
            let b = input[used];
            used += 1;
            self.byte(b);
        }
        used
    }

    /// Takes the CR that ends the block just delivered, if `input` starts with it (nothing
    /// else): lets a caller that holds further input still finish the block's trailer.
    pub fn take_trailer(&mut self, input: &[u8]) -> usize {
        if self.ready.is_none() && self.state == State::AfterFs && input.first() == Some(&CR) {
            self.state = State::Idle;
            1
        } else {
            0
        }
    }

    /// The event produced, if any (borrowing the framer's buffer).
    pub fn poll_event(&self) -> Option<MllpEvent<'_>> {
        Some(match self.ready? {
            Ready::Message => MllpEvent::Message(self.buf.as_slice()),
            Ready::TooLarge { len } => MllpEvent::TooLarge {
                len,
                head: self.buf.as_slice(),
            },
            Ready::Interrupted { discarded } => MllpEvent::Interrupted { discarded },
        })
    }

    /// Done with the event: the buffer is free for the next block.
    pub fn release(&mut self) {
        match self.ready.take() {
            Some(Ready::Message) | Some(Ready::TooLarge { .. }) => self.buf.clear(),
            // The buffer already holds the new block's first bytes (none yet).
            Some(Ready::Interrupted { .. }) | None => {}
        }
    }

    /// Push all of `input`, handing every event to `on_event` and releasing it.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(MllpEvent<'_>)) {
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
        match self.state {
            State::Idle | State::AfterFs => {
                let after_fs = self.state == State::AfterFs;
                self.state = State::Idle;
                if after_fs {
                    if b == CR {
                        return;
                    }
                    self.stats.fs_without_cr += 1;
                }
                if b == VT {
                    self.buf.clear();
                    self.state = State::InBlock;
                } else {
                    self.stats.junk_bytes += 1;
                }
            }
            State::InBlock => match b {
                FS => {
                    self.state = State::AfterFs;
                    self.stats.messages += 1;
                    self.ready = Some(Ready::Message);
                }
                VT => {
                    self.stats.interrupted += 1;
                    let discarded = self.buf.len();
                    self.buf.clear();
                    self.ready = Some(Ready::Interrupted { discarded });
                }
                _ if self.buf.len() >= self.max_message => {
                    let len = self.buf.len() + 1;
                    self.buf.truncate(TOO_LARGE_HEAD);
                    self.state = State::Discarding { len };
                }
                // Cannot fail: the length was checked against max_message <= limit.
                _ => {
                    let _ = self.buf.try_push(b);
                }
            },
            State::Discarding { len } => match b {
                FS | VT => {
                    self.stats.too_large += 1;
                    self.ready = Some(Ready::TooLarge { len });
                    self.state = if b == FS {
                        State::AfterFs
                    } else {
                        State::InBlock
                    };
                }
                _ => {
                    self.state = State::Discarding {
                        len: len.saturating_add(1),
                    }
                }
            },
        }
    }
}

/// Wrap `msg` in an MLLP block: `VT msg FS CR`.
#[cfg(feature = "alloc")]
pub fn encode(msg: &[u8]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec::Vec::with_capacity(msg.len() + 3);
    encode_into(msg, &mut out);
    out
}

/// Append `VT msg FS CR` to `out`.
pub fn encode_into(msg: &[u8], out: &mut impl Sink) {
    out.put(VT);
    out.put_all(msg);
    out.put(FS);
    out.put(CR);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    type MllpFramer = super::MllpFramer<heapless::Vec<u8, 2048>>;

    /// Owned copies of the events, for comparing.
    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Message(Vec<u8>),
        TooLarge { len: usize, head: Vec<u8> },
        Interrupted { discarded: usize },
    }

    fn run(f: &mut MllpFramer, input: &[u8]) -> Vec<Ev> {
        let mut v = Vec::new();
        f.feed(input, |e| {
            v.push(match e {
                MllpEvent::Message(m) => Ev::Message(m.to_vec()),
                MllpEvent::TooLarge { len, head } => Ev::TooLarge {
                    len,
                    head: head.to_vec(),
                },
                MllpEvent::Interrupted { discarded } => Ev::Interrupted { discarded },
            })
        });
        v
    }

    #[test]
    fn golden_block() {
        let mut e = heapless::Vec::<u8, 16>::new();
        let mut out = crate::buf::Bounded::new(&mut e);
        encode_into(b"MSH|x\r", &mut out);
        out.finish().unwrap();
        assert_eq!(&e[..], b"\x0bMSH|x\r\x1c\x0d");
        let mut f = MllpFramer::new(DEFAULT_MAX_MESSAGE);
        assert_eq!(
            run(&mut f, b"\x0bMSH|x\r\x1c\x0d"),
            vec![Ev::Message(b"MSH|x\r".to_vec())]
        );
        assert_eq!(f.stats().junk_bytes, 0);
    }

    #[test]
    fn junk_fs_alone_and_interrupt() {
        let mut f = MllpFramer::new(DEFAULT_MAX_MESSAGE);
        let ev = run(&mut f, b"zz\x0bA\x1c\x0bB\x0bC\x1c\r");
        assert_eq!(
            ev,
            vec![
                Ev::Message(b"A".to_vec()),
                Ev::Interrupted { discarded: 1 },
                Ev::Message(b"C".to_vec()),
            ]
        );
        let s = f.stats();
        assert_eq!((s.junk_bytes, s.fs_without_cr, s.interrupted), (2, 1, 1));
    }

    #[test]
    fn too_large_is_bounded_and_reported() {
        let mut f = MllpFramer::new(4);
        let ev = run(&mut f, b"\x0b123456789\x1c\r\x0bok\x1c\r");
        assert_eq!(
            ev,
            vec![
                Ev::TooLarge {
                    len: 9,
                    head: b"1234".to_vec()
                },
                Ev::Message(b"ok".to_vec()),
            ]
        );
        // a partial block can be dropped by the driver (receive timeout)
        assert!(run(&mut f, b"\x0bpar").is_empty());
        assert_eq!(f.reset(), 3);
        // exactly at the limit is fine
        assert_eq!(
            run(&mut f, b"\x0b1234\x1c\r"),
            vec![Ev::Message(b"1234".to_vec())]
        );
    }

    /// Events and statistics of `input` fed in pieces cut at `cuts`.
    fn fed_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<Ev>, MllpStats) {
        let mut f = MllpFramer::new(5);
        let mut ev = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain([input.len()].iter()) {
            ev.extend(run(&mut f, &input[from..c]));
            from = c;
        }
        (ev, f.stats())
    }

    #[test]
    fn runs_of_plain_bytes_frame_as_byte_by_byte_at_every_cut() {
        let input: &[u8] =
            b"j\x0bab\x1c\r\x0b12345\x1c\x0b123456789\x1c\r\x0bx\x0by\x1cz\x0b\x1c\r\x0bq";
        let one_by_one: Vec<usize> = (1..input.len()).collect();
        let expected = fed_in_pieces(input, &one_by_one);
        assert_eq!(expected.0.len(), 6, "{:?}", expected.0);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(
                    fed_in_pieces(input, &[a, b]),
                    expected,
                    "cut at {a} and {b}"
                );
            }
        }
    }
}
