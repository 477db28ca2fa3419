//! The whole ASTM E1381 link of a host: one [`Receiver`] (results from the instrument) and
//! one [`Sender`] (orders to it) on one line, with the rules that decide between them.
//!
//! - **Who may send.** The line is the instrument's whenever it wants it. An order is
//!   started only when the line is neutral (no transmission, no commit outstanding, no
//!   order in flight) and the order wait is over ([`Session::order_wanted`]).
//! - **Contention** (the instrument's ENQ arrives while we wait for the reply to ours):
//!   the instrument wins. Its ENQ goes to the receiver, which answers it; the order attempt
//!   is dropped without counting ([`OrderOutcome::Deferred`]) and no order is started for
//!   `contention_wait` (20 s). An instrument that follows LIS1-A to the letter ignores that
//!   ACK, waits and sends ENQ again: the receiver answers that one too (nothing was
//!   received in between).
//! - **Order attempts.** Each order is one whole transfer; its fate is an
//!   [`Event::Order`]: delivered, retried after `retry_wait` (a failed transfer, an
//!   interrupt, a lost line), or failed after `max_attempts` ([`OrderPolicy`]).
//! - **Host queries.** A transmission whose committed messages carry Q records ends in
//!   [`Event::Query`]; [`Session::query`] gives the specimens asked about. The driver
//!   answers with [`Session::answer_query`] (records H…L, or `None`: nothing known); at
//!   `query_timeout` after the query's EOT without an answer the link answers "no
//!   information" itself (`H` then `L|1|I`, LIS2-A2). The answer goes out before any order
//!   as soon as the line is neutral; after contention it is bid again as soon as the
//!   instrument's transmission ends (the instrument is waiting for it), and its fate is
//!   [`Event::QueryAnswered`].
//! - **Stopping.** The receiver answers ENQ with NAK; a transmission in progress is
//!   finished; no order is started.
//!
//! Timers: the receiver's receive timer, the sender's reply and retry timers, and the
//! order wait (only while the driver says an order is waiting, so an idle line never
//! wakes).

use super::receiver::{Receiver, ReceiverConfig};
use super::sender::{Event as SendEvent, Failure, SendError, Sender, SenderConfig};
use super::ENQ;
use crate::buf::{Buffer, Queue};
use crate::query::Specimens;
use crate::session::{Commit, Event, OrderFailure, OrderOutcome, OrderPolicy, OrderRef, Session};
use crate::time::{Duration, Instant};

/// The answer when nothing is known about a queried specimen (LIS2-A2: `L-3` = `I`, no
/// information available).
pub const NOTHING_KNOWN: &[u8] = b"H|\\^&\rL|1|I\r";

/// Everything that sets the link's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// The receiver's limits and timer.
    pub receiver: ReceiverConfig,
    /// The sender's timers and limits.
    pub sender: SenderConfig,
    /// Order attempts and the wait after a failed one.
    pub orders: OrderPolicy,
    /// Wait after losing contention before the next order (LIS1-A: at least 20 s).
    pub contention_wait: Duration,
    /// How long after a host query's EOT its answer may start (below what the instrument
    /// waits). Default 5 s.
    pub query_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            receiver: ReceiverConfig::default(),
            sender: SenderConfig::default(),
            orders: OrderPolicy::default(),
            contention_wait: Duration::from_secs(20),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a host query stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Waiting for the driver until the deadline.
    Waiting(Instant),
    /// The answer is loaded in the sender, to start when the line is neutral.
    Loaded,
    /// Being sent.
    Sending,
}

/// The host's ASTM link session.
#[derive(Debug)]
pub struct Link<B> {
    cfg: LinkConfig,
    rx: Receiver<B>,
    tx: Sender<B>,
    order: Option<OrderRef>,
    orders_waiting: bool,
    not_before: Option<Instant>,
    stopping: bool,
    /// The host query being answered: its specimens and where its answer stands.
    query: Option<(Specimens, Answer)>,
    events: Queue<Event, 4>,
}

