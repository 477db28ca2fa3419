//! The sending side of an E1381 link (host → instrument, or an instrument simulator's
//! results), sans-IO.
//!
//! One message (records) at a time: [`Sender::send`] copies it into the session's buffer
//! (line ends CR, LF or CR LF all become CR; empty lines are dropped) and sends ENQ; each
//! record is split into frames of at most `max_text` bytes (ETB for all but the record's
//! last frame, ETX for that one); EOT ends the transfer.
//!
//! Rules:
//! - ENQ reply timer `reply_timeout` (15 s); no reply → EOT, wait `busy_retry`, ENQ again.
//! - NAK to ENQ → wait `busy_retry` (10 s) before the next ENQ; at most `max_retries`
//!   ENQs per message, then [`Event::Failed`] with [`Failure::NotEstablished`].
//! - Contention: ENQ received while waiting for the reply to our ENQ → [`Event::Contention`]
//!   and the sender stops, *holding* the message: the caller decides what wins and whether
//!   to [`Sender::start`] it again later or [`Sender::abort`] it (the host yields to the
//!   instrument, [`super::link::Link`]; an instrument bids again).
//! - Each frame is sent at most `max_retries` times in total (NAK, or any reply other
//!   than ACK/EOT → resend the same frame, same FN); then EOT and [`Failure::FrameRetries`].
//!   No reply within `reply_timeout` → EOT and [`Failure::NoReply`] (LIS1-A termination).
//!   Reply bytes that arrive before the frame was handed out by `poll_transmit` are
//!   ignored (a stray ACK must never acknowledge a frame that was never sent).
//! - EOT as a frame reply is a receiver interrupt: it acknowledges the frame; if more
//!   frames remain the sender sends EOT and reports [`Event::Interrupted`].
//!
//! Memory: the message (≤ the buffer's limit) and one frame being written; frames are
//! cut from the message as they are sent, never stored.

use super::frame::{encode_frame, OVERHEAD};
use super::{ACK, CR, ENQ, EOT, NAK};
use crate::buf::{Buffer, Queue};
use crate::time::{Duration, Instant};

/// Sender timers and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Wait for each reply. Default 15 s.
    pub reply_timeout: Duration,
    /// Wait after NAK to ENQ (or no reply) before the next ENQ. Default 10 s.
    pub busy_retry: Duration,
    /// Attempts per frame (and ENQs per message) in total. Default 6.
    pub max_retries: u32,
    /// Text bytes per frame. Default 240.
    pub max_text: usize,
    /// Largest message accepted by `send` (at most the buffer's capacity). Default 1 MiB.
    pub max_message: usize,
    /// Fill every frame with up to `max_text` bytes of the message, across record
    /// boundaries (several records per frame, records split anywhere; ETX only on the
    /// message's last frame), as some instruments do. Default false: each record starts a
    /// new frame and ends in an ETX frame.
    pub pack_records: bool,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            reply_timeout: Duration::from_secs(15),
            busy_retry: Duration::from_secs(10),
            max_retries: 6,
            max_text: 240,
            max_message: 1024 * 1024,
            pack_records: false,
        }
    }
}

/// Why `send` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// A message is already being sent.
    Busy,
    /// Empty, or over `max_message` / the buffer.
    BadSize,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The instrument never accepted our ENQ.
    NotEstablished,
    /// A frame failed `max_retries` times.
    FrameRetries,
    /// No reply to a frame within `reply_timeout`.
    NoReply,
}

/// Sender events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The other side sent ENQ while we waited for the reply to ours; the sender is idle.
    Contention,
    /// Every frame was acknowledged and EOT sent.
    Delivered,
    /// The receiver interrupted the transfer before the last frame.
    Interrupted,
    /// The message was not delivered.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// A message is loaded but not being sent (before `start`, or after contention).
    Held,
    WaitEnqReply,
    WaitBeforeEnq,
    WaitFrameReply,
}

/// The sender session.
#[derive(Debug)]
pub struct Sender<B> {
    cfg: SenderConfig,
    state: State,
    msg: B,
    /// The current frame: text offset, length, ETX; and its FN.
    off: usize,
    len: usize,
    etx: bool,
    fn_digit: u8,
    attempts: u32,
    frame_written: bool,
    enq_attempts: u32,
    deadline: Option<Instant>,
    tx: Queue<u8, 4>,
    events: Queue<Event, 4>,
}

impl<B: Buffer> Sender<B> {
    /// An idle sender.
    pub fn new(cfg: SenderConfig) -> Self {
        Sender {
            msg: B::with_limit(cfg.max_message),
            cfg,
            state: State::Idle,
            off: 0,
            len: 0,
            etx: false,
            fn_digit: 1,
            attempts: 0,
            frame_written: false,
            enq_attempts: 0,
            deadline: None,
            tx: Queue::new(),
            events: Queue::new(),
        }
    }

    /// True when no message is held.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// True when a message is loaded but not being sent.
    pub fn is_held(&self) -> bool {
        self.state == State::Held
    }

