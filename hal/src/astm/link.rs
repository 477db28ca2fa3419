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
use crate::session::{Commit, Event, OrderFailure, OrderOutcome, OrderPolicy, OrderRef, Session};
use crate::time::{Duration, Instant};

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
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            receiver: ReceiverConfig::default(),
            sender: SenderConfig::default(),
            orders: OrderPolicy::default(),
            contention_wait: Duration::from_secs(20),
        }
    }
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

    fn sender_events(&mut self, now: Instant) {
        while let Some(e) = self.tx.poll_event() {
            let Some(order) = self.order.take() else {
                continue;
            };
            let outcome = match e {
                SendEvent::Delivered => OrderOutcome::Delivered,
                SendEvent::Contention => {
                    // The instrument wins: its ENQ is the receiver's.
                    let _ = self.events.push(Event::Contention);
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
            if !self.tx.is_idle() {
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
        used
    }

    fn poll_commit(&self) -> Option<Commit<'_>> {
        self.rx.poll_commit()
    }

    fn commit_done(&mut self, ok: bool, now: Instant) {
        self.rx.commit_done(ok, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.rx.handle_timeout(now);
        self.tx.handle_timeout(now);
        self.sender_events(now);
    }

    fn handle_line_lost(&mut self, now: Instant) {
        self.rx.handle_line_lost(now);
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
        [self.rx.poll_timeout(), self.tx.poll_timeout(), order_wait]
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
