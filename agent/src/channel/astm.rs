//! ASTM E1381 driver: the hal [`Receiver`] (instrument → agent) and [`Sender`] (orders,
//! agent → instrument) on one connection, with the store behind every ACK.
//!
//! # Durability
//!
//! The receiver asks for a commit before it ACKs a frame ([`CommitRequest`]: the messages
//! the frame completes, and the partial message so far). [`Durable::apply`] maps that onto
//! the store's append-only calls, in one blocking task, and only when every call returned
//! `Ok` (each returns after the store's fsync) does the session get `commit_ok()` and queue
//! the ACK. Any store error → `commit_failed()` → NAK: the instrument keeps the frame and
//! sends it again.
//!
//! - The partial message of a transmission is one store "partial" (`append_fragment` per
//!   frame, only the new bytes), turned into a pending message by `complete` at its L
//!   record, or left `incomplete` by `abandon` when the receive timer fires or the line is
//!   lost. Nothing is forwarded until it is complete.
//! - A frame that completes several messages stores each; a commit that fails half-way is
//!   safe: the resent frame finds the completed ones as duplicates (same bytes), and a
//!   partial whose write failed is abandoned (kept as incomplete, for inspection) and
//!   rewritten whole under a new transmission id.
//!
//! # Orders
//!
//! When the line is idle (no transmission from the instrument, no order in flight) the
//! driver takes the channel's oldest pending order from the store's outbox and sends it
//! with the [`Sender`]. Contention (the instrument sends ENQ while we wait for the reply
//! to ours): the instrument wins; its ENQ goes to the receiver, the attempt is dropped
//! without counting, and the order is taken again when the line is idle, 20 s at the
//! earliest. The instrument's ENQ is answered at once; an instrument that follows LIS1-A
//! strictly ignores that ACK, waits ≥ 1 s and sends ENQ again: that ENQ is answered too.
//! Outcomes are recorded in the store and reported through [`ChannelCtx::report_order`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use labagent_hal::astm::receiver::{CommitRequest, Event, MessageEnd, Receiver, ReceiverConfig};
use labagent_hal::astm::record::summary;
use labagent_hal::astm::sender::{Event as SendEvent, Sender, SenderConfig};
use labagent_hal::astm::ENQ;
use labagent_hal::time::{Duration as HalDuration, Instant as HalInstant};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ChannelCtx, Dir};
use crate::source::Conn;
use crate::store::{
    Appended, Fragment, NewMessage, Order, OrderOutcome, Protocol, Store, StoreError,
};

/// Attempts per order before it is given up (each attempt is a whole E1381 transfer).
const ORDER_ATTEMPTS: u32 = 5;
/// Wait between attempts of an order.
const ORDER_RETRY: Duration = Duration::from_secs(30);
/// Wait after losing contention before the order's next ENQ (LIS1-A: at least 20 s).
const CONTENTION_WAIT: Duration = Duration::from_secs(20);

/// Receiver settings from `[channel.astm]`.
pub fn receiver_config(a: &labagent_config::Astm) -> ReceiverConfig {
    ReceiverConfig {
        max_frame: a.max_frame as usize,
        max_message: a.max_message as usize,
        receive_timeout: hal_duration(a.receive_timeout),
    }
}

/// Sender settings from `[channel.astm]` (timers not in the config keep LIS1-A values).
pub fn sender_config(a: &labagent_config::Astm) -> SenderConfig {
    SenderConfig {
        reply_timeout: hal_duration(a.ack_timeout),
        max_retries: a.max_retries.max(1),
        max_message: a.max_message as usize,
        ..SenderConfig::default()
    }
}

