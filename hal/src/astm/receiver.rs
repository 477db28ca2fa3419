//! The receiving side of an E1381 link (instrument → host), sans-IO.
//!
//! # Durability: a commit per frame
//!
//! For each good, in-sequence, new frame the session asks for a commit
//! ([`Session::poll_commit`](crate::session::Session::poll_commit) through the
//! [`Link`](super::link::Link), or [`Receiver::poll_commit`]) whose pieces are exactly the
//! text this frame added, cut at message boundaries ([`super::split`]): "append to the open
//! message", "complete it", "start a new one". The text is borrowed from the frame decoder;
//! the session never holds the message so far. Only after `commit_done(true)` is the ACK
//! queued; after `commit_done(false)` the frame is answered NAK and not counted, and the
//! instrument sends it again.
//!
//! ## Invariants
//!
//! 1. No ACK (nor the EOT of a receiver interrupt, which counts as an ACK) is queued for a
//!    frame whose pieces were not confirmed by `commit_done(true)`. The only ACKs queued
//!    without a commit answer an ENQ (they cover no data) and a byte-identical copy of the
//!    last accepted frame (its bytes were committed before its first ACK).
//! 2. The bytes the instrument was told were received are exactly the committed pieces.
//! 3. At most one commit is outstanding; while it is, `handle_input` takes no bytes.
//! 4. Memory: the decoder's frame (≤ `max_frame`), the last accepted frame (≤ `max_frame`)
//!    the [`Splitter`] (a few counters and 128 bytes of H record) and, for a host query,
//!    twice [`QUERY_KEEP`](super::split::QUERY_KEEP) bytes of Q record text: bounded by the frame
//!    limit, not by the message. A frame that would take a message past `max_message` is
//!    NAKed ([`Reject::MessageTooLong`]): the instrument keeps the data.
//! 5. A message open at EOT (no L record) is closed by a commit with no text: complete as
//!    [`MessageEnd::Eot`] (a lenient receiver takes what came before EOT, H record or
//!    not). Nothing goes to the wire.
//! 6. When the receive timer fires or the line is lost, an open message is closed by a
//!    commit with no text ending it `Incomplete`: its committed pieces are durable already;
//!    the driver marks them incomplete instead of discarding them.
//!
//! # Call order
//!
//! `handle_input` / `handle_timeout` / `handle_line_lost` / `commit_done`, then
//! `poll_commit`, drain `poll_transmit` and `poll_event`, then sleep until `poll_timeout()`
//! or more input.

use super::frame::{Decoded, FrameDecoder};
use super::split::{walk_queries, QueryText, Scan, Splitter};
use super::{ACK, ENQ, EOT, NAK};
use crate::buf::{Buffer, Queue};
use crate::query::Specimens;
use crate::session::{Commit, End, Event, MessageEnd, Piece, Reject};
use crate::time::{Duration, Instant};

/// The pieces of one frame's commit.
pub type Pieces<'a> = Scan<'a>;

/// Receiver limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Largest frame accepted (FN + text bytes). Default 64 KiB.
    pub max_frame: usize,
    /// Largest message (record text, CR separated). Default 4 MiB.
    pub max_message: usize,
    /// Time to wait for the next frame or EOT. Default 30 s.
    pub receive_timeout: Duration,
    /// The Q-3 component a host query's specimen id is read from (1-based); `None`: the
    /// first non-empty one.
    pub query_id_component: Option<u32>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_frame: 64 * 1024,
            max_message: 4 * 1024 * 1024,
            receive_timeout: Duration::from_secs(30),
            query_id_component: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Neutral,
    Receiving,
}

/// Why an open message is closed without text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Eot,
    Abort,
}

// The frame variant is the common one (one per ASTM frame) and holds the splitter state;
// boxing it would need a heap, which the no-alloc build has not.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Pending {
    /// A frame; its FN and text are in the decoder.
    Frame {
        number: u8,
        etx: bool,
        after: Splitter,
        messages: u16,
        /// Specimens of host queries among the messages this frame completes.
        query: Option<Specimens>,
        /// The frame held Q record text: `next_query` holds the open message's after it.
        walked: bool,
    },
    /// An open message ends without more text.
    Close {
        why: Close,
        end: End,
        query: Option<Specimens>,
    },
}

