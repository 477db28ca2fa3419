//! The sending side of an E1381 link (host → instrument), sans-IO.
//!
//! One message (records, CR separated) at a time: [`Sender::send`] queues it and sends
//! ENQ; each record is split into frames of at most `max_text` bytes (ETB for all but
//! the record's last frame, ETX for that one); EOT ends the transfer.
//!
//! Rules:
//! - ENQ reply timer `reply_timeout` (15 s); no reply → EOT, wait `busy_retry`, ENQ again.
//! - NAK to ENQ → wait `busy_retry` (10 s) before the next ENQ; at most `max_retries`
//!   ENQs per message, then [`Event::Failed`].
//! - Contention: ENQ received while waiting for the reply to our ENQ → the instrument
//!   wins: [`Event::Contention`] (the driver feeds that ENQ to its `Receiver`, which
//!   answers it) and the sender waits `contention_wait` (20 s) before its next ENQ.
//! - Each frame is sent at most `max_retries` times in total (NAK, or any reply other
//!   than ACK/EOT → resend the same frame, same FN); then EOT and [`Event::Failed`].
//!   No reply within `reply_timeout` → EOT and [`Event::Failed`] (LIS1-A termination).
//!   Reply bytes that arrive before the frame was handed out by `poll_transmit` are
//!   ignored (a stray ACK must never acknowledge a frame that was never sent).
//! - EOT as a frame reply is a receiver interrupt: it acknowledges the frame; if more
//!   frames remain the sender sends EOT and reports [`Event::Interrupted`] (the driver
//!   may send the message again later).
//!
//! Invariants: at most one message is held (`send` returns [`SendError::Busy`] otherwise);
//! the transmit buffer holds at most one frame (`max_text + 7` bytes).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::frame::{encode_frame, OVERHEAD};
use super::{ACK, CR, ENQ, EOT, NAK};
use crate::time::{Duration, Instant};

/// Sender timers and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Wait for each reply. Default 15 s.
    pub reply_timeout: Duration,
    /// Wait after NAK to ENQ (or no reply) before the next ENQ. Default 10 s.
    pub busy_retry: Duration,
    /// Wait after losing contention. Default 20 s.
    pub contention_wait: Duration,
    /// Attempts per frame (and ENQs per message) in total. Default 6.
    pub max_retries: u32,
    /// Text bytes per frame. Default 240.
    pub max_text: usize,
    /// Largest message accepted by `send`. Default 1 MiB.
    pub max_message: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            reply_timeout: Duration::from_secs(15),
            busy_retry: Duration::from_secs(10),
            contention_wait: Duration::from_secs(20),
            max_retries: 6,
            max_text: 240,
            max_message: 1024 * 1024,
        }
    }
}

/// Why `send` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// A message is already being sent.
    Busy,
    /// Empty or over `max_message`.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The instrument wants to send: feed its ENQ to the receiver.
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
    WaitEnqReply,
    WaitBeforeEnq,
    WaitFrameReply,
}

/// The sender session.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    state: State,
    /// (offset, len, last) of each frame's text in `msg`.
    frames: Vec<(usize, usize, bool)>,
    msg: Vec<u8>,
    next: usize,
    attempts: u32,
    frame_written: bool,
    enq_attempts: u32,
    deadline: Option<Instant>,
    tx: VecDeque<u8>,
    events: VecDeque<Event>,
}

