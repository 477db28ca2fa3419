//! What the agent is doing, for `labagent status`, the metrics endpoint and systemd's
//! `STATUS=` line.
//!
//! The [`Registry`] holds live handles (channel contexts, port and uplink status
//! receivers, the store); [`Registry::snapshot`] turns them into an [`AgentStatus`] that
//! serializes to the JSON of `labagent status --json` and renders as text for humans.
//! Nothing here carries message bytes, secrets or tokens: counts, times, states, and error
//! texts that never quote data.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::channel::{ChannelCtx, ChannelSnapshot};
use crate::source::{PortState, PortStatus};
use crate::store::Store;
use crate::uplink::status::{UplinkState, UplinkStatus};

/// One channel as the registry knows it.
#[derive(Clone)]
pub struct ChannelEntry {
    pub ctx: Arc<ChannelCtx>,
    pub port: watch::Receiver<PortStatus>,
    /// `serial /dev/ttyUSB0 9600 8N1`, `listen 0.0.0.0:5000`, …
    pub transport: String,
}

/// The uplink as the registry knows it.
#[derive(Clone)]
pub struct UplinkEntry {
    /// `http` or `mqtt`.
    pub kind: &'static str,
    /// Where it goes (URL without credentials).
    pub target: String,
    pub status: UplinkSource,
}

/// Where an uplink publishes its status.
#[derive(Clone)]
pub enum UplinkSource {
    Http(watch::Receiver<UplinkStatus>),
    Mqtt(watch::Receiver<crate::mqtt::MqttStatus>),
}

impl UplinkSource {
    /// The status in the common shape (MQTT specifics such as in-flight counts are left out).
    pub fn current(&self) -> UplinkStatus {
        match self {
            UplinkSource::Http(rx) => rx.borrow().clone(),
            UplinkSource::Mqtt(rx) => rx.borrow().common.clone(),
        }
    }
}

/// Live handles, replaced as channels and uplinks are (re)started.
pub struct Registry {
    pub agent_id: String,
    pub started: SystemTime,
    pub store: Store,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Vec<ChannelEntry>,
    uplink: Option<UplinkEntry>,
    clock_synced: Option<bool>,
    remote: Option<Arc<super::remote::RemoteHub>>,
    /// The HTTPS order feed, when `orders_url` is set.
    feed: Option<tokio::sync::watch::Receiver<crate::uplink::feed::FeedStatus>>,
}

