//! The HL7 v2 / MLLP link of a host, sans-IO: framing, the commit before every ACK, the
//! ACK itself, and orders sent to the instrument with their ACK awaited.
//!
//! # Per message
//!
//! 1. The framer delivers a block (`VT … FS CR`, any read boundaries, several per read).
//! 2. [`MshView::new_checked`] reads MSH-1/MSH-2 (never assumes `|^~\&`) and the fields
//!    the ACK needs. The block becomes a commit of one piece: a whole message, or bytes
//!    that are not HL7 ([`End::Rejected`], to be kept for inspection, never uploaded).
//! 3. Only after the commit is answered is the accept ACK queued ([`ack::decide_ack`]):
//!    the message decides the mode (MSH-15/16), the channel's [`AckMode`] only when both
//!    are empty.
//!
//!    | | original | enhanced |
//!    |---|---|---|
//!    | committed | AA | CA |
//!    | commit failed (quota, disk) | AR | CE |
//!    | not HL7, or over `max_message` | AE | CR |
//!
//!    MSH-15 `NE` (or `ER` on success, `SU` on failure) means no ACK at all. Application
//!    ACKs are never invented here.
//!
//! # Orders
//!
//! [`Session::send_order`] frames one HL7 message (line ends LF / CR LF become CR) and
//! waits up to `ack_timeout` for a block whose MSA-2 is the order's MSH-10: AA/CA →
//! delivered; AR/CE → retried; AE/CR → failed; no answer or line lost → retried; after
//! `max_attempts` attempts an order is failed. Messages the instrument sends meanwhile are
//! committed and acknowledged as usual; its answer to the order is neither committed nor
//! acknowledged (an ACK is never ACKed).
//!
//! # Host queries
//!
//! A QRY^Q02 or QBP^Q11 ([`crate::query::hl7_query`]) is committed like any message; then,
//! instead of the plain ACK, the session raises [`Event::Query`] and waits for
//! [`Session::answer_query`] until `query_timeout`: the upstream's messages as they are
//! (one or more, each starting with MSH, sent in order — Mindray answers QRY^Q02 with
//! QCK^Q02 then DSR^Q03), or, with `None` or at the deadline, QCK^Q02 / RSP^K11 with
//! QAK-2 `NF` and MSA-2 echoing the query's MSH-10 — whatever MSH-15/16 say. Input waits
//! while a query is unanswered, so answers and ACKs go out in the order the messages came.
//! The instrument's ACKs of the answer's messages are neither committed nor acknowledged.
//!
//! # Time
//!
//! The ACK's MSH-7 is wall-clock time, which the driver supplies with
//! [`Hl7Session::set_wall_clock`] (Unix seconds; without it MSH-7 is left empty, as a board
//! without a clock would). Its MSH-10 is the session's `id_prefix` plus a counter.

use super::ack::{self, AckError, AckMode, AckParams, Outcome};
use super::mllp::{self, MllpEvent, MllpFramer};
use super::msh::{MshError, MshView};
use crate::buf::{Bounded, Buffer, Queue, Sink};
use crate::query::{hl7_query, Hl7Query, Specimens};
use crate::session::{
    Commit, End, Event, MessageEnd, OrderFailure, OrderOutcome, OrderPolicy, OrderRef, Piece,
    Session,
};
use crate::time::{Duration, Instant};

/// Longest MSH-10 of an order that can be matched to its ACK.
pub const MAX_CONTROL_ID: usize = 64;
/// Longest ACK MSH-10 prefix.
pub const MAX_ID_PREFIX: usize = 12;

/// HL7 link settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Config {
    /// Largest message (and order) in bytes.
    pub max_message: usize,
    /// ACK mode for messages with MSH-15 and MSH-16 empty.
    pub mode: AckMode,
    /// Order attempts and the wait after a failed one.
    pub orders: OrderPolicy,
    /// How long the instrument has to acknowledge an order. Default 30 s.
    pub ack_timeout: Duration,
    /// How long after a host query its answer may wait for the driver. Default 5 s.
    pub query_timeout: Duration,
}