impl Sender {
    /// An idle sender.
    pub fn new(cfg: SenderConfig) -> Self {
        Sender {
            cfg,
            state: State::Idle,
            frames: Vec::new(),
            msg: Vec::new(),
            next: 0,
            attempts: 0,
            frame_written: false,
            enq_attempts: 0,
            deadline: None,
            tx: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// True when no message is held.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Queue a message (records, each terminated by CR; a missing final CR is added)
    /// and start establishment.
    pub fn send(&mut self, records: &[u8], now: Instant) -> Result<(), SendError> {
        if self.state != State::Idle {
            return Err(SendError::Busy);
        }
        if records.is_empty() || records.len() > self.cfg.max_message {
            return Err(SendError::BadSize);
        }
        self.msg.clear();
        self.msg.extend_from_slice(records);
        if self.msg.last() != Some(&CR) {
            self.msg.push(CR);
        }
        self.frames.clear();
        let max = self.cfg.max_text.max(1);
        let mut start = 0;
        for (i, &b) in self.msg.iter().enumerate() {
            if b == CR {
                let end = i + 1;
                let mut o = start;
                while o < end {
                    let l = (end - o).min(max);
                    self.frames.push((o, l, o + l == end));
                    o += l;
                }
                start = end;
            }
        }
        self.next = 0;
        self.enq_attempts = 0;
        self.send_enq(now);
        Ok(())
    }

    fn send_enq(&mut self, now: Instant) {
        self.enq_attempts += 1;
        self.tx.push_back(ENQ);
        self.state = State::WaitEnqReply;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    fn send_frame(&mut self, now: Instant) {
        self.attempts += 1;
        self.frame_written = false;
        self.state = State::WaitFrameReply;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    fn finish(&mut self, ev: Event) {
        self.tx.push_back(EOT);
        self.state = State::Idle;
        self.deadline = None;
        self.msg.clear();
        self.frames.clear();
        self.events.push_back(ev);
    }

    fn retry_enq_later(&mut self, now: Instant, wait: Duration) {
        if self.enq_attempts >= self.cfg.max_retries {
            self.state = State::Idle;
            self.deadline = None;
            self.events
                .push_back(Event::Failed(Failure::NotEstablished));
            return;
        }
        self.state = State::WaitBeforeEnq;
        self.deadline = Some(now + wait);
    }

    /// Bytes from the wire.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            match (self.state, b) {
                (State::WaitEnqReply, ACK) => {
                    self.attempts = 0;
                    self.send_frame(now);
                }
                (State::WaitEnqReply, NAK) => self.retry_enq_later(now, self.cfg.busy_retry),
                (State::WaitEnqReply, ENQ) => {
                    self.events.push_back(Event::Contention);
                    // Contention does not count against the ENQ budget.
                    self.enq_attempts = self.enq_attempts.saturating_sub(1);
                    self.retry_enq_later(now, self.cfg.contention_wait);
                }
                // A reply before the frame went out is not about that frame.
                (State::WaitFrameReply, _) if !self.frame_written => {}
                (State::WaitFrameReply, ACK) => self.advance(now),
                (State::WaitFrameReply, EOT) => {
                    if self.next + 1 >= self.frames.len() {
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
        self.next += 1;
        self.attempts = 0;
        if self.next >= self.frames.len() {
            self.finish(Event::Delivered);
        } else {
            self.send_frame(now);
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
                self.tx.push_back(EOT);
                self.retry_enq_later(now, self.cfg.busy_retry);
            }
            State::WaitBeforeEnq => self.send_enq(now),
            State::WaitFrameReply => self.finish(Event::Failed(Failure::NoReply)),
            State::Idle => self.deadline = None,
        }
    }

    /// Bytes to write. A frame is written whole: `buf` must hold `max_text + 7` bytes,
    /// else `None` is returned and the frame stays queued.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if let Some(b) = self.tx.pop_front() {
            *buf.first_mut()? = b;
            return Some(1);
        }
        if self.state == State::WaitFrameReply && self.attempts > 0 && !self.frame_written {
            let &(o, l, last) = self.frames.get(self.next)?;
            let text = self.msg.get(o..o + l)?;
            let fn_digit = ((self.next + 1) % 8) as u8;
            let n = encode_frame(fn_digit, text, last, buf)?;
            self.frame_written = true;
            return Some(n);
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
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
    use alloc::vec;

    fn out(s: &mut Sender) -> Vec<u8> {
        let mut buf = vec![0u8; s.max_transmit()];
        let mut v = Vec::new();
        while let Some(n) = s.poll_transmit(&mut buf) {
            v.extend_from_slice(&buf[..n]);
        }
        v
    }

    #[test]
    fn splits_records_and_delivers() {
        let mut s = Sender::new(SenderConfig {
            max_text: 4,
            ..Default::default()
        });
        let t = Instant::ZERO;
        s.send(b"H|\\^&\rL|1", t).unwrap();
        assert_eq!(out(&mut s), [ENQ]);
        s.handle_input(&[ACK], t);
        assert_eq!(out(&mut s), b"\x021H|\\^\x17C6\r\n");
        s.handle_input(&[NAK], t);
        assert_eq!(out(&mut s), b"\x021H|\\^\x17C6\r\n");
        s.handle_input(&[ACK], t);
        assert_eq!(out(&mut s), b"\x022&\r\x0368\r\n");
        s.handle_input(&[ACK], t);
        assert_eq!(out(&mut s)[..2], [STX_T, b'3']);
        s.handle_input(&[ACK, ACK], t);
        assert_eq!(out(&mut s), [EOT]);
        assert_eq!(s.poll_event(), Some(Event::Delivered));
        assert!(s.is_idle());
    }
    const STX_T: u8 = 0x02;

    #[test]
    fn contention_busy_and_retries() {
        let cfg = SenderConfig::default();
        let mut s = Sender::new(cfg.clone());
        let t = Instant::ZERO;
        s.send(b"H|\\^&\r", t).unwrap();
        out(&mut s);
        s.handle_input(&[ENQ], t);
        assert_eq!(s.poll_event(), Some(Event::Contention));
        assert_eq!(s.poll_timeout(), Some(t + cfg.contention_wait));
        s.handle_timeout(t + cfg.contention_wait);
        assert_eq!(out(&mut s), [ENQ]);
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
        assert_eq!(out(&mut s), [EOT]);
        assert_eq!(s.poll_event(), Some(Event::Failed(Failure::FrameRetries)));
    }
}