/// The receiver session.
#[derive(Debug)]
pub struct Receiver<B> {
    cfg: ReceiverConfig,
    state: State,
    decoder: FrameDecoder<B>,
    /// FN + text of the last accepted frame.
    last: B,
    last_etx: bool,
    last_fn: u8,
    has_last: bool,
    split: Splitter,
    pending: Option<Pending>,
    /// Specimens of host queries received in this transmission (committed).
    query: Option<Specimens>,
    /// ... and of an ended transmission, until the link takes them (a next ENQ in the
    /// same read must not lose them).
    ready: Option<Specimens>,
    /// The open message's Q record text, as committed.
    query_text: QueryText,
    /// ... and as it will be once the pending frame is committed.
    next_query: QueryText,
    line_lost_deferred: bool,
    busy: bool,
    interrupt: bool,
    deadline: Option<Instant>,
    now: Instant,
    tx: Queue<u8, 8>,
    events: Queue<Event, 8>,
}

impl<B: Buffer> Receiver<B> {
    /// A neutral receiver.
    pub fn new(cfg: ReceiverConfig) -> Self {
        Receiver {
            decoder: FrameDecoder::new(cfg.max_frame),
            last: B::with_limit(cfg.max_frame.max(2)),
            cfg,
            state: State::Neutral,
            last_etx: false,
            last_fn: 0,
            has_last: false,
            split: Splitter::default(),
            pending: None,
            query: None,
            ready: None,
            query_text: QueryText::default(),
            next_query: QueryText::default(),
            line_lost_deferred: false,
            busy: false,
            interrupt: false,
            deadline: None,
            now: Instant::ZERO,
            tx: Queue::new(),
            events: Queue::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ReceiverConfig {
        &self.cfg
    }

    /// The frame limit in force (the configured one, or the buffer's capacity if smaller).
    pub fn max_frame(&self) -> usize {
        self.decoder.max_frame()
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

    /// True while a commit is unanswered.
    pub fn commit_outstanding(&self) -> bool {
        self.pending.is_some()
    }

    /// Bytes of the open (partly committed) message.
    pub fn open_len(&self) -> usize {
        self.split.open_len()
    }

    /// The specimens of the host queries of a transmission that has ended (committed
    /// messages with Q records), once.
    pub fn take_query(&mut self) -> Option<Specimens> {
        self.ready.take()
    }

    fn begin(&mut self, now: Instant) {
        self.state = State::Receiving;
        self.query = None;
        self.query_text.clear();
        self.decoder.reset();
        self.last.clear();
        self.has_last = false;
        self.last_fn = 0;
        self.last_etx = false;
        self.deadline = Some(now + self.cfg.receive_timeout);
    }

    fn event(&mut self, e: Event) {
        // `handle_input` stops while fewer than 3 slots are free, and no step queues more.
        let _ = self.events.push(e);
    }

    fn reply(&mut self, b: u8) {
        let _ = self.tx.push(b);
    }

    /// Bytes from the wire; returns how many were taken (see the module doc).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> usize {
        self.now = now;
        let mut used = 0;
        while let Some(&b) = bytes.get(used) {
            if self.pending.is_some() || self.events.room() < 3 || self.tx.room() < 2 {
                break;
            }
            used += 1;
            self.byte(b);
            if self.decoder.take_replay().is_some() {
                // The byte ended a frame that had no trailer: offer it again.
                used -= 1;
            }
        }
        used
    }

    fn byte(&mut self, b: u8) {
        match self.state {
            State::Neutral => {
                if b == ENQ {
                    self.enq();
                }
            }
            State::Receiving => {
                let quiet = self.nothing_received();
                let frame = match self.decoder.push(b) {
                    Decoded::Nothing => return,
                    Decoded::Outside(EOT) => return self.on_eot(),
                    Decoded::Outside(ENQ) if quiet => {
                        // Our ACK to its ENQ did not arrive (or, after contention, the
                        // instrument waited and asks again): answer again.
                        return self.enq();
                    }
                    Decoded::Outside(_) => return,
                    Decoded::Bad(e) => return self.reject(Reject::Frame(e)),
                    Decoded::Frame(f) => (f.number, f.last),
                };
                self.on_frame(frame.0, frame.1);
            }
        }
    }

    fn nothing_received(&self) -> bool {
        !self.has_last && !self.split.is_open() && !self.decoder.in_frame()
    }

    fn enq(&mut self) {
        if self.busy {
            self.reply(NAK);
            self.event(Event::RefusedBusy);
        } else {
            self.reply(ACK);
            self.begin(self.now);
            self.event(Event::TransmissionStarted);
        }
    }

    fn reject(&mut self, r: Reject) {
        self.reply(NAK);
        self.event(Event::FrameRejected(r));
        self.deadline = Some(self.now + self.cfg.receive_timeout);
    }

    fn on_frame(&mut self, number: u8, etx: bool) {
        self.deadline = Some(self.now + self.cfg.receive_timeout);
        let frame = self.decoder.last_frame();
        if self.has_last
            && number == self.last_fn
            && etx == self.last_etx
            && frame == self.last.as_slice()
        {
            self.reply(ACK);
            self.event(Event::DuplicateFrame);
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
        let mut scan = Scan::new(text, etx, self.split.clone(), self.cfg.max_message);
        let mut messages = 0u16;
        for p in scan.by_ref() {
            if matches!(p.end, Some(End::Complete(_))) {
                messages = messages.saturating_add(1);
            }
        }
        if scan.too_long() {
            self.reject(Reject::MessageTooLong);
            return;
        }
        let mut after = scan.state().clone();
        // Only a frame with Q record text in it is walked again for its queries.
        let walked = after.q_started() || !self.query_text.is_empty();
        after.clear_q_started();
        let query = if walked {
            let component = self.cfg.query_id_component;
            let mut found: Option<Specimens> = None;
            self.next_query.clone_from(&self.query_text);
            walk_queries(text, etx, &self.split, &mut self.next_query, |end, s, q| {
                if matches!(end, End::Complete(_)) {
                    found
                        .get_or_insert_with(Specimens::default)
                        .extend(&q.specimens(s.delimiters, component));
                }
            });
            found
        } else {
            None
        };
        self.pending = Some(Pending::Frame {
            number,
            etx,
            after,
            messages,
            query,
            walked,
        });
        self.deadline = None;
    }

    fn on_eot(&mut self) {
        match self.split.close() {
            Some((_, summary)) => {
                // Lenient: whatever the instrument sent before EOT is its message.
                let end = End::Complete(MessageEnd::Eot);
                let query = (summary.queries > 0 && !self.query_text.is_empty()).then(|| {
                    self.query_text
                        .specimens(summary.delimiters, self.cfg.query_id_component)
                });
                self.query_text.clear();
                self.pending = Some(Pending::Close {
                    why: Close::Eot,
                    end,
                    query,
                });
                self.deadline = None;
            }
            None => self.end_transmission(),
        }
    }

    fn end_transmission(&mut self) {
        if let Some(q) = self.query.take() {
            match &mut self.ready {
                // Not taken yet (the link still answers an earlier query): one answer.
                Some(r) => r.extend(&q),
                None => self.ready = Some(q),
            }
        }
        self.state = State::Neutral;
        self.deadline = None;
        self.interrupt = false;
        self.decoder.reset();
        self.event(Event::TransmissionEnded);
    }

    /// What the driver must make durable now, if anything.
    pub fn poll_commit(&self) -> Option<Commit<'_>> {
        match self.pending.as_ref()? {
            Pending::Frame { etx, .. } => {
                let text = self.decoder.last_frame().get(1..).unwrap_or(&[]);
                Some(Commit::Frame(Scan::new(
                    text,
                    *etx,
                    self.split.clone(),
                    self.cfg.max_message,
                )))
            }
            Pending::Close { end, .. } => Some(Commit::One(Some(Piece {
                text: &[],
                cr: false,
                begins: false,
                end: Some(end.clone()),
            }))),
        }
    }

    /// The answer to the outstanding commit.
    pub fn commit_done(&mut self, ok: bool, now: Instant) {
        self.now = now;
        let Some(p) = self.pending.take() else { return };
        match p {
            Pending::Frame {
                number,
                etx,
                after,
                messages,
                query,
                walked,
            } if ok => {
                self.split = after;
                if walked {
                    core::mem::swap(&mut self.query_text, &mut self.next_query);
                }
                if let Some(q) = query {
                    self.query.get_or_insert_with(Specimens::default).extend(&q);
                }
                let frame = self.decoder.last_frame();
                // Same limit as the decoder's buffer: it fits.
                let _ = self.last.try_set(frame);
                self.has_last = true;
                self.last_fn = number;
                self.last_etx = etx;
                if self.interrupt {
                    self.reply(EOT);
                    self.interrupt = false;
                } else {
                    self.reply(ACK);
                }
                self.event(Event::Accepted { messages });
                self.deadline = Some(now + self.cfg.receive_timeout);
            }
            Pending::Frame { .. } => {
                self.event(Event::Refused);
                self.reject(Reject::CommitFailed);
            }
            Pending::Close {
                why, end, query, ..
            } => {
                if why == Close::Eot {
                    if !ok {
                        self.event(Event::Refused);
                    } else if matches!(end, End::Complete(_)) {
                        self.event(Event::Accepted { messages: 1 });
                        if let Some(q) = query {
                            self.query.get_or_insert_with(Specimens::default).extend(&q);
                        }
                    }
                    self.end_transmission();
                }
            }
        }
        if self.line_lost_deferred {
            self.line_lost_deferred = false;
            self.handle_line_lost(now);
        }
    }

    /// The driver lost the line (serial closed, TCP reset): an open message is closed as
    /// incomplete, back to neutral. With a commit outstanding this takes effect when the
    /// commit is answered.
    pub fn handle_line_lost(&mut self, now: Instant) {
        self.now = now;
        if self.pending.is_some() {
            self.line_lost_deferred = true;
            return;
        }
        self.abort(MessageEnd::LineLost);
    }

    fn abort(&mut self, why: MessageEnd) {
        if self.split.close().is_some() {
            self.pending = Some(Pending::Close {
                why: Close::Abort,
                end: End::Incomplete(why),
                query: None,
            });
        }
        self.query_text.clear();
        // A query cut off by the line or the timer is not answered.
        self.query = None;
        self.state = State::Neutral;
        self.deadline = None;
        self.interrupt = false;
        self.decoder.reset();
    }

    /// Call when `poll_timeout()` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if let Some(d) = self.deadline {
            if now >= d && self.pending.is_none() {
                self.abort(MessageEnd::Timeout);
                self.event(Event::TimedOut);
            }
        }
    }

