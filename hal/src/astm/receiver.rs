//! The receiving side of an E1381 link (instrument → host), sans-IO.
//!
//! # Durability design
//!
//! Every frame is committed before it is acknowledged. For each good, in-sequence, new
//! frame the session raises [`Event::NeedsCommit`] with a [`CommitRequest`] that says
//! exactly what the driver's durable state for this channel must become:
//!
//! - `completed`: whole messages this frame finishes (cut after each L record) — store
//!   each as a message;
//! - `partial`: the record text received since the last completed message, *including*
//!   this frame — replace the channel's durable "partial message" with it.
//!
//! The driver applies both atomically (one durable write, fsync) and then calls
//! [`Receiver::commit_ok`]; only then is the ACK queued. On [`Receiver::commit_failed`]
//! the session queues NAK, the frame is not counted, and the instrument resends it.
//!
//! ## Invariants
//!
//! 1. No ACK (nor the EOT of a receiver interrupt, which counts as an ACK) is queued for a
//!    frame whose bytes have not been confirmed by `commit_ok()`. The only ACKs queued
//!    without a commit are the ENQ reply (covers no data) and the reply to a byte-identical
//!    copy of the last accepted frame (its bytes were committed before its first ACK).
//! 2. At any time, the bytes the instrument was told were received are exactly the
//!    completed messages plus `partial` of the last confirmed commit.
//! 3. At most one commit is outstanding; input arriving meanwhile is held (bounded by
//!    `max_frame + 64` bytes; the instrument is waiting for our reply, so there is
//!    normally none) and processed after the commit is resolved.
//! 4. Memory: decoder ≤ `max_frame`; partial message ≤ `max_message` (a frame that would
//!    exceed it is NAKed with [`Reject::MessageTooLong`]: the instrument keeps the data).
//! 5. A message that ends at EOT (instrument sends no L) is committed once more as a
//!    `completed` message with an empty `partial` (no reply goes to the wire); if that
//!    commit fails the partial stays durable and is reported [`Event::Incomplete`].
//! 6. When the receive timer fires or the line is lost, the committed partial (if any) is
//!    reported [`Event::Incomplete`]: it is already durable; the driver marks it
//!    `incomplete` instead of discarding it.
//!
//! # Call order
//!
//! `handle_input` / `handle_timeout` / `handle_line_lost` / `commit_ok` / `commit_failed`,
//! then drain `poll_event()` and `poll_transmit()` until both return `None`, then sleep
//! until `poll_timeout()` or more input.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::frame::{Decoded, FrameDecoder, FrameError};
use super::{ACK, CR, ENQ, EOT, NAK};
use crate::time::{Duration, Instant};

/// Receiver limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Largest frame accepted (FN + text bytes). Default 64 KiB.
    pub max_frame: usize,
    /// Largest message (record text, CR separated). Default 4 MiB.
    pub max_message: usize,
    /// Time to wait for the next frame or EOT. Default 30 s.
    pub receive_timeout: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_frame: 64 * 1024,
            max_message: 4 * 1024 * 1024,
            receive_timeout: Duration::from_secs(30),
        }
    }
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    /// At its L record.
    Terminator,
    /// At an L record, but the text does not start with an H record: its beginning was
    /// lost (e.g. the line dropped mid-message and the instrument carried on after a new
    /// ENQ). Store it as incomplete.
    Headless,
    /// At EOT without an L record.
    Eot,
    /// The receive timer fired.
    Timeout,
    /// The driver reported the line lost.
    LineLost,
}

/// A message: record text without frame envelopes, each record terminated by CR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The records.
    pub text: Vec<u8>,
    /// How it ended.
    pub end: MessageEnd,
}

/// What the driver must make durable before the session may acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    /// FN of the frame (None for the commit of an EOT-ended message).
    pub frame_number: Option<u8>,
    /// Messages this commit completes: store each.
    pub completed: Vec<Message>,
    /// The new partial message (replaces the previous one; may be empty).
    pub partial: Vec<u8>,
}