    /// True while the other side's replies are this sender's (after our ENQ, after a
    /// frame): bytes from the wire go to it, not to a receiver.
    pub fn is_sending(&self) -> bool {
        matches!(self.state, State::WaitEnqReply | State::WaitFrameReply)
    }

    /// The records being sent (CR separated).
    pub fn message(&self) -> &[u8] {
        self.msg.as_slice()
    }

    /// Queue a message (records separated by CR, LF or CR LF; the last record's end may be
    /// missing) and start establishment.
    pub fn send(&mut self, records: &[u8], now: Instant) -> Result<(), SendError> {
        self.load(records)?;
        self.start(now);
        Ok(())
    }

    /// Start sending the loaded message (ENQ), from the beginning.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Held {
            return;
        }
        self.off = 0;
        self.len = 0;
        self.fn_digit = 0;
        self.enq_attempts = 0;
        self.tx.clear();
        self.send_enq(now);
    }

    /// Load a message without sending it yet ([`Sender::start`]).
    pub fn load(&mut self, records: &[u8]) -> Result<(), SendError> {
        if self.state != State::Idle {
            return Err(SendError::Busy);
        }
        self.msg.clear();
        for line in records.split(|&b| b == CR || b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if self.msg.len() + line.len() + 1 > self.cfg.max_message
                || self.msg.try_extend(line).is_err()
                || self.msg.try_push(CR).is_err()
            {
                self.msg.clear();
                return Err(SendError::BadSize);
            }
        }
        if self.msg.is_empty() {
            return Err(SendError::BadSize);
        }
        self.state = State::Held;
        Ok(())
    }

    /// Drop the message without a word on the wire (the line was lost, or the caller
    /// yields). Nothing is reported.
    pub fn abort(&mut self) {
        self.state = State::Idle;
        self.deadline = None;
        self.msg.clear();
        self.tx.clear();
    }

    fn send_enq(&mut self, now: Instant) {
        self.enq_attempts += 1;
        let _ = self.tx.push(ENQ);
        self.state = State::WaitEnqReply;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    /// Moves to the frame after the current one; false at the end of the message.
    fn next_frame(&mut self) -> bool {
        let start = self.off + self.len;
        let msg = self.msg.as_slice();
        if start >= msg.len() {
            return false;
        }
        let rec_end = if self.cfg.pack_records {
            msg.len()
        } else {
            msg[start..]
                .iter()
                .position(|&b| b == CR)
                .map_or(msg.len(), |i| start + i + 1)
        };
        self.off = start;
        self.len = (rec_end - start).min(self.cfg.max_text.max(1));
        self.etx = start + self.len == rec_end;
        self.fn_digit = (self.fn_digit + 1) % 8;
        self.attempts = 0;
        true
    }

    fn send_frame(&mut self, now: Instant) {
        self.attempts += 1;
        self.frame_written = false;
        self.state = State::WaitFrameReply;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    fn finish(&mut self, ev: Event) {
        let _ = self.tx.push(EOT);
        self.state = State::Idle;
        self.deadline = None;
        self.msg.clear();
        let _ = self.events.push(ev);
    }

    fn retry_enq_later(&mut self, now: Instant) {
        if self.enq_attempts >= self.cfg.max_retries {
            self.state = State::Idle;
            self.deadline = None;
            self.msg.clear();
            let _ = self.events.push(Event::Failed(Failure::NotEstablished));
            return;
        }
        self.state = State::WaitBeforeEnq;
        self.deadline = Some(now + self.cfg.busy_retry);
    }

    /// Bytes from the wire (all are taken).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            match (self.state, b) {
                (State::WaitEnqReply, ACK) => {
                    self.next_frame();
                    self.send_frame(now);
                }
                (State::WaitEnqReply, NAK) => self.retry_enq_later(now),
                (State::WaitEnqReply, ENQ) => {
                    self.state = State::Held;
                    self.deadline = None;
                    let _ = self.events.push(Event::Contention);
                }
                // A reply before the frame went out is not about that frame.
                (State::WaitFrameReply, _) if !self.frame_written => {}
                (State::WaitFrameReply, ACK) => self.advance(now),
                (State::WaitFrameReply, EOT) => {
                    if self.off + self.len >= self.msg.len() {
                        self.advance(now);
                    } else {
                        self.finish(Event::Interrupted);
                    }
                }
                // NAK, or any other character (a garbled ACK): send the frame again.
                (State::WaitFrameReply, _) => self.frame_failed(now),
                _ => {}
            }
        }
    }

    fn advance(&mut self, now: Instant) {
        if self.next_frame() {
            self.send_frame(now);
        } else {
            self.finish(Event::Delivered);
        }
    }

    fn frame_failed(&mut self, now: Instant) {
        if self.attempts >= self.cfg.max_retries {
            self.finish(Event::Failed(Failure::FrameRetries));
        } else {
            self.send_frame(now);
        }
    }

    /// Call when `poll_timeout()` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        match self.state {
            State::WaitEnqReply => {
                let _ = self.tx.push(EOT);
                self.retry_enq_later(now);
            }
            State::WaitBeforeEnq => self.send_enq(now),
            State::WaitFrameReply => self.finish(Event::Failed(Failure::NoReply)),
            State::Idle | State::Held => self.deadline = None,
        }
    }

    /// Bytes to write. A frame is written whole: `buf` must hold
    /// [`max_transmit`](Self::max_transmit) bytes, else `None` is returned and the frame
    /// stays queued.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if let Some(b) = self.tx.pop() {
            *buf.first_mut()? = b;
            return Some(1);
        }
        if self.state == State::WaitFrameReply && self.attempts > 0 && !self.frame_written {
            let text = self.msg.as_slice().get(self.off..self.off + self.len)?;
            let n = encode_frame(self.fn_digit, text, self.etx, buf)?;
            self.frame_written = true;
            return Some(n);
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Buffer size `poll_transmit` needs.
    pub fn max_transmit(&self) -> usize {
        self.cfg.max_text.max(1) + OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Sender<heapless::Vec<u8, 128>>;
    type V = heapless::Vec<u8, 256>;

    fn out(s: &mut S) -> V {
        let mut buf = [0u8; 64];
        let mut v = V::new();
        while let Some(n) = s.poll_transmit(&mut buf) {
            v.extend_from_slice(&buf[..n]).unwrap();
        }
        v
    }
    const STX: u8 = 0x02;

    #[test]
    fn splits_records_and_delivers() {
        let mut s = S::new(SenderConfig {
            max_text: 4,
            ..Default::default()
        });
        let t = Instant::ZERO;
        s.send(b"H|\\^&\nL|1", t).unwrap();
        assert_eq!(&out(&mut s)[..], [ENQ]);
        s.handle_input(&[ACK], t);
        assert_eq!(&out(&mut s)[..], b"\x021H|\\^\x17C6\r\n");
        s.handle_input(&[NAK], t);
        assert_eq!(&out(&mut s)[..], b"\x021H|\\^\x17C6\r\n");
        s.handle_input(&[ACK], t);
        assert_eq!(&out(&mut s)[..], b"\x022&\r\x0368\r\n");
        s.handle_input(&[ACK], t);
        assert_eq!(out(&mut s)[..2], [STX, b'3']);
        s.handle_input(&[ACK, ACK], t);
        assert_eq!(&out(&mut s)[..], [EOT]);
        assert_eq!(s.poll_event(), Some(Event::Delivered));
        assert!(s.is_idle());
    }

    #[test]
    fn contention_busy_and_retries() {
        let cfg = SenderConfig::default();
        let mut s = S::new(cfg.clone());
        let t = Instant::ZERO;
        s.send(b"H|\\^&\r", t).unwrap();
        out(&mut s);
        s.handle_input(&[ENQ], t);
        assert_eq!(s.poll_event(), Some(Event::Contention));
        assert!(s.is_held(), "the message is kept");
        s.start(t);
        assert_eq!(&out(&mut s)[..], [ENQ]);
        s.handle_input(&[NAK], t);
        assert_eq!(s.poll_timeout(), Some(t + cfg.busy_retry));
        s.handle_timeout(t + cfg.busy_retry);
        s.handle_input(&[ACK], t);
        out(&mut s);
        for _ in 0..5 {
            s.handle_input(&[NAK], t);
            assert!(out(&mut s).len() > 1);
        }
        s.handle_input(&[NAK], t);
        assert_eq!(&out(&mut s)[..], [EOT]);
        assert_eq!(s.poll_event(), Some(Event::Failed(Failure::FrameRetries)));
    }

    #[test]
    fn packed_frames_cross_record_boundaries() {
        let mut s = S::new(SenderConfig {
            max_text: 8,
            pack_records: true,
            ..Default::default()
        });
        let t = Instant::ZERO;
        s.send(b"H|\\^&\rP|1\rL|1", t).unwrap();
        assert_eq!(&out(&mut s)[..], [ENQ]);
        s.handle_input(&[ACK], t);
        assert_eq!(&out(&mut s)[..11], b"\x021H|\\^&\rP|\x17");
        s.handle_input(&[ACK], t);
        assert_eq!(&out(&mut s)[..9], b"\x0221\rL|1\r\x03");
        s.handle_input(&[ACK], t);
        assert_eq!(&out(&mut s)[..], [EOT]);
        assert_eq!(s.poll_event(), Some(Event::Delivered));
    }

    #[test]
    fn a_message_over_the_buffer_is_refused() {
        let mut s = S::new(SenderConfig::default());
        assert_eq!(s.send(&[b'R'; 200], Instant::ZERO), Err(SendError::BadSize));
        assert_eq!(s.send(b"\r\n", Instant::ZERO), Err(SendError::BadSize));
        assert!(s.is_idle());
    }
}