    /// Bytes to write; returns how many were written into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.tx.pop() {
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
        self.events.pop()
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::astm::frame::encode_frame;
    use crate::astm::STX;

    type R = Receiver<heapless::Vec<u8, 256>>;
    type V = heapless::Vec<u8, 512>;

    fn frame(n: u8, text: &[u8], last: bool) -> V {
        let mut b = [0u8; 300];
        let l = encode_frame(n, text, last, &mut b).unwrap();
        V::from_slice(&b[..l]).unwrap()
    }

    /// Feeds `bytes`; a frame's trailing LF waits while its commit is outstanding, and is
    /// fed (swallowed) after the commit is answered: `answer` does that.
    fn feed(r: &mut R, bytes: &[u8], t: Instant) {
        let n = r.handle_input(bytes, t);
        let rest = &bytes[n..];
        assert!(rest.is_empty() || rest == b"\n", "left {rest:?}");
        if !rest.is_empty() {
            assert!(r.commit_outstanding());
        }
    }

    fn answer(r: &mut R, ok: bool, t: Instant) {
        r.commit_done(ok, t);
        assert_eq!(r.handle_input(b"\n", t), 1);
    }

    /// What the receiver wrote; its events are drained (and dropped) too.
    fn tx(r: &mut R) -> V {
        while r.poll_event().is_some() {}
        let mut v = V::new();
        let mut buf = [0u8; 8];
        while let Some(n) = r.poll_transmit(&mut buf) {
            v.extend_from_slice(&buf[..n]).unwrap();
        }
        v
    }