/// Why a frame was answered NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Bad frame (checksum, control char, too long, ...).
    Frame(FrameError),
    /// FN neither the last accepted one nor the next.
    Sequence {
        /// Last accepted FN.
        last: u8,
        /// FN received.
        got: u8,
    },
    /// The message would exceed `max_message`.
    MessageTooLong,
    /// The driver could not commit.
    CommitFailed,
}

/// Something the driver should know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ENQ accepted: a transmission starts.
    TransmissionStarted,
    /// ENQ refused with NAK because the driver said busy.
    RefusedBusy,
    /// Make this durable, then call `commit_ok()` or `commit_failed()`.
    NeedsCommit(CommitRequest),
    /// A frame was committed and acknowledged.
    FrameAccepted {
        /// Its FN.
        number: u8,
        /// Text bytes.
        len: usize,
    },
    /// A byte-identical retransmission was acknowledged and dropped.
    DuplicateFrame {
        /// Its FN.
        number: u8,
    },
    /// A frame was answered NAK.
    FrameRejected(Reject),
    /// A message completed (already durable through a `NeedsCommit`: notification only).
    MessageComplete(Message),
    /// The committed partial message will never complete (already durable: mark it
    /// incomplete).
    Incomplete(Message),
    /// EOT received: back to neutral.
    TransmissionEnded,
    /// The receive timer fired: back to neutral.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Neutral,
    Receiving,
}

#[derive(Debug)]
struct Pending {
    number: Option<u8>,
    frame: Vec<u8>,
    last: bool,
    completed: Vec<Message>,
    partial: Vec<u8>,
    text_len: usize,
}

/// The receiver session.
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    state: State,
    decoder: FrameDecoder,
    /// FN + text of the last accepted frame, and whether it was ETX.
    last_frame: Vec<u8>,
    last_was_etx: bool,
    last_fn: u8,
    partial: Vec<u8>,
    pending: Option<Pending>,
    held: VecDeque<u8>,
    line_lost_deferred: bool,
    busy: bool,
    interrupt: bool,
    deadline: Option<Instant>,
    now: Instant,
    tx: VecDeque<u8>,
    events: VecDeque<Event>,
}