impl<B: Buffer> Link<B> {
    /// A neutral link.
    pub fn new(cfg: LinkConfig) -> Self {
        Link {
            rx: Receiver::new(cfg.receiver.clone()),
            tx: Sender::new(cfg.sender.clone()),
            cfg,
            order: None,
            orders_waiting: false,
            not_before: None,
            stopping: false,
            query: None,
            events: Queue::new(),
        }
    }

    /// The receiver (for its limits and state).
    pub fn receiver(&self) -> &Receiver<B> {
        &self.rx
    }

    /// True while an order is being sent.
    pub fn order_in_flight(&self) -> Option<OrderRef> {
        self.order
    }

    /// A query's answer: the sender's fate of it.
    fn answer_event(&mut self, e: SendEvent, now: Instant) {
        match e {
            SendEvent::Contention => {
                // The instrument goes first; the answer, kept, goes after it.
                let _ = self.events.push(Event::Contention);
                self.rx.handle_input(&[ENQ], now);
                if let Some((_, a)) = &mut self.query {
                    *a = Answer::Loaded;
                }
            }
            SendEvent::Delivered => {
                self.query = None;
                let _ = self.events.push(Event::QueryAnswered { delivered: true });
            }
            SendEvent::Interrupted | SendEvent::Failed(_) => {
                self.query = None;
                let _ = self.events.push(Event::QueryAnswered { delivered: false });
            }
        }
    }

    /// Moves a finished transmission's query into waiting; starts a loaded answer when
    /// the line is neutral.
    fn step_query(&mut self, now: Instant) {
        if self.query.is_none() {
            if let Some(ids) = self.rx.take_query() {
                self.query = Some((ids, Answer::Waiting(now + self.cfg.query_timeout)));
                let _ = self.events.push(Event::Query);
            }
        }
        let neutral = !self.rx.is_receiving() && !self.rx.commit_outstanding();
        if let Some((_, a @ Answer::Loaded)) = &mut self.query {
            if neutral && self.tx.is_held() {
                *a = Answer::Sending;
                self.tx.start(now);
            }
        }
    }

    fn sender_events(&mut self, now: Instant) {
        while let Some(e) = self.tx.poll_event() {
            if matches!(self.query, Some((_, Answer::Sending))) {
                self.answer_event(e, now);
                continue;
            }
            let Some(order) = self.order.take() else {
                continue;
            };
            let outcome = match e {
                SendEvent::Delivered => OrderOutcome::Delivered,
                SendEvent::Contention => {
                    // The instrument wins: its ENQ is the receiver's.
                    let _ = self.events.push(Event::Contention);
                    self.tx.abort();
                    self.rx.handle_input(&[ENQ], now);
                    self.not_before = Some(now + self.cfg.contention_wait);
                    OrderOutcome::Deferred
                }
                SendEvent::Interrupted => self.failed(order, OrderFailure::Interrupted, now),
                SendEvent::Failed(f) => {
                    let why = match f {
                        Failure::NotEstablished => OrderFailure::NotEstablished,
                        Failure::FrameRetries => OrderFailure::FrameRetries,
                        Failure::NoReply => OrderFailure::NoReply,
                    };
                    self.failed(order, why, now)
                }
            };
            let _ = self.events.push(Event::Order(order, outcome));
        }
    }

    fn failed(&mut self, order: OrderRef, why: OrderFailure, now: Instant) -> OrderOutcome {
        self.not_before = Some(now + self.cfg.orders.retry_wait);
        self.cfg.orders.after_failure(order, why)
    }
}