impl Default for Hl7Config {
    fn default() -> Self {
        Hl7Config {
            max_message: mllp::DEFAULT_MAX_MESSAGE,
            mode: AckMode::Original,
            orders: OrderPolicy::default(),
            ack_timeout: Duration::from_secs(30),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// Bytes of a query kept to answer it (its MSH, QRD and QPD segments).
pub const QUERY_HEAD: usize = 1024;

/// A host query waiting for its answer.
#[derive(Debug)]
struct Query {
    kind: Hl7Query,
    ids: Specimens,
    deadline: Instant,
    /// The query's MSH, QRD and QPD segments, CR-terminated.
    head: heapless::Vec<u8, QUERY_HEAD>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A parsed message, in the framer's buffer.
    Message,
    /// A host query, in the framer's buffer.
    Query,
    /// Bytes that are not HL7, in the framer's buffer.
    NotHl7(&'static str),
}

#[derive(Debug)]
struct InFlight {
    order: OrderRef,
    control_id: heapless::Vec<u8, MAX_CONTROL_ID>,
    deadline: Instant,
}

/// The HL7 session.
#[derive(Debug)]
pub struct Hl7Session<B> {
    cfg: Hl7Config,
    framer: MllpFramer<B>,
    pending: Option<Pending>,
    /// Bytes to write (an ACK or an order, MLLP framed) and how many are written.
    tx: B,
    tx_sent: usize,
    id_prefix: heapless::Vec<u8, MAX_ID_PREFIX>,
    next_id: u32,
    wall: Option<i64>,
    order: Option<InFlight>,
    orders_waiting: bool,
    not_before: Option<Instant>,
    stopping: bool,
    query: Option<Query>,
    /// MSH-10 of the answer messages sent: the instrument's ACKs of them are absorbed.
    answered: heapless::Vec<heapless::Vec<u8, MAX_CONTROL_ID>, 8>,
    events: Queue<Event, 4>,
}

/// Why bytes are not HL7, as kept with them.
pub fn not_hl7_reason(e: MshError) -> &'static str {
    match e {
        MshError::NotHl7 => "not an HL7 message",
        MshError::TooShort => "MSH segment too short",
        MshError::BadFieldSeparator => "invalid MSH-1",
        MshError::BadEncodingCharacters => "invalid MSH-2",
    }
}

/// If `msg` is an ACK for `control_id` (a block with an MSA segment whose MSA-2 is that
/// id), its MSA-1 code, upper-cased.
pub fn ack_code_for(msg: &[u8], control_id: &[u8]) -> Option<[u8; 2]> {
    let v = MshView::new_checked(msg).ok()?;
    let f = v.delimiters().field;
    v.segments().find_map(|seg| {
        let mut parts = seg.split(|b| *b == f);
        if parts.next()? != b"MSA" {
            return None;
        }
        let code = parts.next().unwrap_or(b"");
        if parts.next().unwrap_or(b"") != control_id {
            return None;
        }
        let code = trim(code);
        match code {
            [a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
            _ => Some(*b"??"),
        }
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e]
}

impl<B: Buffer> Hl7Session<B> {
    /// A session; `id_prefix` (at most [`MAX_ID_PREFIX`] bytes) starts every ACK's MSH-10
    /// (make it unique per connection and process start).
    pub fn new(cfg: Hl7Config, id_prefix: &[u8]) -> Self {
        let prefix = &id_prefix[..id_prefix.len().min(MAX_ID_PREFIX)];
        Hl7Session {
            framer: MllpFramer::new(cfg.max_message),
            tx: B::with_limit(cfg.max_message.saturating_add(mllp::TOO_LARGE_HEAD)),
            cfg,
            pending: None,
            tx_sent: 0,
            id_prefix: heapless::Vec::from_slice(prefix).unwrap_or_default(),
            next_id: 0,
            wall: None,
            order: None,
            orders_waiting: false,
            not_before: None,
            stopping: false,
            query: None,
            answered: heapless::Vec::new(),
            events: Queue::new(),
        }
    }

    fn next_id(&mut self) -> heapless::Vec<u8, 24> {
        let mut id = heapless::Vec::<u8, 24>::new();
        let _ = id.extend_from_slice(&self.id_prefix);
        let _ = push_decimal(&mut id, self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// A query was committed: keep what its answer needs and ask the driver.
    fn begin_query(&mut self, now: Instant) {
        let Some(MllpEvent::Message(m)) = self.framer.poll_event() else {
            return;
        };
        let Ok(v) = MshView::new_checked(m) else {
            return;
        };
        let Some((kind, ids)) = hl7_query(&v) else {
            return;
        };
        let f = v.delimiters().field;
        let mut head = heapless::Vec::new();
        for seg in v.segments() {
            let id = seg.split(|&b| b == f).next().unwrap_or(&[]);
            if matches!(id, b"MSH" | b"QRD" | b"QPD") && head.extend_from_slice(seg).is_ok() {
                let _ = head.push(b'\r');
            }
        }
        self.query = Some(Query {
            kind,
            ids,
            deadline: now + self.cfg.query_timeout,
            head,
        });
        let _ = self.events.push(Event::Query);
    }

    /// Queues the "nothing known" answer to the waiting query (QCK^Q02 / RSP^K11, QAK-2 NF).
    fn answer_nothing(&mut self) {
        let Some(q) = self.query.take() else { return };
        let Ok(v) = MshView::new_checked(&q.head) else {
            return;
        };
        let d = v.delimiters();
        let f = d.field;
        let (ty, tag_seg, tag_field): (&[u8], &[u8], usize) = match q.kind {
            Hl7Query::Qry02 => (b"QCK^Q02", b"QRD", 4),
            Hl7Query::Qbp11 => (b"RSP^K11^RSP_K11", b"QPD", 2),
        };
        let mut ty_v = heapless::Vec::<u8, 24>::new();
        for &b in ty {
            let _ = ty_v.push(if b == b'^' { d.component } else { b });
        }
        let mut tag: &[u8] = &[];
        let mut qpd: &[u8] = &[];
        for seg in v.segments() {
            let mut fields = seg.split(|&b| b == f);
            let name = fields.next().unwrap_or(&[]);
            if name == tag_seg {
                tag = fields.nth(tag_field - 1).unwrap_or(&[]);
            }
            if name == b"QPD" {
                qpd = seg;
            }
        }
        let id = self.next_id();
        let ts = self.wall.map(crate::time::hl7_timestamp);
        let p = AckParams {
            timestamp: ts.as_ref().map_or(&[][..], |t| &t[..]),
            control_id: &id,
            text: None,
            error: None,
        };
        self.tx.clear();
        self.tx_sent = 0;
        let mut out = Bounded::new(&mut self.tx);
        out.put(mllp::VT);
        ack::write_reply_msh(&v, &ty_v, &p, &mut out);
        out.put_all(b"MSA");
        out.put(f);
        out.put_all(b"AA");
        out.put(f);
        out.put_all(v.control_id());
        out.put(b'\r');
        out.put_all(b"QAK");
        out.put(f);
        out.put_all(tag);
        out.put(f);
        out.put_all(b"NF");
        out.put(b'\r');
        if q.kind == Hl7Query::Qbp11 && !qpd.is_empty() {
            out.put_all(qpd);
            out.put(b'\r');
        }
        out.put_all(&[mllp::FS, mllp::CR]);
        if out.finish().is_err() {
            self.tx.clear();
        }
        let _ = self.events.push(Event::QueryAnswered { delivered: true });
    }

    /// The wall clock, in Unix seconds, for the MSH-7 of the next ACKs.
    pub fn set_wall_clock(&mut self, unix_secs: i64) {
        self.wall = Some(unix_secs);
    }

    /// The framer's counters.
    pub fn stats(&self) -> mllp::MllpStats {
        self.framer.stats()
    }

    /// The order waiting for its ACK, if any.
    pub fn order_in_flight(&self) -> Option<OrderRef> {
        self.order.as_ref().map(|f| f.order)
    }

    fn tx_empty(&self) -> bool {
        self.tx_sent >= self.tx.len()
    }

    /// Queue the framed ACK for the framer's block (a message or its first bytes) in `tx`.
    fn queue_ack(&mut self, outcome: Outcome, text: Option<&[u8]>, error: Option<AckError<'_>>) {
        let head = match self.framer.poll_event() {
            Some(MllpEvent::Message(m)) => m,
            Some(MllpEvent::TooLarge { head, .. }) => head,
            _ => &[],
        };
        let view = MshView::new_checked(head).ok();
        let Some(code) = ack::decide_ack(view.as_ref(), self.cfg.mode, outcome) else {
            return;
        };
        let mut id = heapless::Vec::<u8, 24>::new();
        let _ = id.extend_from_slice(&self.id_prefix);
        let _ = push_decimal(&mut id, self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let ts = self.wall.map(crate::time::hl7_timestamp);
        let p = AckParams {
            timestamp: ts.as_ref().map_or(&[][..], |t| &t[..]),
            control_id: &id,
            text,
            error,
        };
        self.tx.clear();
        self.tx_sent = 0;
        let mut out = Bounded::new(&mut self.tx);
        out.put(mllp::VT);
        match &view {
            Some(v) => ack::build_ack_into(v, code, &p, &mut out),
            None => ack::build_minimal_ack_into(code, &p, &mut out),
        }
        out.put_all(&[mllp::FS, mllp::CR]);
        if out.finish().is_err() {
            // An ACK longer than max_message + 1 KiB (absurd MSH fields): send none rather
            // than a truncated one; the sender will resend.
            self.tx.clear();
        }
    }

    fn order_failed(&mut self, why: OrderFailure, now: Instant) {
        if let Some(f) = self.order.take() {
            self.not_before = Some(now + self.cfg.orders.retry_wait);
            let outcome = self.cfg.orders.after_failure(f.order, why);
            let _ = self.events.push(Event::Order(f.order, outcome));
        }
    }

    /// Acts on the framer's event: an order's ACK, a message to commit, or a block dropped.
    fn on_block(&mut self, now: Instant) {
        let Some(ev) = self.framer.poll_event() else {
            return;
        };
        match ev {
            MllpEvent::Message(m) => {
                if self.answered.iter().any(|id| ack_code_for(m, id).is_some()) {
                    // The instrument's ACK of our answer to its query (Mindray ACKs the
                    // DSR): not a message to store or acknowledge.
                    self.framer.release();
                    return;
                }
                let answer = self
                    .order
                    .as_ref()
                    .and_then(|f| ack_code_for(m, &f.control_id));
                if let Some(code) = answer {
                    let f = self.order.take().expect("matched above");
                    let outcome = match &code {
                        b"AA" | b"CA" => OrderOutcome::Delivered,
                        b"AR" | b"CE" => {
                            self.not_before = Some(now + self.cfg.orders.retry_wait);
                            self.cfg
                                .orders
                                .after_failure(f.order, OrderFailure::Refused(code))
                        }
                        _ => OrderOutcome::Failed(OrderFailure::Rejected(code)),
                    };
                    let _ = self.events.push(Event::Order(f.order, outcome));
                    self.framer.release();
                    return;
                }
                self.pending = Some(match MshView::new_checked(m) {
                    Ok(v) if hl7_query(&v).is_some() => Pending::Query,
                    Ok(_) => Pending::Message,
                    Err(e) => Pending::NotHl7(not_hl7_reason(e)),
                });
            }
            MllpEvent::TooLarge { len, .. } => {
                let _ = self.events.push(Event::TooLarge { len });
                self.queue_ack(
                    Outcome::Unparseable,
                    Some(b"message too large"),
                    Some(AckError {
                        code: 207,
                        text: b"Message too large",
                    }),
                );
                self.framer.release();
            }
            MllpEvent::Interrupted { discarded } => {
                let _ = self.events.push(Event::Interrupted { discarded });
                self.framer.release();
            }
        }
    }
}

fn push_decimal<const N: usize>(out: &mut heapless::Vec<u8, N>, mut v: u32) -> Result<(), ()> {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]).map_err(|_| ())
}

impl<B: Buffer> Session for Hl7Session<B> {
    fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while used < input.len() {
            // A query is answered before the next message is read: answers go out in the
            // order the messages came.
            if self.query.is_some() && self.pending.is_none() {
                used += self.framer.take_trailer(&input[used..]);
            }
            if self.pending.is_some()
                || self.query.is_some()
                || !self.tx_empty()
                || self.events.room() < 2
            {
                break;
            }
            used += self.framer.push(&input[used..]);
            self.on_block(now);
        }
        used
    }

    fn poll_commit(&self) -> Option<Commit<'_>> {
        let p = self.pending?;
        let Some(MllpEvent::Message(m)) = self.framer.poll_event() else {
            return None;
        };
        Some(Commit::One(Some(Piece {
            text: m,
            cr: false,
            begins: true,
            end: Some(match p {
                Pending::Message | Pending::Query => End::Complete(MessageEnd::Terminator),
                Pending::NotHl7(why) => End::Rejected(why),
            }),
        })))
    }

    fn commit_done(&mut self, ok: bool, now: Instant) {
        let Some(p) = self.pending.take() else { return };
        match p {
            Pending::Query if ok => {
                let _ = self.events.push(Event::Accepted { messages: 1 });
                // A query still unanswered gets "nothing" now: the new one replaces it.
                self.answer_nothing();
                self.begin_query(now);
            }
            Pending::Message if ok => {
                let _ = self.events.push(Event::Accepted { messages: 1 });
                self.queue_ack(Outcome::Accepted, None, None);
            }
            Pending::Message | Pending::Query => {
                let _ = self.events.push(Event::Refused);
                self.queue_ack(
                    Outcome::StoreRefused,
                    Some(b"message not stored, send it again later"),
                    Some(AckError::STORE_REFUSED),
                );
            }
            Pending::NotHl7(why) => {
                if !ok {
                    let _ = self.events.push(Event::Refused);
                }
                self.queue_ack(
                    Outcome::Unparseable,
                    Some(why.as_bytes()),
                    Some(AckError::UNPARSEABLE),
                );
            }
        }
        self.framer.release();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.order.as_ref().is_some_and(|f| now >= f.deadline) {
            self.order_failed(OrderFailure::NoAck, now);
        }
        if self.query.as_ref().is_some_and(|q| now >= q.deadline) && self.tx_empty() {
            self.answer_nothing();
        }
    }

    fn handle_line_lost(&mut self, now: Instant) {
        let dropped = self.framer.reset();
        if dropped > 0 {
            let _ = self.events.push(Event::Unfinished { discarded: dropped });
        }
        self.order_failed(OrderFailure::LineLost, now);
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let rest = self.tx.as_slice().get(self.tx_sent..)?;
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.tx_sent += n;
        if self.tx_empty() {
            self.tx.clear();
            self.tx_sent = 0;
        }
        Some(n)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let order_wait = self
            .not_before
            .filter(|_| self.orders_waiting && self.order.is_none() && !self.stopping);
        [
            self.order.as_ref().map(|f| f.deadline),
            order_wait,
            self.query.as_ref().map(|q| q.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn max_transmit(&self) -> usize {
        4096
    }

    fn set_stopping(&mut self, stopping: bool) {
        self.stopping = stopping;
    }

    fn is_quiet(&self) -> bool {
        !self.framer.in_block()
            && self.pending.is_none()
            && self.order.is_none()
            && self.query.is_none()
            && self.tx_empty()
    }

    fn orders_waiting(&mut self, waiting: bool) {
        self.orders_waiting = waiting;
    }

    fn order_wanted(&self, now: Instant) -> bool {
        self.orders_waiting
            && !self.stopping
            && self.is_quiet()
            && self.not_before.map_or(true, |t| now >= t)
    }

    fn query(&self) -> Option<&Specimens> {
        self.query.as_ref().map(|q| &q.ids)
    }

    fn answer_query(&mut self, answer: Option<&[u8]>, _now: Instant) -> Result<(), OrderFailure> {
        if self.query.is_none() || !self.tx_empty() {
            return Err(OrderFailure::Unsupported);
        }
        let Some(text) = answer else {
            self.answer_nothing();
            return Ok(());
        };
        // Each message of the answer in its own block, in order; a message that is not
        // HL7 (or does not fit) makes the whole answer "nothing known".
        self.tx.clear();
        self.tx_sent = 0;
        self.answered.clear();
        let mut ok = true;
        let mut open = false;
        for seg in text.split(|&b| b == b'\r' || b == b'\n') {
            if seg.is_empty() {
                continue;
            }
            if seg.starts_with(b"MSH") {
                if open {
                    ok &= self.tx.try_extend(&[mllp::FS, mllp::CR]).is_ok();
                }
                ok &= self.tx.try_push(mllp::VT).is_ok();
                open = true;
            }
            ok &= open && self.tx.try_extend(seg).is_ok() && self.tx.try_push(b'\r').is_ok();
        }
        ok &= open && self.tx.try_extend(&[mllp::FS, mllp::CR]).is_ok();
        if ok {
            let mut ids: heapless::Vec<heapless::Vec<u8, MAX_CONTROL_ID>, 8> = heapless::Vec::new();
            for b in self.tx.as_slice().split(|&b| b == mllp::VT).skip(1) {
                let body = b.strip_suffix(&[mllp::FS, mllp::CR]).unwrap_or(b);
                match MshView::new_checked(body) {
                    Ok(v) => {
                        let id = heapless::Vec::from_slice(v.control_id()).unwrap_or_default();
                        let _ = ids.push(id);
                    }
                    Err(_) => ok = false,
                }
            }
            self.answered = ids;
        }
        if !ok {
            self.tx.clear();
            self.answered.clear();
            self.answer_nothing();
            return Err(OrderFailure::Invalid);
        }
        self.query = None;
        let _ = self.events.push(Event::QueryAnswered { delivered: true });
        Ok(())
    }

    fn send_order(
        &mut self,
        order: OrderRef,
        text: &[u8],
        now: Instant,
    ) -> Result<(), OrderFailure> {
        if !self.is_quiet() {
            let _ = self
                .events
                .push(Event::Order(order, OrderOutcome::Deferred));
            return Ok(());
        }
        self.tx.clear();
        self.tx_sent = 0;
        let mut fits = self.tx.try_push(mllp::VT).is_ok();
        for seg in text.split(|&b| b == b'\r' || b == b'\n') {
            if !seg.is_empty() && fits {
                fits = self.tx.try_extend(seg).is_ok() && self.tx.try_push(b'\r').is_ok();
            }
        }
        let body_len = self.tx.len().saturating_sub(1);
        if !fits || body_len == 0 || body_len > self.cfg.max_message {
            self.tx.clear();
            return Err(OrderFailure::BadSize);
        }
        let control_id = match MshView::new_checked(&self.tx.as_slice()[1..]) {
            Ok(v) => heapless::Vec::from_slice(v.control_id()).ok(),
            Err(_) => None,
        };
        let Some(control_id) = control_id else {
            self.tx.clear();
            return Err(OrderFailure::Invalid);
        };
        if self.tx.try_extend(&[mllp::FS, mllp::CR]).is_err() {
            self.tx.clear();
            return Err(OrderFailure::BadSize);
        }
        self.not_before = None;
        self.order = Some(InFlight {
            order,
            control_id,
            deadline: now + self.cfg.ack_timeout,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Hl7Session<heapless::Vec<u8, 1024>>;
    type V = heapless::Vec<u8, 2048>;

    fn block(msg: &[u8]) -> V {
        let mut v = V::new();
        v.push(mllp::VT).unwrap();
        v.extend_from_slice(msg).unwrap();
        v.extend_from_slice(&[mllp::FS, mllp::CR]).unwrap();
        v
    }

    fn out(s: &mut S) -> V {
        let mut v = V::new();
        let mut buf = [0u8; 64];
        while let Some(n) = s.poll_transmit(&mut buf) {
            v.extend_from_slice(&buf[..n]).unwrap();
        }
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    const ORU: &[u8] = b"MSH|^~\\&|LAB|E|HIS|H|2024||ORU^R01|C1|P|2.5\rPID|1\r";

    #[test]
    fn ack_only_after_the_commit() {
        let mut s = S::new(Hl7Config::default(), b"LA1-");
        s.set_wall_clock(1_795_874_700);
        let b = block(ORU);
        assert_eq!(
            s.handle_input(&b, Instant::ZERO),
            b.len() - 1,
            "stops at FS"
        );
        assert!(out(&mut s).is_empty());
        let piece = s.poll_commit().unwrap().next().unwrap();
        assert_eq!(piece.text, ORU);
        assert_eq!(piece.end, Some(End::Complete(MessageEnd::Terminator)));
        s.commit_done(true, Instant::ZERO);
        let ack = out(&mut s);
        assert!(contains(&ack, b"MSA|AA|C1"), "{ack:?}");
        assert!(contains(&ack, b"20261128140500+0000|"));
        assert!(contains(&ack, b"|LA1-0|"));
        // The CR after FS is swallowed.
        assert_eq!(s.handle_input(&b[b.len() - 1..], Instant::ZERO), 1);
        // Refused: AR, and not HL7: AE with the message kept as rejected.
        s.handle_input(&b, Instant::ZERO);
        s.commit_done(false, Instant::ZERO);
        assert!(contains(&out(&mut s), b"MSA|AR|C1"));
        s.handle_input(&b[b.len() - 1..], Instant::ZERO);
        let junk = block(b"hello");
        s.handle_input(&junk, Instant::ZERO);
        let p = s.poll_commit().unwrap().next().unwrap();
        assert_eq!(p.end, Some(End::Rejected("not an HL7 message")));
        s.commit_done(true, Instant::ZERO);
        assert!(contains(&out(&mut s), b"MSA|AE|"));
    }

    #[test]
    fn orders_wait_for_their_ack_and_retry() {
        let mut s = S::new(Hl7Config::default(), b"X");
        let t0 = Instant::ZERO;
        let o = OrderRef {
            handle: 7,
            attempts: 0,
        };
        assert!(!s.order_wanted(t0));
        s.orders_waiting(true);
        assert!(s.order_wanted(t0));
        s.send_order(
            o,
            b"MSH|^~\\&|H|F|I|G|2024||OML^O33|ORD1|P|2.5\nORC|NW\n",
            t0,
        )
        .unwrap();
        assert_eq!(
            &out(&mut s)[..],
            &block(b"MSH|^~\\&|H|F|I|G|2024||OML^O33|ORD1|P|2.5\rORC|NW\r")[..]
        );
        assert!(!s.order_wanted(t0));
        // A result meanwhile is committed and ACKed as usual.
        let b = block(ORU);
        s.handle_input(&b, t0);
        s.commit_done(true, t0);
        out(&mut s);
        s.handle_input(&b[b.len() - 1..], t0);
        // No ACK in time: retried after the wait.
        let d = s.poll_timeout().unwrap();
        assert_eq!(d, t0 + Duration::from_secs(30));
        s.handle_timeout(d);
        let mut got = None;
        while let Some(e) = s.poll_event() {
            if let Event::Order(r, oc) = e {
                got = Some((r, oc));
            }
        }
        assert_eq!(got, Some((o, OrderOutcome::Retry(OrderFailure::NoAck))));
        assert!(!s.order_wanted(d));
        let again = s.poll_timeout().unwrap();
        assert!(s.order_wanted(again));
        // The instrument's AR: retried; its ACK is not committed.
        s.send_order(o, b"MSH|^~\\&|H|F|I|G|2024||OML^O33|ORD1|P|2.5\r", again)
            .unwrap();
        out(&mut s);
        let ack = block(b"MSH|^~\\&|I|G|H|F|2024||ACK|A9|P|2.5\rMSA|ca|ORD1\r");
        s.handle_input(&ack, again);
        assert!(s.poll_commit().is_none());
        assert!(out(&mut s).is_empty(), "an ACK is never ACKed");
        let mut got = None;
        while let Some(e) = s.poll_event() {
            if let Event::Order(_, oc) = e {
                got = Some(oc);
            }
        }
        assert_eq!(got, Some(OrderOutcome::Delivered));
        assert_eq!(
            s.send_order(o, b"not hl7", again),
            Err(OrderFailure::Invalid)
        );
        assert_eq!(
            ack_code_for(
                b"MSH|^~\\&|A|B|C|D|2026||ACK^O33|9|P|2.5\rMSA|ae|O1\r",
                b"O1"
            ),
            Some(*b"AE")
        );
    }
}