    /// The commit's pieces, as (text with CR, begins, end).
    fn commit(r: &R) -> heapless::Vec<(V, bool, Option<End>), 8> {
        let mut out = heapless::Vec::new();
        for p in r.poll_commit().expect("a commit") {
            let mut t = V::from_slice(p.text).unwrap();
            if p.cr {
                t.push(b'\r').unwrap();
            }
            out.push((t, p.begins, p.end)).unwrap();
        }
        out
    }

    #[test]
    fn no_ack_before_commit_and_pieces_are_the_new_text_only() {
        let mut r = R::new(ReceiverConfig::default());
        let t = Instant::ZERO;
        feed(&mut r, &[ENQ], t);
        assert_eq!(&tx(&mut r)[..], [ACK]);
        feed(&mut r, &frame(1, b"H|\\^&\rP|1\r", false), t);
        assert!(tx(&mut r).is_empty());
        let c = commit(&r);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (&c[0].0[..], c[0].1, &c[0].2),
            (&b"H|\\^&\rP|1\r"[..], true, &None)
        );
        answer(&mut r, true, t);
        assert_eq!(&tx(&mut r)[..], [ACK]);
        let f2 = frame(2, b"L|1\r", true);
        feed(&mut r, &f2, t);
        answer(&mut r, false, t);
        assert_eq!(&tx(&mut r)[..], [NAK]);
        feed(&mut r, &f2, t);
        let c = commit(&r);
        assert_eq!(&c[0].0[..], b"L|1\r", "only what this frame adds");
        assert!(!c[0].1);
        assert_eq!(c[0].2, Some(End::Complete(MessageEnd::Terminator)));
        answer(&mut r, true, t);
        assert_eq!(&tx(&mut r)[..], [ACK]);
        // A copy of the last frame: ACKed, no commit.
        feed(&mut r, &f2, t);
        assert!(r.poll_commit().is_none());
        assert_eq!(&tx(&mut r)[..], [ACK]);
        feed(&mut r, &[EOT], t);
        assert!(r.poll_commit().is_none());
        assert!(!r.is_receiving());
    }

    #[test]
    fn input_waits_while_a_commit_is_outstanding() {
        let mut r = R::new(ReceiverConfig::default());
        let t = Instant::ZERO;
        feed(&mut r, &[ENQ], t);
        let mut wire = V::new();
        wire.extend_from_slice(&frame(1, b"H|\\^&\r", false))
            .unwrap();
        let first = wire.len();
        wire.extend_from_slice(&frame(2, b"L\r", true)).unwrap();
        // The LF of the first frame's trailer is swallowed after the commit.
        let used = r.handle_input(&wire, t);
        assert_eq!(used, first - 1);
        assert_eq!(r.handle_input(&wire[used..], t), 0);
        r.commit_done(true, t);
        let used2 = r.handle_input(&wire[used..], t);
        assert_eq!(used + used2, wire.len() - 1);
        assert!(r.poll_commit().is_some());
    }

    #[test]
    fn timeout_closes_the_open_message_as_incomplete() {
        let mut r = R::new(ReceiverConfig::default());
        feed(&mut r, &[ENQ], Instant::ZERO);
        feed(&mut r, &frame(1, b"H|\\^&\r", true), Instant::ZERO);
        answer(&mut r, true, Instant::ZERO);
        tx(&mut r);
        let d = r.poll_timeout().unwrap();
        r.handle_timeout(d);
        let c = commit(&r);
        assert_eq!(c.len(), 1);
        assert!(c[0].0.is_empty());
        assert_eq!(c[0].2, Some(End::Incomplete(MessageEnd::Timeout)));
        r.commit_done(true, d);
        assert!(!r.is_receiving());
        assert_eq!(r.handle_input(&[STX], d), 1);
        assert!(r.poll_commit().is_none());
    }

    #[test]
    fn eot_without_l_completes_and_frames_beyond_the_buffer_are_nak() {
        let mut r = R::new(ReceiverConfig::default());
        assert_eq!(r.max_frame(), 256, "clamped to the buffer's capacity");
        let t = Instant::ZERO;
        feed(&mut r, &[ENQ], t);
        tx(&mut r);
        feed(&mut r, &frame(1, &[b'x'; 280], true), t);
        assert_eq!(
            r.poll_event(),
            Some(Event::FrameRejected(Reject::Frame(
                crate::astm::frame::FrameError::TooLong
            )))
        );
        assert_eq!(&tx(&mut r)[..], [NAK]);
        feed(&mut r, &frame(1, b"H|\\^&\rR|1\r", true), t);
        answer(&mut r, true, t);
        feed(&mut r, &[EOT], t);
        let c = commit(&r);
        assert_eq!(c[0].2, Some(End::Complete(MessageEnd::Eot)));
        r.commit_done(true, t);
        let mut ended = false;
        while let Some(e) = r.poll_event() {
            ended |= e == Event::TransmissionEnded;
        }
        assert!(ended && !r.is_receiving());
    }
}
