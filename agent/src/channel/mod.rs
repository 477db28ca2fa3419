//! Channels: a hal protocol session on a [`Conn`], the store behind it.
//!
//! Every rule of a link lives in its hal session (`labagent_hal::astm::link::Link`,
//! `hl7::session::Hl7Session`, `raw::RawSession`); one generic driver ([`driver::run`])
//! runs any of them: bytes in → session → store → bytes out, orders in, events out.
//! `astm`, `hl7` and `raw` only turn a channel's settings into its session and say what
//! meta a stored message gets. The supervisor ([`run_channel`]) asks the channel's
//! [`Link`] for connections and runs the driver on each (concurrently for `listen`).
//!
//! Rules the driver keeps (ARCHITECTURE.md, "Durability"):
//! - nothing is acknowledged to an instrument before its commit is durable: the pieces are
//!   written at once and the commit waits for one `fdatasync` ([`commit`]); a store error
//!   is answered negatively (NAK, AR/CE, no reply);
//! - after a stored message, [`Hooks::stored`] wakes the uplink;
//! - every byte read and written goes to [`ChannelCtx::tap`] for `labagent monitor`;
//! - no patient data in logs at info or above: ids, lengths, counts only.

pub mod astm;
pub mod driver;
pub mod hl7;
pub mod raw;
pub mod stats;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, watch};

use labagent_hal::buf::VecBuf;
use labagent_hal::session::Commit;

use crate::source::{Conn, Link};
use crate::store::{Appended, Store, StoreError};
pub use stats::{ChannelCounters, ChannelSnapshot, QuerySource};

/// Direction of wire bytes, for the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Instrument → agent.
    In,
    /// Agent → instrument.
    Out,
}

/// Bytes seen on the wire of a channel.
#[derive(Debug, Clone)]
pub struct WireEvent {
    pub at: SystemTime,
    pub dir: Dir,
    pub bytes: Arc<[u8]>,
}

/// Called after a message became durable (wakes the uplink).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// The fate of an order, for `{prefix}/{agent}/{channel}/orders/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrderReport {
    pub channel: String,
    pub id: String,
    /// `delivered` or `failed`.
    pub state: String,
    pub detail: String,
}

/// Where a channel reports to: the uplink(s).
#[derive(Clone)]
pub struct Hooks {
    /// A message became durable: wake the uplink.
    pub stored: Notify,
    /// An order was delivered to the instrument or given up.
    pub order: Arc<dyn Fn(OrderReport) + Send + Sync>,
    /// A host query for the upstream.
    pub query: crate::query::QueryHook,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            stored: Arc::new(|| {}),
            order: Arc::new(|_| {}),
            query: crate::query::no_query_upstream(),
        }
    }
}

/// Everything a driver needs, shared by all connections of a channel.
pub struct ChannelCtx {
    pub config: labagent_config::Channel,
    pub store: Store,
    pub counters: Arc<ChannelCounters>,
    /// Whether the system clock is synchronized (stored with each message; unknown: None).
    pub clock_synced: Arc<crate::clock::ClockFlag>,
    hooks: Hooks,
    tap: broadcast::Sender<WireEvent>,
    /// Signalled when an order for this channel was stored (the driver looks at the outbox).
    pub orders: tokio::sync::Notify,
    /// Held by the connection sending an order: a `listen` channel's connections share
    /// the outbox, and one order goes out at a time.
    pub order_lock: Arc<tokio::sync::Mutex<()>>,
    /// Becomes true when the agent is stopping: refuse new transmissions politely.
    pub stopping: watch::Receiver<bool>,
    log_lines: crate::loglimit::LineBudget,
}

