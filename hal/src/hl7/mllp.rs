//! MLLP framing: `VT (0x0B) message FS (0x1C) CR (0x0D)`.
//!
//! The framer is sans-IO and bounded: feed it whatever a read returned with
//! [`MllpFramer::push`], then drain [`MllpFramer::poll_event`]. At most one event is
//! pending at a time; while one is, `push` consumes nothing (returns 0), so memory never
//! exceeds one message of `max_message` bytes plus a small head copy.
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
//!   block is dropped, [`MllpError::Interrupted`] is reported and a new block starts.
//! - **Too large:** once a block exceeds `max_message`, its bytes are discarded (only the
//!   first [`TOO_LARGE_HEAD`] bytes are kept, so the agent can read MSH-10 and answer with
//!   an AE/CE carrying it) until the block ends (FS) or a new VT starts one; then
//!   [`MllpError::TooLarge`] is reported with the block's total length.

use alloc::vec::Vec;

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

/// A block the framer could not deliver as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpError {
    /// The block was longer than `max_message`. `len` is the whole block's length (VT and
    /// FS excluded); `head` its first bytes (at most [`TOO_LARGE_HEAD`]), for the ACK.
    TooLarge {
        /// Total length of the oversized block.
        len: usize,
        /// The block's first bytes.
        head: Vec<u8>,
    },
    /// A VT arrived inside a block; the `discarded` bytes before it were dropped.
    Interrupted {
        /// Number of bytes of the abandoned block.
        discarded: usize,
    },
}

/// What the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpEvent {
    /// One complete message, without VT/FS/CR.
    Message(Vec<u8>),
    /// A block that was dropped (the agent should answer AE/CE if it can).
    Error(MllpError),
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

/// Incremental MLLP deframer. See the module docs for the exact rules.
#[derive(Debug)]
pub struct MllpFramer {
    max_message: usize,
    state: State,
    buf: Vec<u8>,
    pending: Option<MllpEvent>,
    stats: MllpStats,
}

impl Default for MllpFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE)
    }
}

impl MllpFramer {
    /// A framer that refuses messages longer than `max_message` bytes (at least 1).
    pub fn new(max_message: usize) -> Self {
        MllpFramer {
            max_message: max_message.max(1),
            state: State::Idle,
            buf: Vec::new(),
            pending: None,
            stats: MllpStats::default(),
        }
    }

    /// The configured limit.
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

    /// Drop a partial block (e.g. when the driver's receive timer expires or the
    /// connection closes); returns how many bytes were discarded. Counters and a pending event are kept.
    pub fn reset(&mut self) -> usize {
        let n = match self.state {
            State::InBlock => self.buf.len(),
            State::Discarding { len } => len,
            State::Idle | State::AfterFs => 0,
        };
        self.buf = Vec::new();
        self.state = State::Idle;
        n
    }

    /// Feed bytes; returns how many were consumed. Consumption stops right after a byte
    /// that produced an event; call [`poll_event`](Self::poll_event) and push the rest.
    /// Returns 0 while an event is pending.
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
    pub fn poll_event(&mut self) -> Option<MllpEvent> {
        self.pending.take()
    }

    /// Push all of `input`, handing every event to `on_event`.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(MllpEvent)) {
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
                    let msg = core::mem::take(&mut self.buf);
                    self.pending = Some(MllpEvent::Message(msg));
                }
                VT => {
                    self.stats.interrupted += 1;
                    let discarded = self.buf.len();
                    self.buf.clear();
                    self.pending = Some(MllpEvent::Error(MllpError::Interrupted { discarded }));
                }
                _ if self.buf.len() >= self.max_message => {
                    let len = self.buf.len() + 1;
                    self.buf.truncate(TOO_LARGE_HEAD);
                    self.buf.shrink_to_fit();
                    self.state = State::Discarding { len };
                }
                _ => self.buf.push(b),
            },
            State::Discarding { len } => match b {
                FS | VT => {
                    self.stats.too_large += 1;
                    let head = core::mem::take(&mut self.buf);
                    self.pending = Some(MllpEvent::Error(MllpError::TooLarge { len, head }));
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
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    encode_into(msg, &mut out);
    out
}

/// Append `VT msg FS CR` to `out`.
pub fn encode_into(msg: &[u8], out: &mut Vec<u8>) {
    out.push(VT);
    out.extend_from_slice(msg);
    out.push(FS);
    out.push(CR);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn run(f: &mut MllpFramer, input: &[u8]) -> Vec<MllpEvent> {
        let mut v = Vec::new();
        f.feed(input, |e| v.push(e));
        v
    }

    #[test]
    fn golden_block() {
        assert_eq!(encode(b"MSH|x\r"), b"\x0bMSH|x\r\x1c\x0d");
        let mut f = MllpFramer::default();
        assert_eq!(
            run(&mut f, b"\x0bMSH|x\r\x1c\x0d"),
            vec![MllpEvent::Message(b"MSH|x\r".to_vec())]
        );
        assert_eq!(f.stats().junk_bytes, 0);
    }

    #[test]
    fn junk_fs_alone_and_interrupt() {
        let mut f = MllpFramer::default();
        let ev = run(&mut f, b"zz\x0bA\x1c\x0bB\x0bC\x1c\r");
        assert_eq!(
            ev,
            vec![
                MllpEvent::Message(b"A".to_vec()),
                MllpEvent::Error(MllpError::Interrupted { discarded: 1 }),
                MllpEvent::Message(b"C".to_vec()),
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
                MllpEvent::Error(MllpError::TooLarge {
                    len: 9,
                    head: b"1234".to_vec()
                }),
                MllpEvent::Message(b"ok".to_vec()),
            ]
        );
        // a partial block can be dropped by the driver (receive timeout)
        assert!(run(&mut f, b"\x0bpar").is_empty());
        assert_eq!(f.reset(), 3);
        // exactly at the limit is fine
        assert_eq!(
            run(&mut f, b"\x0b1234\x1c\r"),
            vec![MllpEvent::Message(b"1234".to_vec())]
        );
    }
}