impl Receiver {
    /// A neutral receiver.
    pub fn new(cfg: ReceiverConfig) -> Self {
        Receiver {
            decoder: FrameDecoder::new(cfg.max_frame),
            cfg,
            state: State::Neutral,
            last_frame: Vec::new(),
            last_was_etx: false,
            last_fn: 0,
            partial: Vec::new(),
            pending: None,
            held: VecDeque::new(),
            line_lost_deferred: false,
            busy: false,
            interrupt: false,
            deadline: None,
            now: Instant::ZERO,
            tx: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ReceiverConfig {
        &self.cfg
    }

    /// While busy, ENQ is answered NAK.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Ask the instrument to stop: the next frame is answered EOT instead of ACK.
    pub fn request_interrupt(&mut self) {
        self.interrupt = true;
    }

    /// True between an accepted ENQ and the end of the transmission.
    pub fn is_receiving(&self) -> bool {
        self.state == State::Receiving
    }

    /// True while a `NeedsCommit` is unanswered.
    pub fn commit_outstanding(&self) -> bool {
        self.pending.is_some()
    }

    /// Bytes of the committed partial message.
    pub fn partial_len(&self) -> usize {
        self.partial.len()
    }

    /// Start receiving without an ENQ (used when the sender session yielded on
    /// contention and already answered the instrument's ENQ with ACK).
    pub fn start_established(&mut self, now: Instant) {
        self.now = now;
        self.begin(now);
    }

    fn begin(&mut self, now: Instant) {
        self.state = State::Receiving;
        self.decoder.reset();
        self.last_frame.clear();
        self.last_fn = 0;
        self.last_was_etx = false;
        self.deadline = Some(now + self.cfg.receive_timeout);
    }

    /// Bytes from the wire.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        self.now = now;
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        if self.pending.is_some() {
            if self.held.len() < self.cfg.max_frame.saturating_add(64) {
                self.held.push_back(b);
            }
            return;
        }
        let mut next = Some(b);
        while let Some(b) = next.take() {
            self.byte_inner(b);
            next = self.decoder.take_replay();
            if self.pending.is_some() {
                if let Some(r) = next.take() {
                    self.held.push_back(r);
                }
            }
        }
    }

    fn byte_inner(&mut self, b: u8) {
        match self.state {
            State::Neutral => {
                if b == ENQ {
                    if self.busy {
                        self.tx.push_back(NAK);
                        self.events.push_back(Event::RefusedBusy);
                    } else {
                        self.tx.push_back(ACK);
                        self.begin(self.now);
                        self.events.push_back(Event::TransmissionStarted);
                    }
                }
            }
            State::Receiving => {
                let decoded = match self.decoder.push(b) {
                    Decoded::Nothing => return,
                    Decoded::Outside(c) => Err(Some(c)),
                    Decoded::Bad(e) => Ok(Err(e)),
                    Decoded::Frame(f) => {
                        let mut v = Vec::with_capacity(f.text.len() + 1);
                        v.push(b'0' + f.number);
                        v.extend_from_slice(f.text);
                        Ok(Ok((v, f.last)))
                    }
                };
                match decoded {
                    Err(Some(EOT)) => self.on_eot(),
                    Err(_) => {}
                    Ok(Err(e)) => self.reject(Reject::Frame(e)),
                    Ok(Ok((frame, last))) => self.on_frame(frame, last),
                }
            }
        }
    }

    fn reject(&mut self, r: Reject) {
        self.tx.push_back(NAK);
        self.events.push_back(Event::FrameRejected(r));
        self.deadline = Some(self.now + self.cfg.receive_timeout);
    }

    fn on_frame(&mut self, frame: Vec<u8>, last: bool) {
        self.deadline = Some(self.now + self.cfg.receive_timeout);
        let number = frame.first().map_or(0, |f| f.wrapping_sub(b'0') & 7);
        if number == self.last_fn && last == self.last_was_etx && frame == self.last_frame {
            self.tx.push_back(ACK);
            self.events.push_back(Event::DuplicateFrame { number });
            return;
        }
        if number != self.last_fn && number != (self.last_fn + 1) % 8 {
            self.reject(Reject::Sequence {
                last: self.last_fn,
                got: number,
            });
            return;
        }
        let text = frame.get(1..).unwrap_or(&[]);
        let mut candidate = Vec::with_capacity(self.partial.len() + text.len() + 1);
        candidate.extend_from_slice(&self.partial);
        candidate.extend_from_slice(text);
        if last && candidate.last().is_some_and(|&c| c != CR) {
            candidate.push(CR);
        }
        // Records before the last CR of the committed partial are known not to be L.
        let scan_from = self
            .partial
            .iter()
            .rposition(|&b| b == CR)
            .map_or(0, |i| i + 1);
        let (completed, partial) = split_messages(candidate, scan_from);
        let too_long = partial.len() > self.cfg.max_message
            || completed
                .iter()
                .any(|m| m.text.len() > self.cfg.max_message);
        if too_long {
            self.reject(Reject::MessageTooLong);
            return;
        }
        let req = CommitRequest {
            frame_number: Some(number),
            completed: completed.clone(),
            partial: partial.clone(),
        };
        self.pending = Some(Pending {
            number: Some(number),
            text_len: text.len(),
            frame,
            last,
            completed,
            partial,
        });
        self.deadline = None;
        self.events.push_back(Event::NeedsCommit(req));
    }

    fn on_eot(&mut self) {
        if self.partial.is_empty() {
            self.end_transmission();
            return;
        }
        let msg = Message {
            text: self.partial.clone(),
            end: MessageEnd::Eot,
        };
        self.pending = Some(Pending {
            number: None,
            frame: Vec::new(),
            last: false,
            completed: alloc::vec![msg.clone()],
            partial: Vec::new(),
            text_len: 0,
        });
        self.deadline = None;
        self.events.push_back(Event::NeedsCommit(CommitRequest {
            frame_number: None,
            completed: alloc::vec![msg],
            partial: Vec::new(),
        }));
    }

    fn end_transmission(&mut self) {
        self.state = State::Neutral;
        self.deadline = None;
        self.interrupt = false;
        self.decoder.reset();
        self.events.push_back(Event::TransmissionEnded);
    }

    /// The driver made the last `CommitRequest` durable.
    pub fn commit_ok(&mut self) {
        let Some(p) = self.pending.take() else { return };
        self.partial = p.partial;
        match p.number {
            Some(number) => {
                if self.interrupt {
                    self.tx.push_back(EOT);
                    self.interrupt = false;
                } else {
                    self.tx.push_back(ACK);
                }
                self.last_frame = p.frame;
                self.last_fn = number;
                self.last_was_etx = p.last;
                self.events.push_back(Event::FrameAccepted {
                    number,
                    len: p.text_len,
                });
                for m in p.completed {
                    self.events.push_back(Event::MessageComplete(m));
                }
                self.deadline = Some(self.now + self.cfg.receive_timeout);
            }
            None => {
                for m in p.completed {
                    self.events.push_back(Event::MessageComplete(m));
                }
                self.end_transmission();
            }
        }
        self.after_commit();
    }

    /// The driver could not make the last `CommitRequest` durable.
    pub fn commit_failed(&mut self) {
        let Some(p) = self.pending.take() else { return };
        match p.number {
            Some(_) => self.reject(Reject::CommitFailed),
            None => {
                let text = core::mem::take(&mut self.partial);
                self.events.push_back(Event::Incomplete(Message {
                    text,
                    end: MessageEnd::Eot,
                }));
                self.end_transmission();
            }
        }
        self.after_commit();
    }

    fn after_commit(&mut self) {
        if self.line_lost_deferred {
            self.line_lost_deferred = false;
            self.held.clear();
            self.handle_line_lost();
            return;
        }
        while self.pending.is_none() {
            let Some(b) = self.held.pop_front() else {
                break;
            };
            self.byte(b);
        }
    }

    /// The driver lost the line (serial closed, TCP reset): keep what was committed as
    /// incomplete and return to neutral. With a commit outstanding this takes effect
    /// when the commit is resolved.
    pub fn handle_line_lost(&mut self) {
        if self.pending.is_some() {
            self.line_lost_deferred = true;
            return;
        }
        self.abort(MessageEnd::LineLost);
    }

    fn abort(&mut self, end: MessageEnd) {
        if !self.partial.is_empty() {
            let text = core::mem::take(&mut self.partial);
            self.events
                .push_back(Event::Incomplete(Message { text, end }));
        }
        self.state = State::Neutral;
        self.deadline = None;
        self.interrupt = false;
        self.decoder.reset();
        self.held.clear();
    }

    /// Call when `poll_timeout()` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if let Some(d) = self.deadline {
            if now >= d && self.pending.is_none() {
                self.abort(MessageEnd::Timeout);
                self.events.push_back(Event::TimedOut);
            }
        }
    }

    /// Bytes to write; returns how many were written into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.tx.pop_front() {
                Some(b) => {
                    *slot = b;
                    n += 1;
                }
                None => break,
            }
        }
        (n > 0).then_some(n)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

