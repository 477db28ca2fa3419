//! The one channel driver: any hal [`Session`] on a [`Conn`], the store behind it.
//!
//! Bytes in → session → store → bytes out. The protocol's rules (when to ACK, who may
//! send, order attempts, timers) are the session's; this loop only does what a session
//! cannot: read and write the port (through `embedded-io-async`), make commits durable
//! ([`Durable`]), read the clock, fetch orders from the outbox and record their outcome,
//! count, log, and stop when asked.
//!
//! Each turn: offer the input held back, answer the commit, write what the session wants
//! written, handle its events, stop if asked and the line is quiet, start the next order
//! if the session wants one, then wait for bytes, the session's deadline, a new order or
//! the stop signal. Reads are cancel safe; nothing else is awaited inside the `select!`.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_io_async::{Read, Write};
use labagent_hal::session::{Event, OrderOutcome as Fate, OrderRef, Session};
use labagent_hal::time::Instant as HalInstant;
use tokio::time::Instant;

use super::{ChannelCtx, Dir, QuerySource};
use crate::query::{Found, QueryRequest};
use crate::source::Conn;
use crate::store::commits::{Durable, MetaFn};
use crate::store::{MessageId, Order, OrderOutcome};

/// A session the driver can run; `set_wall_clock` for those that write wall-clock time.
pub trait LinkSession: Session + Send {
    /// Unix seconds now (HL7 ACKs carry it in MSH-7).
    fn set_wall_clock(&mut self, _unix_secs: i64) {}
}