fn hal_duration(d: Duration) -> HalDuration {
    HalDuration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

/// Meta of a stored ASTM message: the H record's sender and record counts.
pub fn meta(text: &[u8], end: MessageEnd, enc: &labagent_config::Encoding) -> serde_json::Value {
    let s = summary(text);
    json!({
        "sender": s.sender.map(|b| String::from_utf8_lossy(b).into_owned()),
        "records": s.records,
        "patients": s.patients,
        "orders": s.orders,
        "results": s.results,
        "queries": s.queries,
        "end": match end {
            MessageEnd::Terminator => "terminator",
            MessageEnd::Headless => "headless",
            MessageEnd::Eot => "eot",
            MessageEnd::Timeout => "timeout",
            MessageEnd::LineLost => "line_lost",
        },
        "encoding": crate::text::encoding_label(enc, None, text),
    })
}

/// The durable side of one receiver session: which store partial holds the committed
/// partial message, and how many of its bytes are stored.
pub struct Durable {
    channel: String,
    encoding: labagent_config::Encoding,
    /// Unique per session (time-based), so partials of an earlier run never collide.
    prefix: String,
    counter: u64,
    transmission: Option<String>,
    stored: usize,
    /// A store call failed: the partial in the store may not match; rewrite it whole.
    tainted: bool,
    clock_synced: Option<bool>,
}

/// What a commit stored.
#[derive(Debug, Default)]
pub struct Applied {
    pub messages: Vec<(Appended, usize)>,
    pub headless: usize,
}

impl Durable {
    pub fn new(channel: &str, encoding: labagent_config::Encoding) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Durable {
            channel: channel.to_string(),
            encoding,
            prefix: format!("{nanos:x}"),
            counter: 0,
            transmission: None,
            stored: 0,
            tainted: false,
            clock_synced: None,
        }
    }

    fn fragment(&self, transmission: &str, bytes: &[u8]) -> Fragment {
        Fragment {
            channel: self.channel.clone(),
            transmission: transmission.to_string(),
            protocol: Protocol::Astm,
            received_at: SystemTime::now(),
            clock_synced: self.clock_synced,
            bytes: bytes.to_vec(),
        }
    }

    fn new_transmission(&mut self) -> String {
        self.counter += 1;
        format!("{}-{}", self.prefix, self.counter)
    }

    /// Appends `text[self.stored..]` to the open partial (opening one if needed).
    fn extend(&mut self, store: &Store, text: &[u8]) -> Result<String, StoreError> {
        let t = match self.transmission.clone() {
            Some(t) => t,
            None => {
                let t = self.new_transmission();
                self.transmission = Some(t.clone());
                self.stored = 0;
                t
            }
        };
        if text.len() > self.stored {
            store.append_fragment(self.fragment(&t, &text[self.stored..]))?;
            self.stored = text.len();
        }
        Ok(t)
    }

    /// Forgets the open partial; it stays in the store as `incomplete`.
    fn close_incomplete(&mut self, store: &Store) -> Result<(), StoreError> {
        self.stored = 0;
        match self.transmission.take() {
            Some(t) => store.abandon(&self.channel, &t).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Makes `req` durable (see the module doc). Blocking.
    pub fn apply(&mut self, store: &Store, req: &CommitRequest) -> Result<Applied, StoreError> {
        if self.tainted {
            // Best effort: the old partial is kept as incomplete either way.
            let _ = self.close_incomplete(store);
            self.tainted = false;
        }
        let r = self.apply_inner(store, req);
        if r.is_err() {
            self.tainted = true;
        }
        r
    }

    fn apply_inner(&mut self, store: &Store, req: &CommitRequest) -> Result<Applied, StoreError> {
        let mut out = Applied::default();
        for m in &req.completed {
            if self.transmission.is_some() && self.stored > m.text.len() {
                // Cannot happen with a consistent session; keep what was stored, start over.
                self.close_incomplete(store)?;
            }
            match m.end {
                MessageEnd::Headless => {
                    self.extend(store, &m.text)?;
                    self.close_incomplete(store)?;
                    out.headless += 1;
                }
                _ if self.transmission.is_some() => {
                    let t = self.extend(store, &m.text)?;
                    let meta = meta(&m.text, m.end, &self.encoding);
                    let a = store.complete(&self.channel, &t, meta)?;
                    self.transmission = None;
                    self.stored = 0;
                    out.messages.push((a, m.text.len()));
                }
                _ => {
                    let a = store.append(NewMessage {
                        channel: self.channel.clone(),
                        protocol: Protocol::Astm,
                        received_at: SystemTime::now(),
                        clock_synced: self.clock_synced,
                        bytes: m.text.clone(),
                        meta: meta(&m.text, m.end, &self.encoding),
                    })?;
                    out.messages.push((a, m.text.len()));
                }
            }
        }
        if !req.partial.is_empty() {
            if self.stored > req.partial.len() {
                // Cannot happen with a consistent session; keep what was stored, start over.
                self.close_incomplete(store)?;
            }
            self.extend(store, &req.partial)?;
        } else if self.transmission.is_some() && req.completed.is_empty() {
            // An empty partial with nothing completed: the session dropped its partial.
            self.close_incomplete(store)?;
        }
        Ok(out)
    }
}

/// The time base of a session: hal instants are milliseconds since the session started,
/// on tokio's clock (paused in tests, so timers run on a virtual clock).
struct Clock(Instant);

impl Clock {
    fn now(&self) -> HalInstant {
        HalInstant::from_millis(self.0.elapsed().as_millis() as u64)
    }
    fn at(&self, t: HalInstant) -> Instant {
        self.0 + Duration::from_millis(t.as_millis())
    }
}

/// Runs the ASTM link on one connection until it ends.
pub async fn serve(mut conn: Conn, ctx: Arc<ChannelCtx>) -> io::Result<()> {
    let labagent_config::ProtocolSettings::Astm(cfg) = &ctx.config.settings else {
        return Err(io::Error::other("not an ASTM channel"));
    };
    let clock = Clock(Instant::now());
    let mut rx = Receiver::new(receiver_config(cfg));
    let mut tx = Sender::new(sender_config(cfg));
    let mut durable = Some(Durable::new(ctx.name(), ctx.config.encoding.clone()));
    let mut order: Option<Order> = None;
    let mut order_check = true;
    let mut order_not_before: Option<Instant> = None;
    let mut stopping = ctx.stopping.clone();
    // Whether the loop has acted on the stop signal. The wait below must not be gated on
    // the signal's current value: a stop that arrives while the loop awaits something
    // else (a store call) would then never wake it.
    let mut stop_seen = false;
    let mut out = vec![0u8; tx.max_transmit().max(256)];
    let mut buf = vec![0u8; 4096];
    let mut line_lost = false;
    // Set when we answered an instrument's ENQ on contention and nothing has arrived since
    // but (maybe) a second ENQ: see the read branch.
    let mut reenq_window = false;

    loop {
        // 1. Let both sessions act, resolving commits, until nothing is left to do.
        loop {
            let mut progressed = false;
            while let Some(ev) = rx.poll_event() {
                progressed = true;
                if !matches!(ev, Event::TransmissionStarted) {
                    reenq_window = false;
                }
                match ev {
                    Event::NeedsCommit(req) => {
                        let mut d = durable.take().expect("one commit at a time");
                        d.clock_synced = ctx.clock_synced.get();
                        let r = ctx
                            .store_call(move |s| {
                                let r = d.apply(s, &req);
                                Ok((d, r))
                            })
                            .await;
                        match r {
                            Ok((d, Ok(applied))) => {
                                durable = Some(d);
                                for (a, len) in &applied.messages {
                                    ctx.after_store(&Ok(*a), *len);
                                }
                                for _ in 0..applied.headless {
                                    ctx.counters.incomplete();
                                }
                                rx.commit_ok();
                            }
                            Ok((d, Err(e))) => {
                                durable = Some(d);
                                ctx.after_store(&Err(e), 0);
                                rx.commit_failed();
                            }
                            Err(e) => {
                                // The blocking task itself died; start a fresh durable state.
                                durable =
                                    Some(Durable::new(ctx.name(), ctx.config.encoding.clone()));
                                ctx.after_store(&Err(e), 0);
                                rx.commit_failed();
                            }
                        }
                    }
                    Event::MessageComplete(_) => {
                        ctx.counters.received();
                        ctx.counters.acknowledged();
                    }
                    Event::Incomplete(m) => {
                        ctx.counters.incomplete();
                        tracing::warn!(channel = %ctx.name(), len = m.text.len(), end = ?m.end,
                            "transmission ended before its message did; kept as incomplete");
                        let mut d = durable.take().expect("no commit outstanding");
                        let r = ctx
                            .store_call(move |s| {
                                let r = d.close_incomplete(s);
                                Ok((d, r))
                            })
                            .await;
                        durable = Some(match r {
                            Ok((d, Ok(()))) => d,
                            Ok((mut d, Err(e))) => {
                                d.tainted = true;
                                ctx.counters.set_error(&e.to_string());
                                d
                            }
                            Err(e) => {
                                ctx.counters.set_error(&e.to_string());
                                Durable::new(ctx.name(), ctx.config.encoding.clone())
                            }
                        });
                    }
                    Event::FrameRejected(why) => {
                        ctx.counters.nak();
                        tracing::debug!(channel = %ctx.name(), ?why, "frame answered NAK");
                    }
                    Event::TimedOut => {
                        tracing::warn!(channel = %ctx.name(), "receive timer expired; back to neutral");
                    }
                    Event::RefusedBusy => {
                        tracing::info!(channel = %ctx.name(), "ENQ refused (agent stopping)");
                    }
                    Event::TransmissionStarted
                    | Event::FrameAccepted { .. }
                    | Event::DuplicateFrame { .. }
                    | Event::TransmissionEnded => {}
                }
            }
            while let Some(ev) = tx.poll_event() {
                progressed = true;
                match ev {
                    SendEvent::Contention => {
                        // The instrument wins: its ENQ goes to the receiver, and the
                        // sender is reset so that everything the instrument sends next
                        // reaches the receiver (a sender waiting to retry would swallow
                        // it) and no ENQ of ours can cut into its transmission. The order
                        // stays pending in the store (no attempt counted) and is taken
                        // again once the line is idle and the contention wait is over.
                        rx.handle_input(&[ENQ], clock.now());
                        reenq_window = true;
                        tx = Sender::new(sender_config(cfg));
                        if let Some(o) = order.take() {
                            tracing::info!(channel = %ctx.name(), order = %o.id,
                                "contention: the instrument sends first; order deferred");
                        }
                        order_not_before = Some(Instant::now() + CONTENTION_WAIT);
                        order_check = true;
                    }
                    SendEvent::Delivered => {
                        if let Some(o) = order.take() {
                            ctx.finish_order(&o.id, OrderOutcome::Delivered, "delivered")
                                .await;
                        }
                        order_check = true;
                    }
                    SendEvent::Interrupted | SendEvent::Failed(_) => {
                        if let Some(o) = order.take() {
                            let outcome = if o.attempts + 1 >= ORDER_ATTEMPTS {
                                OrderOutcome::Failed
                            } else {
                                OrderOutcome::Retry
                            };
                            let why = format!("{ev:?}");
                            ctx.finish_order(&o.id, outcome, &why).await;
                        }
                        order_not_before = Some(Instant::now() + ORDER_RETRY);
                        order_check = true;
                    }
                }
            }
            let mut n = 0;
            while let Some(k) = rx.poll_transmit(&mut out[n..]) {
                n += k;
                if n == out.len() {
                    break;
                }
            }
            if n > 0 {
                write(&mut conn, &ctx, &out[..n]).await?;
                progressed = true;
            }
            while let Some(k) = tx.poll_transmit(&mut out) {
                write(&mut conn, &ctx, &out[..k]).await?;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if line_lost {
            return Ok(());
        }

        // 2. Idle line: stop if asked, else start the next order.
        let idle = !rx.is_receiving() && tx.is_idle() && !rx.commit_outstanding();
        if *stopping.borrow() {
            stop_seen = true;
            rx.set_busy(true);
            if idle {
                return Ok(());
            }
        }
        if idle
            && order.is_none()
            && order_check
            && order_not_before.map_or(true, |t| Instant::now() >= t)
        {
            order_check = false;
            order_not_before = None;
            let channel = ctx.name().to_string();
            match ctx.store_call(move |s| s.next_orders(&channel, 1)).await {
                Ok(mut v) if !v.is_empty() => {
                    let o = v.remove(0);
                    let text = order_text(&o.text);
                    match tx.send(&text, clock.now()) {
                        Ok(()) => {
                            tracing::info!(channel = %ctx.name(), order = %o.id, "sending order to the instrument");
                            order = Some(o);
                        }
                        Err(e) => {
                            let why = format!("order cannot be sent: {e:?}");
                            ctx.finish_order(&o.id, OrderOutcome::Failed, &why).await;
                            order_check = true;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    ctx.counters.set_error(&e.to_string());
                    order_not_before = Some(Instant::now() + ORDER_RETRY);
                    order_check = true;
                }
            }
        }

        // 3. Wait for bytes, a timer, an order, or the stop signal.
        let deadline = [
            rx.poll_timeout().map(|t| clock.at(t)),
            tx.poll_timeout().map(|t| clock.at(t)),
            // Only while the line is idle: a retry time that passes during a transmission
            // must not wake the loop (it would spin until the transmission ends).
            order_not_before.filter(|_| order_check && idle && order.is_none()),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    if let Err(e) = &r {
                        tracing::debug!(channel = %ctx.name(), error = %e, "read failed");
                    }
                    rx.handle_line_lost();
                    if let Some(o) = order.take() {
                        ctx.finish_order(&o.id, OrderOutcome::Retry, "line lost").await;
                    }
                    line_lost = true;
                }
                Ok(n) => {
                    ctx.tap(Dir::In, &buf[..n]);
                    let now = clock.now();
                    let mut input = &buf[..n];
                    if reenq_window && rx.is_receiving() && !rx.commit_outstanding() {
                        if let Some(p) = input.iter().position(|&b| b == ENQ) {
                            // The instrument followed LIS1-A to the letter: it did not take
                            // our ACK to its contending ENQ as the reply, waited, and asks
                            // again. Nothing has been received since: start over and
                            // answer this ENQ (the receiver alone would ignore it).
                            rx = Receiver::new(receiver_config(cfg));
                            reenq_window = false;
                            input = &input[p..];
                        }
                    }
                    if tx.is_idle() {
                        rx.handle_input(input, now);
                    } else {
                        tx.handle_input(input, now);
                    }
                }
            },
            _ = sleep_until(deadline) => {
                let now = clock.now();
                rx.handle_timeout(now);
                tx.handle_timeout(now);
            }
            _ = ctx.orders.notified(), if order.is_none() => order_check = true,
            r = stopping.changed(), if !stop_seen => {
                // Sender gone: nobody can ask for a stop any more; stop watching.
                stop_seen = r.is_err();
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn write(conn: &mut Conn, ctx: &ChannelCtx, bytes: &[u8]) -> io::Result<()> {
    ctx.tap(Dir::Out, bytes);
    conn.write_all(bytes).await?;
    conn.flush().await
}

/// Order text as records: LF and CR LF line ends become CR, and the last record ends in CR.
pub fn order_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 1);
    for line in text.split(['\r', '\n']).filter(|l| !l.is_empty()) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\r');
    }
    out
}