/// True if `rec` (one record without its CR) is an L record. The field delimiter is not
/// known here (it lives in the H record), so any non-alphanumeric second byte counts.
fn is_terminator(rec: &[u8]) -> bool {
    match rec {
        [b'L'] => true,
        [b'L', d, ..] => !d.is_ascii_alphanumeric(),
        _ => false,
    }
}

/// Cut `text` after each CR-terminated L record; records start at or after `scan_from`.
fn split_messages(mut text: Vec<u8>, scan_from: usize) -> (Vec<Message>, Vec<u8>) {
    let mut completed = Vec::new();
    let mut start = scan_from.min(text.len());
    loop {
        let mut cut = None;
        for (i, &b) in text.iter().enumerate().skip(start) {
            if b == CR {
                if is_terminator(text.get(start..i).unwrap_or(&[])) {
                    cut = Some(i + 1);
                    break;
                }
                start = i + 1;
            }
        }
        match cut {
            Some(c) => {
                start = 0;
                let rest = text.split_off(c);
                let end = if text.first() == Some(&b'H') {
                    MessageEnd::Terminator
                } else {
                    MessageEnd::Headless
                };
                completed.push(Message { text, end });
                text = rest;
            }
            None => return (completed, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::astm::frame::encode_frame;
    use crate::astm::STX;

    fn frame(n: u8, text: &[u8], last: bool) -> Vec<u8> {
        let mut b = alloc::vec![0u8; text.len() + 7];
        let l = encode_frame(n, text, last, &mut b).unwrap();
        b.truncate(l);
        b
    }

    fn drain(r: &mut Receiver) -> (Vec<u8>, Vec<Event>) {
        let mut tx = Vec::new();
        let mut buf = [0u8; 8];
        while let Some(n) = r.poll_transmit(&mut buf) {
            tx.extend_from_slice(&buf[..n]);
        }
        let mut ev = Vec::new();
        while let Some(e) = r.poll_event() {
            ev.push(e);
        }
        (tx, ev)
    }

    #[test]
    fn no_ack_before_commit() {
        let mut r = Receiver::new(ReceiverConfig::default());
        let t = Instant::ZERO;
        r.handle_input(&[ENQ], t);
        assert_eq!(drain(&mut r).0, [ACK]);
        r.handle_input(&frame(1, b"H|\\^&\rP|1\r", false), t);
        let (tx, ev) = drain(&mut r);
        assert!(tx.is_empty());
        assert!(matches!(ev.as_slice(), [Event::NeedsCommit(_)]));
        r.commit_ok();
        assert_eq!(drain(&mut r).0, [ACK]);
        r.handle_input(&frame(2, b"L|1\r", true), t);
        r.commit_failed();
        assert_eq!(drain(&mut r).0, [NAK]);
        r.handle_input(&frame(2, b"L|1\r", true), t);
        let (_, ev) = drain(&mut r);
        let Some(Event::NeedsCommit(c)) = ev.first() else {
            panic!()
        };
        assert_eq!(c.completed[0].text, b"H|\\^&\rP|1\rL|1\r");
        assert!(c.partial.is_empty());
        r.commit_ok();
        r.handle_input(&[EOT], t);
        let (tx, ev) = drain(&mut r);
        assert_eq!(tx, [ACK]);
        assert!(ev.contains(&Event::TransmissionEnded));
    }

    #[test]
    fn timeout_keeps_incomplete() {
        let mut r = Receiver::new(ReceiverConfig::default());
        r.handle_input(&[ENQ], Instant::ZERO);
        r.handle_input(&frame(1, b"H|\\^&\r", true), Instant::ZERO);
        r.commit_ok();
        drain(&mut r);
        let d = r.poll_timeout().unwrap();
        r.handle_timeout(d);
        let (_, ev) = drain(&mut r);
        assert_eq!(
            ev[0],
            Event::Incomplete(Message {
                text: b"H|\\^&\r".to_vec(),
                end: MessageEnd::Timeout
            })
        );
        r.handle_input(&[STX], d);
        assert!(!r.is_receiving());
    }
}