/// Wait before looking for an order again after the outbox could not be read, or while
/// another connection of the channel sends one.
const ORDER_LOOK_AGAIN: Duration = Duration::from_secs(1);

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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An order given to the session, and the channel's order lock while it is out.
struct InFlight {
    order: Order,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// A host query being resolved: what it finds, when and for which specimens it was asked.
struct Asked {
    answer: tokio::sync::oneshot::Receiver<crate::query::Found>,
    at: Instant,
    specimens: Vec<String>,
}

/// Runs `session` on `conn` until the line ends or the agent stops.
pub async fn run<S: LinkSession>(
    conn: Conn,
    ctx: Arc<ChannelCtx>,
    mut session: S,
    meta: MetaFn<'_>,
) -> io::Result<()> {
    let mut io = FromTokio::new(conn);
    let clock = Clock(Instant::now());
    let mut durable = Durable::new();
    let mut input = vec![0u8; 16 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = vec![0u8; session.max_transmit().max(64)];
    let mut stopping = ctx.stopping.clone();
    // Whether the loop has acted on the stop signal (see the `select!`).
    let mut stop_seen = false;
    let mut inflight: Option<InFlight> = None;
    let mut look_again: Option<Instant> = None;
    let mut line_lost = false;
    // Messages stored since the last host query, and the query being asked upstream.
    let mut recent: Vec<MessageId> = Vec::new();
    let mut asked: Option<Asked> = None;
    let query_timeout = ctx.config.query_timeout;
    // In host-query mode orders wait in the cache for the instrument's query; only those
    // no query can find (no specimen id) are pushed.
    let push = ctx.config.orders == labagent_config::OrderMode::Push;
    session.orders_waiting(true);
    loop {
        session.set_wall_clock(unix_now());
        let now = clock.now();
        let mut progressed = false;
        if start < end {
            let n = session.handle_input(&input[start..end], now);
            start += n;
            progressed |= n > 0;
        }
        if let Some(c) = session.poll_commit() {
            let ok = super::commit(&ctx, &mut durable, c, meta, &mut recent).await;
            session.commit_done(ok, clock.now());
            progressed = true;
        }
        // Events first: what an ACK reports (counters, an order's fate) is recorded before
        // the instrument can see the ACK.
        while let Some(e) = session.poll_event() {
            progressed = true;
            event(&ctx, e, &mut inflight).await;
        }
        let mut wrote = false;
        while let Some(n) = session.poll_transmit(&mut out) {
            ctx.tap(Dir::Out, &out[..n]);
            io.write_all(&out[..n]).await?;
            wrote = true;
        }
        if wrote {
            io.flush().await?;
            progressed = true;
        }
        if line_lost {
            if progressed || session.poll_commit().is_some() {
                continue;
            }
            return Ok(());
        }
        // A host query: find its answer within the channel's query_timeout.
        if asked.is_none() {
            if let Some(ids) = session.query() {
                let req = QueryRequest::new(&ctx, ids, &recent, clock.now().as_millis());
                recent.clear();
                asked = Some(Asked {
                    specimens: req.specimens.clone(),
                    answer: crate::query::resolve(ctx.clone(), req, query_timeout),
                    at: Instant::now(),
                });
                continue;
            }
        }
        if start < end && progressed {
            continue;
        }

        // The line is idle: stop if asked, else the next order.
        if *stopping.borrow() {
            stop_seen = true;
            session.set_stopping(true);
            if session.is_quiet() {
                return Ok(());
            }
        }
        if inflight.is_none()
            && session.order_wanted(clock.now())
            && look_again.map_or(true, |t| Instant::now() >= t)
        {
            look_again = None;
            match ctx.order_lock.clone().try_lock_owned() {
                Err(_) => look_again = Some(Instant::now() + ORDER_LOOK_AGAIN),
                Ok(lock) => {
                    let channel = ctx.name().to_string();
                    let next = ctx.store.call(move |s| match push {
                        true => s.next_orders(&channel, 1),
                        false => Ok(s.next_unindexed_order(&channel)?.into_iter().collect()),
                    });
                    match next.await {
                        Ok(v) if v.is_empty() => {
                            session.orders_waiting(false);
                            // In query mode that was a scan of the whole cache: at most one a
                            // second, however fast orders arrive.
                            look_again = (!push).then(|| Instant::now() + ORDER_LOOK_AGAIN);
                        }
                        Ok(mut v) => {
                            let o = v.remove(0);
                            let r = OrderRef {
                                handle: 0,
                                attempts: o.attempts,
                            };
                            match session.send_order(r, o.text.as_bytes(), clock.now()) {
                                Ok(()) => {
                                    tracing::info!(channel = %ctx.name(), order = %o.id, "sending order to the instrument");
                                    inflight = Some(InFlight {
                                        order: o,
                                        _lock: lock,
                                    });
                                }
                                Err(f) => {
                                    let why = format!("order cannot be sent: {f}");
                                    crate::orders::finish(&ctx, &o.id, OrderOutcome::Failed, &why)
                                        .await;
                                }
                            }
                        }
                        Err(e) => {
                            ctx.counters.set_error(&e.to_string());
                            look_again = Some(Instant::now() + ORDER_LOOK_AGAIN);
                        }
                    }
                }
            }
            continue;
        }

        // Wait for bytes, a deadline, an order, or the stop signal.
        // The wait before looking for an order counts only while one is wanted.
        let look = look_again.filter(|_| session.order_wanted(clock.now()));
        let deadline = [session.poll_timeout().map(|t| clock.at(t)), look]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            r = io.read(&mut input), if start >= end => match r {
                Ok(n) if n > 0 => {
                    ctx.tap(Dir::In, &input[..n]);
                    (start, end) = (0, n);
                }
                r => {
                    if let Err(e) = r {
                        tracing::debug!(channel = %ctx.name(), error = %e, "read failed");
                    }
                    session.handle_line_lost(clock.now());
                    line_lost = true;
                }
            },
            _ = sleep_until(deadline) => session.handle_timeout(clock.now()),
            _ = ctx.orders.notified(), if inflight.is_none() => session.orders_waiting(true),
            found = async { (&mut asked.as_mut().expect("guarded").answer).await }, if asked.is_some() => {
                let a = asked.take().expect("guarded");
                // An answer that comes too late for its query (the session answered "no
                // information" and may wait for another) is dropped: nothing was claimed.
                if session.query().map(crate::query::specimen_ids) != Some(a.specimens) {
                    continue;
                }
                let (text, source) = crate::query::answer(&ctx, found.unwrap_or(Found::Nothing)).await;
                let at = a.at;
                let source = match session.answer_query(text.as_deref().map(str::as_bytes), clock.now()) {
                    Ok(()) => source,
                    Err(e) => {
                        tracing::error!(channel = %ctx.name(), error = %e, "the query's answer could not be used (cached orders in it stay answered-query); answered \"nothing known\"");
                        QuerySource::None
                    }
                };
                ctx.counters.query_answered(source, at.elapsed());
                tracing::info!(channel = %ctx.name(), from = source.as_str(), ms = at.elapsed().as_millis() as u64, "host query answered");
            }
            // The wait must not be gated on the signal's value: a stop that arrives while
            // the loop awaits something else would then never wake it.
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

/// Counters, logs and order outcomes for one session event.
async fn event(ctx: &ChannelCtx, e: Event, inflight: &mut Option<InFlight>) {
    let name = ctx.name();
    match e {
        Event::Accepted { messages } => {
            for _ in 0..messages {
                ctx.counters.acknowledged();
            }
        }
        Event::FrameRejected(why) => {
            ctx.counters.nak();
            tracing::debug!(channel = %name, ?why, "frame answered NAK");
        }
        Event::TimedOut => {
            tracing::warn!(channel = %name, "receive timer expired; back to neutral")
        }
        Event::RefusedBusy => tracing::info!(channel = %name, "ENQ refused (agent stopping)"),
        Event::Contention => {
            tracing::info!(channel = %name, "contention: the instrument sends first")
        }
        Event::TooLarge { len } => {
            ctx.counters.received();
            ctx.counters.refused("message over max_message");
            tracing::warn!(channel = %name, len, "message over max_message; not stored, answered negatively where the protocol can");
        }
        Event::Interrupted { discarded } | Event::Unfinished { discarded } => {
            ctx.counters.incomplete();
            tracing::warn!(channel = %name, len = discarded,
                "message cut off before its end; it was never acknowledged and is dropped");
        }
        Event::Order(_, fate) => {
            let Some(f) = inflight.take() else { return };
            let (outcome, why) = match fate {
                Fate::Delivered => (OrderOutcome::Delivered, "delivered".to_string()),
                Fate::Retry(why) => (OrderOutcome::Retry, why.to_string()),
                Fate::Failed(why) => (OrderOutcome::Failed, why.to_string()),
                Fate::Deferred => {
                    let order = &f.order.id;
                    return tracing::info!(channel = %name, %order, "order deferred: the instrument has the line");
                }
            };
            crate::orders::finish(ctx, &f.order.id, outcome, &why).await;
        }
        Event::QueryAnswered { delivered: true } => {
            tracing::debug!(channel = %name, "query answer sent")
        }
        Event::QueryAnswered { delivered: false } => {
            tracing::warn!(channel = %name, "the instrument did not take the query's answer")
        }
        Event::TransmissionStarted
        | Event::TransmissionEnded
        | Event::Refused
        | Event::DuplicateFrame
        | Event::Query => {}
    }
}