impl Registry {
    pub fn new(agent_id: String, store: Store) -> Arc<Registry> {
        Arc::new(Registry {
            agent_id,
            started: SystemTime::now(),
            store,
            inner: RwLock::new(Inner::default()),
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_channels(&self, channels: Vec<ChannelEntry>) {
        let mut w = self.write();
        for c in &channels {
            c.ctx.clock_synced.set(w.clock_synced);
        }
        w.channels = channels;
    }

    /// Fleet management, shown in status and metrics.
    pub fn set_remote(&self, hub: Option<Arc<super::remote::RemoteHub>>) {
        self.write().remote = hub;
    }

    pub fn set_uplink(&self, uplink: Option<UplinkEntry>) {
        self.write().uplink = uplink;
    }

    /// The order feed's status (`None`: no feed).
    pub fn set_feed(
        &self,
        feed: Option<tokio::sync::watch::Receiver<crate::uplink::feed::FeedStatus>>,
    ) {
        self.write().feed = feed;
    }

    /// Records the clock state (`None`: unknown) and hands it to every channel (stored
    /// with each message).
    pub fn set_clock_synced(&self, synced: Option<bool>) {
        let mut w = self.write();
        w.clock_synced = synced;
        for c in &w.channels {
            c.ctx.clock_synced.set(synced);
        }
    }

    pub fn clock_synced(&self) -> Option<bool> {
        self.read().clock_synced
    }

    pub fn channel(&self, name: &str) -> Option<Arc<ChannelCtx>> {
        self.read()
            .channels
            .iter()
            .find(|c| c.ctx.name() == name)
            .map(|c| c.ctx.clone())
    }

    pub fn channel_names(&self) -> Vec<String> {
        self.read()
            .channels
            .iter()
            .map(|c| c.ctx.name().to_string())
            .collect()
    }

    /// A consistent picture of everything (one store stats call; blocking, cheap).
    pub fn snapshot(&self) -> AgentStatus {
        let now = SystemTime::now();
        let stats = self.store.stats();
        let (stats, store_error) = match stats {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let inner = self.read();
        let mut channels = Vec::new();
        for c in &inner.channels {
            let port = c.port.borrow().clone();
            let kept = stats
                .as_ref()
                .and_then(|s| s.channels.iter().find(|x| x.channel == c.ctx.name()));
            channels.push(ChannelStatus {
                name: c.ctx.name().to_string(),
                protocol: c.ctx.config.protocol().as_str().to_string(),
                transport: c.transport.clone(),
                port: port_state(port.state).to_string(),
                connections: port.connections,
                port_opened: port.opened,
                port_attempts: port.attempts,
                port_error: port.last_error.clone(),
                backlog: kept.map_or(0, |k| k.counters.pending),
                oldest_pending_age_s: kept
                    .and_then(|k| k.oldest_pending)
                    .map(|(_, at)| age_s(now, at)),
                incomplete_kept: kept.map_or(0, |k| k.counters.incomplete),
                rejected_kept: kept.map_or(0, |k| k.counters.rejected),
                counters: c.ctx.counters.snapshot(),
            });
        }
        let uplink = inner.uplink.as_ref().map(|u| {
            let s = u.status.current();
            let (state, reason) = match &s.state {
                UplinkState::Paused { reason } => ("paused", Some(reason.clone())),
                UplinkState::CredentialsProblem { detail } => {
                    ("credentials problem", Some(detail.clone()))
                }
                UplinkState::BackingOff { wait } => (
                    "backing off",
                    Some(format!("retry in {} s", wait.as_secs())),
                ),
                UplinkState::Ok => ("ok", None),
                UplinkState::Starting => ("starting", None),
                UplinkState::Stopped => ("stopped", None),
            };
            UplinkView {
                kind: u.kind.to_string(),
                target: u.target.clone(),
                state: state.to_string(),
                reason,
                auth_mode: s.auth_mode.to_string(),
                token_expires_unix: s.token_expires_at.map(unix_s),
                last_delivery_unix: s.last_delivery.map(unix_s),
                delivered: s.delivered,
                rejected: s.rejected,
                retries: s.retries,
                token_requests: s.token_requests,
                latency_bounds_ms: s.latency.bounds_ms.clone(),
                latency_buckets: s.latency.buckets.clone(),
                latency_count: s.latency.count,
                latency_sum_us: s.latency.sum_us,
                last_error: s.last_error.clone(),
            }
        });
        let totals = stats.as_ref().map(|s| s.totals.clone());
        let remote = inner.remote.as_ref().map(|h| h.view());
        let feed = inner.feed.as_ref().map(|f| f.borrow().clone());
        let order_reports_pending = stats.as_ref().map_or(0, |s| {
            s.channels
                .iter()
                .find(|c| c.channel == crate::store::ORDER_REPORTS)
                .map_or(0, |c| c.counters.pending)
        });
        AgentStatus {
            feed,
            order_reports_pending,
            agent: self.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: age_s(now, self.started),
            started_unix: self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            clock_synchronized: inner.clock_synced,
            channels,
            uplink,
            store: StoreView {
                backlog: totals.as_ref().map_or(0, |t| t.pending),
                backlog_bytes: totals.as_ref().map_or(0, |t| t.pending_bytes),
                oldest_pending_age_s: stats.as_ref().and_then(|s| {
                    s.channels
                        .iter()
                        .filter_map(|c| c.oldest_pending.map(|(_, at)| at))
                        .min()
                        .map(|at| age_s(now, at))
                }),
                delivered_kept: totals.as_ref().map_or(0, |t| t.delivered),
                incomplete: totals.as_ref().map_or(0, |t| t.incomplete),
                rejected: totals.as_ref().map_or(0, |t| t.rejected),
                kept_bytes: totals.as_ref().map_or(0, |t| t.kept_bytes),
                dropped_undelivered: totals.as_ref().map_or(0, |t| t.dropped_undelivered),
                disk_bytes: stats.as_ref().map_or(0, |s| s.disk_bytes),
                syncs: stats.as_ref().map_or(0, |s| s.syncs),
                error: store_error,
            },
            remote,
        }
    }
}

/// Every value `ChannelStatus::port` takes (the metrics' state set).
pub const PORT_STATES: [&str; 5] = [
    "starting",
    "open",
    "listening",
    "waiting for device",
    "reconnecting",
];

/// Every value `UplinkView::state` takes (the metrics' state set).
pub const UPLINK_STATES: [&str; 6] = [
    "starting",
    "ok",
    "backing off",
    "paused",
    "credentials problem",
    "stopped",
];

fn port_state(s: PortState) -> &'static str {
    match s {
        PortState::Starting => "starting",
        PortState::Open => "open",
        PortState::Listening => "listening",
        PortState::WaitingForDevice => "waiting for device",
        PortState::Reconnecting => "reconnecting",
    }
}

fn age_s(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then).unwrap_or(Duration::ZERO).as_secs()
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// `labagent status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub agent: String,
    pub version: String,
    pub uptime_s: u64,
    /// Unix seconds when the agent started (`process_start_time_seconds`).
    #[serde(default)]
    pub started_unix: f64,
    /// `null` when the kernel's flag cannot be read.
    pub clock_synchronized: Option<bool>,
    pub channels: Vec<ChannelStatus>,
    pub uplink: Option<UplinkView>,
    pub store: StoreView,
    /// Fleet management: the config file in force, a trial, the last command.
    #[serde(default)]
    pub remote: Option<super::remote::RemoteView>,
    /// The HTTPS order feed (`orders_url`), if any.
    #[serde(default)]
    pub feed: Option<crate::uplink::feed::FeedStatus>,
    /// Order reports waiting for the uplink.
    #[serde(default)]
    pub order_reports_pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelStatus {
    pub name: String,
    pub protocol: String,
    pub transport: String,
    /// open | listening | waiting for device | reconnecting | starting
    pub port: String,
    pub connections: usize,
    /// Connections handed to the driver since start (serial opens, TCP accepts/connects).
    pub port_opened: u64,
    /// Open/connect/bind attempts since start, successful or not.
    pub port_attempts: u64,
    pub port_error: Option<String>,
    /// Undelivered messages of this channel in the store.
    pub backlog: u64,
    pub oldest_pending_age_s: Option<u64>,
    pub incomplete_kept: u64,
    pub rejected_kept: u64,
    /// Since the agent started.
    pub counters: ChannelSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UplinkView {
    pub kind: String,
    pub target: String,
    /// ok | starting | backing off | paused | credentials problem | stopped
    pub state: String,
    pub reason: Option<String>,
    /// none | basic | client_credentials | fallback: basic
    pub auth_mode: String,
    /// Expiry of the access token (never the token).
    pub token_expires_unix: Option<u64>,
    pub last_delivery_unix: Option<u64>,
    pub delivered: u64,
    pub rejected: u64,
    /// Waits after failed attempts.
    pub retries: u64,
    pub token_requests: u64,
    /// Upper bounds (ms) of the upload-latency buckets; the last is `[uplink] timeout`.
    #[serde(default)]
    pub latency_bounds_ms: Vec<u64>,
    /// Upload latency: non-cumulative counts per bucket of `latency_bounds_ms`, plus the
    /// overflow bucket.
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_us: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreView {
    pub backlog: u64,
    pub backlog_bytes: u64,
    pub oldest_pending_age_s: Option<u64>,
    pub delivered_kept: u64,
    pub incomplete: u64,
    pub rejected: u64,
    pub kept_bytes: u64,
    pub dropped_undelivered: u64,
    pub disk_bytes: u64,
    pub syncs: u64,
    pub error: Option<String>,
}

impl AgentStatus {
    /// The one-line summary for systemd's `STATUS=`: "3 channels, backlog 0, uplink ok".
    pub fn summary(&self) -> String {
        let open = self
            .channels
            .iter()
            .filter(|c| c.port == "open" || c.port == "listening")
            .count();
        let up = match &self.uplink {
            Some(u) => format!("uplink {}", u.state),
            None => "no uplink".to_string(),
        };
        format!(
            "{} channels ({open} open), backlog {}, {up}",
            self.channels.len(),
            self.store.backlog
        )
    }

    /// Human-readable text for `labagent status`.
    pub fn render(&self, now_unix: u64) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "labagent {} — agent {:?}, up {}",
            self.version,
            self.agent,
            human_duration(self.uptime_s)
        );
        match self.clock_synchronized {
            Some(true) => {}
            Some(false) => {
                let _ = writeln!(
                    s,
                    "clock: NOT synchronized (received-at times are flagged as unsynchronized)"
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "clock: synchronization unknown (the kernel's flag cannot be read; \
                     received-at times carry clock_synced = null)"
                );
            }
        }
        let _ = writeln!(s, "\nchannels:");
        if self.channels.is_empty() {
            let _ = writeln!(s, "  (none configured)");
        }
        for c in &self.channels {
            let conns = if c.transport.starts_with("listen") {
                format!(", {} connection(s)", c.connections)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {} ({}, {}): {}{}",
                c.name, c.protocol, c.transport, c.port, conns
            );
            let last = c
                .counters
                .last_message_ms
                .map(|ms| format!("{} ago", human_duration(now_unix.saturating_sub(ms / 1000))))
                .unwrap_or_else(|| "none yet".into());
            let _ = writeln!(
                s,
                "    last message {last}; stored {}, duplicates {}, refused {}, NAKs {}",
                c.counters.stored, c.counters.duplicates, c.counters.refused, c.counters.naks
            );
            let _ = writeln!(
                s,
                "    kept: backlog {}{}, incomplete {}, rejected {}",
                c.backlog,
                c.oldest_pending_age_s
                    .map(|a| format!(" (oldest {})", human_duration(a)))
                    .unwrap_or_default(),
                c.incomplete_kept,
                c.rejected_kept
            );
            let q = &c.counters.queries;
            if q.total() > 0 {
                let last = q
                    .last_answer_ms
                    .map(|ms| format!("{} ago", human_duration(now_unix.saturating_sub(ms / 1000))))
                    .unwrap_or_else(|| "none yet".into());
                let _ = writeln!(
                    s,
                    "    host queries: answered from upstream {}, from the order cache {}, nothing known {}; last answer {last}",
                    q.upstream, q.cache, q.none
                );
            }
            if let Some(e) = c.port_error.as_ref().or(c.counters.last_error.as_ref()) {
                let _ = writeln!(s, "    last error: {e}");
            }
        }
        let _ = writeln!(s, "\nuplink:");
        match &self.uplink {
            None => {
                let _ = writeln!(s, "  none");
            }
            Some(u) => {
                let _ = writeln!(
                    s,
                    "  {} {}: {}{}",
                    u.kind,
                    u.target,
                    u.state,
                    u.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                let token = u
                    .token_expires_unix
                    .map(|t| {
                        if t > now_unix {
                            format!(", token expires in {}", human_duration(t - now_unix))
                        } else {
                            ", token expired".to_string()
                        }
                    })
                    .unwrap_or_default();
                let _ = writeln!(s, "    auth: {}{token}", u.auth_mode);
                let last = u
                    .last_delivery_unix
                    .map(|t| format!("{} ago", human_duration(now_unix.saturating_sub(t))))
                    .unwrap_or_else(|| "none yet".into());
                let _ = writeln!(
                    s,
                    "    last delivery {last}; delivered {}, rejected {}",
                    u.delivered, u.rejected
                );
                if let Some(e) = &u.last_error {
                    let _ = writeln!(s, "    last error: {e}");
                }
            }
        }
        if let Some(f) = &self.feed {
            let last = f
                .last_poll_ms
                .map(|ms| format!("{} ago", human_duration(now_unix.saturating_sub(ms / 1000))))
                .unwrap_or_else(|| "none yet".into());
            let _ = writeln!(
                s,
                "  {} feed: {}; cursor {}; last answer {last}; {} taken in {} polls",
                f.name,
                f.state,
                f.cursor.as_deref().unwrap_or("(start)"),
                f.items,
                f.polls
            );
            if let Some(e) = &f.last_error {
                let _ = writeln!(s, "    last error: {e}");
            }
        }
        if self.order_reports_pending > 0 {
            let _ = writeln!(s, "  order reports waiting: {}", self.order_reports_pending);
        }
        let st = &self.store;
        let _ = writeln!(
            s,
            "\nstore: backlog {} ({} bytes){}, incomplete {}, rejected {}, delivered kept {}, {} on disk",
            st.backlog,
            st.backlog_bytes,
            st.oldest_pending_age_s
                .map(|a| format!(", oldest {}", human_duration(a)))
                .unwrap_or_default(),
            st.incomplete,
            st.rejected,
            st.delivered_kept,
            human_bytes(st.disk_bytes)
        );
        if st.dropped_undelivered > 0 {
            let _ = writeln!(
                s,
                "  WARNING: {} undelivered messages were dropped (when_full = drop_oldest)",
                st.dropped_undelivered
            );
        }
        if let Some(e) = &st.error {
            let _ = writeln!(s, "  store error: {e}");
        }
        if let Some(r) = &self.remote {
            let _ = writeln!(
                s,
                "\nconfig in force: {}{}",
                r.config_file,
                if r.pushed {
                    " (pushed remotely; `labagent remote reset` returns to the local file)"
                } else {
                    ""
                }
            );
            if let Some(t) = &r.trial {
                let _ = writeln!(s, "  on trial: the config pushed by command {t}");
            }
            let _ = writeln!(
                s,
                "remote commands: {}",
                if r.enabled { "enabled" } else { "off" }
            );
            if let Some(l) = &r.last {
                let _ = writeln!(
                    s,
                    "  last: {} {} — {}, {} ago",
                    l.command.as_deref().unwrap_or("?"),
                    l.id.as_deref().unwrap_or("(no id)"),
                    l.outcome,
                    human_duration(now_unix.saturating_sub(l.at_unix))
                );
            }
        }
        s
    }
}

pub fn human_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    if b >= MIB {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// `serial /dev/ttyUSB0 9600`, `listen 0.0.0.0:5000`, `connect 10.0.0.5:5000`.
pub fn describe_transport(t: &labagent_config::Transport) -> String {
    match t {
        labagent_config::Transport::Serial { path, baud, .. } => {
            format!("serial {} {baud}", path.display())
        }
        labagent_config::Transport::Listen(addr) => format!("listen {addr}"),
        labagent_config::Transport::Connect(addr) => format!("connect {addr}"),
    }
}