impl<B: Buffer> Session for Link<B> {
    fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while used < input.len() {
            if self.events.room() < 2 {
                break;
            }
            if self.tx.is_sending() {
                self.tx.handle_input(&input[used..=used], now);
                used += 1;
                self.sender_events(now);
                continue;
            }
            let n = self.rx.handle_input(&input[used..], now);
            if n == 0 {
                break;
            }
            used += n;
        }
        self.step_query(now);
        used
    }

    fn poll_commit(&self) -> Option<Commit<'_>> {
        self.rx.poll_commit()
    }

    fn commit_done(&mut self, ok: bool, now: Instant) {
        self.rx.commit_done(ok, now);
        self.step_query(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.rx.handle_timeout(now);
        // A sender waiting to bid again waits for the instrument's transmission to end.
        if !self.rx.is_receiving() && !self.rx.commit_outstanding() {
            self.tx.handle_timeout(now);
        }
        self.sender_events(now);
        if let Some((_, Answer::Waiting(d))) = self.query {
            if now >= d {
                // Nothing from the driver in time: "no information".
                let _ = self.answer_query(None, now);
            }
        }
        self.step_query(now);
    }

    fn handle_line_lost(&mut self, now: Instant) {
        self.rx.handle_line_lost(now);
        if self
            .query
            .take()
            .is_some_and(|(_, a)| a != Answer::Waiting(now))
        {
            let _ = self.events.push(Event::QueryAnswered { delivered: false });
        }
        if let Some(order) = self.order.take() {
            self.tx.abort();
            let outcome = self.failed(order, OrderFailure::LineLost, now);
            let _ = self.events.push(Event::Order(order, outcome));
        }
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.rx
            .poll_transmit(buf)
            .or_else(|| self.tx.poll_transmit(buf))
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.rx.poll_event().or_else(|| self.events.pop())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let order_wait = self
            .not_before
            .filter(|_| self.orders_waiting && self.is_quiet() && !self.stopping);
        let answer = match self.query {
            Some((_, Answer::Waiting(d))) => Some(d),
            _ => None,
        };
        let sender = self.tx.poll_timeout().filter(|_| !self.rx.is_receiving());
        [self.rx.poll_timeout(), sender, order_wait, answer]
            .into_iter()
            .flatten()
            .min()
    }

    fn max_transmit(&self) -> usize {
        self.tx.max_transmit()
    }

    fn set_stopping(&mut self, stopping: bool) {
        self.stopping = stopping;
        self.rx.set_busy(stopping);
    }

    fn is_quiet(&self) -> bool {
        !self.rx.is_receiving()
            && !self.rx.commit_outstanding()
            && self.tx.is_idle()
            && self.order.is_none()
            && self.query.is_none()
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
        match &self.query {
            Some((ids, Answer::Waiting(_))) => Some(ids),
            _ => None,
        }
    }

    fn answer_query(&mut self, answer: Option<&[u8]>, now: Instant) -> Result<(), OrderFailure> {
        if !matches!(self.query, Some((_, Answer::Waiting(_)))) {
            return Err(OrderFailure::Unsupported);
        }
        let text = answer.unwrap_or(NOTHING_KNOWN);
        let r = match self.tx.load(text) {
            Ok(()) => Ok(()),
            // Too big for the sender: say "nothing" rather than nothing at all.
            Err(_) => {
                if self.tx.load(NOTHING_KNOWN).is_err() {
                    // Not even that fits (a receive-only board): the query is dropped.
                    self.query = None;
                    let _ = self.events.push(Event::QueryAnswered { delivered: false });
                    return Err(OrderFailure::BadSize);
                }
                Err(OrderFailure::BadSize)
            }
        };
        if let Some((_, a)) = &mut self.query {
            *a = Answer::Loaded;
        }
        self.step_query(now);
        r
    }

    fn send_order(
        &mut self,
        order: OrderRef,
        text: &[u8],
        now: Instant,
    ) -> Result<(), OrderFailure> {
        if !self.is_quiet() {
            // Not an attempt; the driver offers it again.
            let _ = self
                .events
                .push(Event::Order(order, OrderOutcome::Deferred));
            return Ok(());
        }
        match self.tx.send(text, now) {
            Ok(()) => {
                self.order = Some(order);
                self.not_before = None;
                Ok(())
            }
            Err(SendError::BadSize) => Err(OrderFailure::BadSize),
            Err(SendError::Busy) => {
                let _ = self
                    .events
                    .push(Event::Order(order, OrderOutcome::Deferred));
                Ok(())
            }
        }
    }
}