impl ChannelCtx {
    pub fn new(
        config: labagent_config::Channel,
        store: Store,
        hooks: Hooks,
        stopping: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (tap, _) = broadcast::channel(1024);
        Arc::new(ChannelCtx {
            config,
            store,
            counters: Arc::new(ChannelCounters::default()),
            clock_synced: Arc::default(),
            hooks,
            tap,
            orders: tokio::sync::Notify::new(),
            order_lock: Arc::default(),
            stopping,
            log_lines: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Live wire traffic (for `labagent monitor`). Lagging subscribers lose events.
    pub fn subscribe_wire(&self) -> broadcast::Receiver<WireEvent> {
        self.tap.subscribe()
    }

    /// Records wire bytes for the monitor (cheap when nobody listens).
    pub fn tap(&self, dir: Dir, bytes: &[u8]) {
        if bytes.is_empty() || self.tap.receiver_count() == 0 {
            return;
        }
        let _ = self.tap.send(WireEvent {
            at: SystemTime::now(),
            dir,
            bytes: bytes.into(),
        });
    }

    /// Reports an order's fate to the uplink.
    pub fn report_order(&self, r: OrderReport) {
        (self.hooks.order)(r)
    }

    /// Wakes the uplink: a message or an order report is waiting.
    pub fn wake_uplink(&self) {
        (self.hooks.stored)()
    }

    /// Asks the upstream about a host query (see [`crate::query::QueryHook`]).
    pub fn ask_upstream(
        &self,
        q: crate::query::QueryRequest,
        deadline: std::time::Instant,
    ) -> tokio::sync::oneshot::Receiver<Option<String>> {
        (self.hooks.query)(q, deadline)
    }

    /// Bookkeeping after a store attempt: counters, log line (never data), uplink wake.
    pub fn after_store(&self, r: &Result<Appended, StoreError>, len: usize) {
        match r {
            Ok(a) => {
                if a.duplicate {
                    self.counters.duplicate();
                } else {
                    self.counters.stored(len);
                    (self.hooks.stored)();
                }
                crate::loglimit::stored(&self.log_lines, self.name(), &a.id, len, a.duplicate);
            }
            Err(e) => {
                self.counters.refused(&e.to_string());
                tracing::error!(channel = %self.name(), len, error = %e, "message refused by the store; instrument answered negatively");
            }
        }
    }
}

/// Supervises one channel: connection after connection, a driver session on each, until
/// `stopping` turns true.
pub async fn run_channel(ctx: Arc<ChannelCtx>, mut link: Link) {
    let mut stopping = ctx.stopping.clone();
    let concurrent = link.concurrent();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            c = link.next_connection() => c,
            _ = stopping.wait_for(|s| *s) => break,
        };
        if concurrent {
            sessions.spawn(serve(conn, ctx.clone()));
            while sessions.try_join_next().is_some() {}
        } else {
            serve(conn, ctx.clone()).await;
        }
    }
    while sessions.join_next().await.is_some() {}
}

/// One connection with the channel's protocol session; logs how it ended.
pub async fn serve(conn: Conn, ctx: Arc<ChannelCtx>) {
    use labagent_config::ProtocolSettings as P;
    let label = conn.label().to_string();
    let enc = ctx.config.encoding.clone();
    let r = match &ctx.config.settings {
        P::Astm(_) => astm::serve(conn, ctx.clone()).await,
        P::Hl7(c) => {
            let s = hl7::session(c, ctx.config.query_timeout);
            driver::run(conn, ctx.clone(), s, &|b, e| crate::meta::hl7(b, e, &enc)).await
        }
        P::Raw(c) => match raw::raw_config(c) {
            Ok(cfg) => {
                let s = labagent_hal::raw::RawSession::<VecBuf>::new(cfg);
                driver::run(conn, ctx.clone(), s, &|b, _| crate::meta::raw(b, &enc)).await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        ctx.counters.set_error(&e.to_string());
        tracing::debug!(channel = %ctx.name(), conn = %label, error = %e, "session ended");
    }
}

/// Makes a commit durable: its pieces written at once, then one wait for the sync that
/// covers them. `true` only if every piece is durable.
pub async fn commit(
    ctx: &ChannelCtx,
    d: &mut crate::store::commits::Durable,
    c: Commit<'_>,
    meta: crate::store::commits::MetaFn<'_>,
    stored: &mut Vec<crate::store::MessageId>,
) -> bool {
    let origin = crate::store::commits::Origin {
        channel: ctx.name(),
        protocol: ctx.config.protocol().into(),
        clock_synced: ctx.clock_synced.get(),
    };
    let (applied, ticket) = match d.apply(&ctx.store, &origin, c, meta) {
        Ok(a) => a,
        Err(e) => {
            ctx.after_store(&Err(e), 0);
            return false;
        }
    };
    if let Some(t) = ticket {
        if let Err(e) = ctx.store.wait_durable(t).await {
            d.not_durable();
            ctx.after_store(&Err(e), 0);
            return false;
        }
    }
    d.durable();
    for (a, len) in applied.stored {
        ctx.counters.received();
        ctx.after_store(&Ok(a), len);
        crate::query::remember(stored, a.id);
    }
    for (a, len, why) in applied.rejected {
        ctx.counters.received();
        ctx.counters.rejected();
        tracing::warn!(channel = %ctx.name(), id = %a.id, len, duplicate = a.duplicate, error = why,
            "not a message of this protocol; kept as rejected, answered with an error");
    }
    for (len, end) in applied.incomplete {
        ctx.counters.incomplete();
        tracing::warn!(channel = %ctx.name(), len, end = end.as_str(),
            "message ended before it was complete; kept as incomplete");
    }
    true
}
