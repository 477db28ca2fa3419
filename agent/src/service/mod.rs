//! `labagent run`: the store, one driver per channel, the uplink, wired together.
//!
//! Start order: store (the promise depends on it: no store, no channel) → uplink → channels.
//! Stop order (SIGTERM/SIGINT): channels stop accepting (ENQ answered NAK, new connections
//! refused) and finish the transmission in progress, bounded by a deadline → the uplink
//! finishes its request in flight → the store is synced and closed.

pub mod adapters;
pub mod control;
pub mod metrics;
pub mod notify;
pub mod orders;
pub mod process;
pub mod queue;
pub mod remote;
pub mod settings;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use labagent_config::{Config, UplinkKind};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::channel::{run_channel, ChannelCtx, Hooks, OrderReport};
use crate::source::Link;
use crate::store::{Store, StoreError};
use crate::uplink::{SystemClock, Uplink, UplinkError, UplinkHandle};
use adapters::{StoreQueue, StoreTokenCache};
pub use notify::Notifier;
use status::{ChannelEntry, Registry, UplinkEntry};

/// How long channels may take to finish a transmission in progress after a stop request.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How often delivered messages older than `keep_delivered` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the clock's synchronization state is read.
const CLOCK_EVERY: Duration = Duration::from_secs(30);
/// How long the store may take to answer the watchdog's health probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not start; each maps to its own exit code (`crate::exit`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The validated configuration still cannot be used as it is.
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot create the state directory {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
    #[error("{0}")]
    Uplink(#[from] UplinkError),
    #[error("{0}")]
    Mqtt(#[from] crate::mqtt::MqttError),
    /// A start-up task panicked (a bug).
    #[error("{0}")]
    Task(String),
    #[error("cannot open the status socket {path}: {source}")]
    StatusSocket {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the channels' thread: {0}")]
    Runtime(std::io::Error),
}

/// The running uplink, whichever kind.
enum UplinkRun {
    /// The uploader, the host-query workers when `query_url` is set, the order feed when
    /// `orders_url` is.
    Http(
        UplinkHandle,
        Option<crate::uplink::QueryUpstream>,
        Option<crate::uplink::feed::FeedHandle>,
    ),
    /// Prepared (hooks live) but not started: it needs the channels to route orders to.
    MqttPending(Box<crate::mqtt::Pending>),
    Mqtt(crate::mqtt::MqttHandle),
}

impl UplinkRun {
    async fn shutdown(self) {
        match self {
            UplinkRun::Http(h, q, feed) => {
                // Queries and the feed first: neither waits for a request in flight, and
                // waiting channels get their "nothing known" at once.
                if let Some(q) = q {
                    q.shutdown();
                }
                if let Some(f) = feed {
                    f.shutdown();
                }
                let _ = tokio::task::spawn_blocking(move || h.shutdown()).await;
            }
            UplinkRun::MqttPending(_) => {}
            UplinkRun::Mqtt(h) => h.shutdown().await,
        }
    }
}

/// One running channel.
struct RunningChannel {
    config: labagent_config::Channel,
    ctx: Arc<ChannelCtx>,
    port: watch::Receiver<crate::source::PortStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running agent.
pub struct Agent {
    pub store: Store,
    config: Config,
    registry: Arc<Registry>,
    /// What channels call into; swapped when the uplink is rebuilt.
    hooks: Arc<RwLock<Hooks>>,
    uplink: Option<UplinkRun>,
    channels: BTreeMap<String, RunningChannel>,
    /// Stops the helpers (prune, status socket, metrics).
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    notifier: Arc<Notifier>,
    /// The channels' own thread and runtime (`crate::ingest`).
    ingest: crate::ingest::Ingest,
    /// Fleet management (`remote`): taken by the service loop while it runs.
    remote: Option<remote::Remote>,
    hub: Arc<remote::RemoteHub>,
    /// The HTTPS command feed and result sender (`uplink.kind = "http"`).
    remote_feed: Option<crate::remote::feed::RemoteFeed>,
    /// The channels by name, for the order feed.
    channel_map: orders::ChannelMap,
}

/// Logs a clock state found at start (a change later is logged by the watcher).
fn log_clock(synced: Option<bool>) {
    match synced {
        Some(true) => {}
        Some(false) => tracing::warn!(
            "the system clock is not synchronized (no NTP yet?): messages are stored with clock_synced = false"
        ),
        None => tracing::warn!(
            "cannot read the kernel's clock synchronization flag (adjtimex refused: a sandbox?): \
             messages are stored with clock_synced unknown"
        ),
    }
}

/// Creates the state directory (0700) if needed.
pub fn ensure_state_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| RunError::StateDir {
        dir: dir.display().to_string(),
        source,
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    Ok(())
}

/// Opens the store of `config` (blocking).
pub fn open_store(config: &Config) -> Result<Store, RunError> {
    let dir = &config.agent.state_dir;
    ensure_state_dir(dir)?;
    let store_dir = dir.join("store");
    Store::open(&store_dir, settings::store_options(&config.buffer)).map_err(|source| {
        RunError::Store {
            dir: store_dir.display().to_string(),
            source,
        }
    })
}

impl Agent {
    /// Opens the store, starts the uplink, every channel, the status socket and metrics.
    /// Must run inside tokio. Does not notify systemd (see [`Agent::serve`]).
    pub async fn start(config: Config) -> Result<Agent, RunError> {
        Self::start_from(config, PathBuf::new()).await
    }

    /// [`Agent::start`] for a config read from `local` (`--config`): a pushed config may be
    /// in force instead (`remote`), and `reload` and SIGHUP read the file in force.
    pub async fn start_from(config: Config, local: PathBuf) -> Result<Agent, RunError> {
        let c = config.clone();
        let store = tokio::task::spawn_blocking(move || open_store(&c))
            .await
            .map_err(|e| RunError::Task(format!("the store task failed: {e}")))??;
        if let Ok(s) = store.stats() {
            tracing::info!(
                backlog = s.totals.pending,
                incomplete = s.totals.incomplete,
                rejected = s.totals.rejected,
                "store open"
            );
        }
        let registry = Registry::new(config.agent.id.clone(), store.clone());
        let (hub, jobs) = remote::RemoteHub::new(store.clone(), &config, local);
        let h = hub.clone();
        tokio::task::spawn_blocking(move || h.startup())
            .await
            .map_err(|e| RunError::Task(format!("the remote start-up task failed: {e}")))?;
        registry.set_remote(Some(hub.clone()));
        let synced = crate::clock::synchronized();
        registry.set_clock_synced(synced);
        log_clock(synced);
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let reg = registry.clone();
        let mut clock_stop = stopping.clone();
        tasks.spawn(async move {
            let mut last = synced;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CLOCK_EVERY) => {}
                    _ = async { let _ = clock_stop.wait_for(|s| *s).await; } => return,
                }
                let now = crate::clock::synchronized();
                if now != last {
                    match now {
                        Some(true) => tracing::info!("the system clock is now synchronized"),
                        Some(false) => tracing::warn!("the system clock lost synchronization"),
                        None => log_clock(None),
                    }
                    last = now;
                }
                reg.set_clock_synced(now);
            }
        });

        let sock = &config.agent.status_socket;
        let listener = control::bind(sock).map_err(|source| RunError::StatusSocket {
            path: sock.display().to_string(),
            source,
        })?;
        tasks.spawn(control::serve(
            listener,
            sock.clone(),
            registry.clone(),
            stopping.clone(),
        ));
        if let Some(addr) = config.agent.metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(%addr, "metrics listening");
            tasks.spawn(metrics::serve(l, registry.clone(), stopping.clone()));
        }

        let mut agent = Agent {
            store: store.clone(),
            config: config.clone(),
            registry,
            hooks: Arc::new(RwLock::new(Hooks::default())),
            uplink: None,
            channels: BTreeMap::new(),
            stop,
            tasks,
            notifier: Arc::new(Notifier::disabled()),
            ingest: crate::ingest::Ingest::start().map_err(RunError::Runtime)?,
            remote: Some(remote::Remote::new(hub.clone(), jobs)),
            hub: hub.clone(),
            remote_feed: None,
            channel_map: Arc::default(),
        };
        agent.tasks.spawn(remote::presence(
            agent.registry.clone(),
            hub,
            stopping.clone(),
        ));
        agent.start_uplink().await?;
        for ch in config.channels.clone() {
            agent.start_channel(ch);
        }
        agent.publish_channels();
        agent.start_pending_uplink();

        agent.tasks.spawn(orders::sweeper(
            store.clone(),
            config.buffer.orders_keep,
            agent.channel_hooks(),
            stopping.clone(),
        ));
        let s = store.clone();
        let mut prune_stop = stopping.clone();
        agent.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PRUNE_EVERY) => {}
                    _ = prune_stop.wait_for(|s| *s) => return,
                }
                let s = s.clone();
                let r = tokio::task::spawn_blocking(move || s.prune(std::time::SystemTime::now()))
                    .await;
                match r {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!(pruned = n, "delivered messages past keep_delivered removed")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "prune failed"),
                    _ => {}
                }
            }
        });
        tracing::debug!(channels = agent.channels.len(), "agent started");
        Ok(agent)
    }

    /// The live status (what `labagent status` shows).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The channel contexts, in name order.
    pub fn channels(&self) -> Vec<Arc<ChannelCtx>> {
        self.channels.values().map(|c| c.ctx.clone()).collect()
    }

    /// Hooks handed to channels: they call through the slot, so a rebuilt uplink is
    /// reached without restarting channels.
    fn channel_hooks(&self) -> Hooks {
        let a = self.hooks.clone();
        let b = self.hooks.clone();
        let c = self.hooks.clone();
        Hooks {
            stored: Arc::new(move || {
                let h = a.read().unwrap_or_else(|e| e.into_inner()).stored.clone();
                h()
            }),
            order: Arc::new(move |r: OrderReport| {
                let h = b.read().unwrap_or_else(|e| e.into_inner()).order.clone();
                h(r)
            }),
            query: Arc::new(move |q, deadline| {
                let h = c.read().unwrap_or_else(|e| e.into_inner()).query.clone();
                h(q, deadline)
            }),
        }
    }

    async fn start_uplink(&mut self) -> Result<(), RunError> {
        self.registry.set_feed(None);
        if let Some(f) = self.remote_feed.take() {
            f.shutdown();
        }
        self.hub.set_feed(None);
        let config = &self.config;
        let mut hooks = Hooks::default();
        let (run, entry) = match config.uplink.kind {
            UplinkKind::Http => {
                let (us, auth) = settings::http_uplink(config)
                    .ok_or_else(|| RunError::Config("uplink.url is not set".into()))?;
                let target = us.url.clone();
                let up = Uplink::new(
                    us,
                    auth,
                    Arc::new(StoreQueue::new(self.store.clone())),
                    Arc::new(StoreTokenCache::new(self.store.clone())),
                    SystemClock::new(),
                )?;
                let query = match &config.uplink.query_url {
                    Some(url) => {
                        let q = crate::uplink::QueryUpstream::start(
                            url,
                            up.settings(),
                            up.authenticator(),
                        )
                        .map_err(UplinkError::Tls)?;
                        hooks.query = q.hook();
                        Some(q)
                    }
                    None => None,
                };
                let feed = match &config.uplink.orders_url {
                    Some(url) => Some(self.start_feed(url, &up)?),
                    None => None,
                };
                self.remote_feed = remote::start_feed(config, &self.hub, &self.store, &up);
                let handle = up.spawn()?;
                hooks.stored = Arc::new(handle.waker());
                if let Some(f) = &feed {
                    self.registry.set_feed(Some(f.status()));
                }
                let entry = UplinkEntry {
                    kind: "http",
                    target,
                    status: status::UplinkSource::Http(handle.subscribe()),
                };
                (UplinkRun::Http(handle, query, feed), entry)
            }
            UplinkKind::Mqtt => {
                let (h, mut pending) = crate::mqtt::prepare(
                    config,
                    settings::auth_settings(&config.uplink.auth),
                    Arc::new(StoreQueue::new(self.store.clone())),
                    Arc::new(StoreTokenCache::new(self.store.clone())),
                    self.store.clone(),
                )?;
                hooks = h;
                if self.store.options().order_reports {
                    // Reports travel the durable path (`#order-reports`), published to the
                    // same orders/status topics; the direct path would say it twice.
                    hooks.order = Arc::new(|_| {});
                }
                if self.hub.settings().enabled {
                    pending.set_remote(self.hub.clone());
                }
                // Status appears once it starts (after the channels exist).
                let (_, rx) = watch::channel(crate::uplink::UplinkStatus::new(
                    crate::uplink::AuthMode::None,
                ));
                let rx = status::UplinkSource::Http(rx);
                let entry = UplinkEntry {
                    kind: "mqtt",
                    target: config
                        .uplink
                        .mqtt
                        .as_ref()
                        .map(|m| m.url.clone())
                        .unwrap_or_default(),
                    status: rx,
                };
                (UplinkRun::MqttPending(Box::new(pending)), entry)
            }
        };
        *self.hooks.write().unwrap_or_else(|e| e.into_inner()) = hooks;
        self.registry.set_uplink(Some(entry));
        self.uplink = Some(run);
        Ok(())
    }

    /// The HTTPS order feed of `url` (orders into the outbox, see `orders::OrderPages`),
    /// with the uploader's TLS settings and authenticator.
    fn start_feed(
        &self,
        url: &str,
        up: &Uplink,
    ) -> Result<crate::uplink::feed::FeedHandle, RunError> {
        use crate::uplink::feed::{Feed, FeedSettings};
        let clock = SystemClock::new();
        let handler = Arc::new(orders::OrderPages {
            store: self.store.clone(),
            channels: self.channel_map.clone(),
            wake_uplink: {
                let hooks = self.hooks.clone();
                Arc::new(move || {
                    let h = hooks
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .stored
                        .clone();
                    h()
                })
            },
        });
        let s = up.settings();
        let feed = Feed::new(
            FeedSettings {
                name: "orders".into(),
                url: url.to_string(),
                cursor: "orders".into(),
                wait: orders::FEED_WAIT,
                poll: self.config.uplink.orders_poll,
                timeout: s.timeout,
                agent_id: s.agent_id.clone(),
            },
            crate::uplink::http::HttpClient::new(s).map_err(UplinkError::Tls)?,
            up.authenticator(),
            handler,
            clock,
        );
        feed.spawn()
            .map_err(|e| RunError::Uplink(UplinkError::Thread(e.to_string())))
    }

    /// Starts an uplink that needed the channels first (MQTT routes orders to them).
    fn start_pending_uplink(&mut self) {
        // Anything but a pending MQTT uplink stays as it is (taking it out would drop it:
        // the HTTP uploader's handle, and with it the host-query workers).
        if !matches!(self.uplink, Some(UplinkRun::MqttPending(_))) {
            return;
        }
        if let Some(UplinkRun::MqttPending(p)) = self.uplink.take() {
            let handle = p.start(&self.channels());
            self.registry.set_uplink(Some(UplinkEntry {
                kind: "mqtt",
                target: self
                    .config
                    .uplink
                    .mqtt
                    .as_ref()
                    .map(|m| m.url.clone())
                    .unwrap_or_default(),
                status: status::UplinkSource::Mqtt(handle.status()),
            }));
            self.uplink = Some(UplinkRun::Mqtt(handle));
        }
    }

    fn start_channel(&mut self, ch: labagent_config::Channel) {
        let (stop, stopping) = watch::channel(false);
        let ctx = ChannelCtx::new(
            ch.clone(),
            self.store.clone(),
            self.channel_hooks(),
            stopping,
        );
        // The channel's port belongs to the ingest runtime, where its driver runs.
        let link = {
            let _ingest = self.ingest.enter();
            Link::new(
                settings::endpoint(&ch.transport),
                settings::link_options(&ch),
            )
        };
        let port = link.status();
        let span = tracing::info_span!("channel", name = %ch.name);
        let task = self.ingest.spawn(tracing::Instrument::instrument(
            run_channel(ctx.clone(), link),
            span,
        ));
        self.channels.insert(
            ch.name.clone(),
            RunningChannel {
                config: ch,
                ctx,
                port,
                stop,
                task,
            },
        );
    }

    /// Stops one channel: it stops accepting and finishes its transmission, bounded by
    /// [`STOP_DEADLINE`]. Its stored backlog stays and keeps draining.
    async fn stop_channel(&mut self, name: &str) {
        let Some(c) = self.channels.remove(name) else {
            return;
        };
        let _ = c.stop.send(true);
        let mut task = c.task;
        if tokio::time::timeout(STOP_DEADLINE, &mut task)
            .await
            .is_err()
        {
            tracing::warn!(
                channel = name,
                "channel did not finish within the stop deadline"
            );
            task.abort();
        }
    }

    fn publish_channels(&self) {
        *self.channel_map.write().unwrap_or_else(|e| e.into_inner()) = self
            .channels
            .iter()
            .map(|(n, c)| (n.clone(), c.ctx.clone()))
            .collect();
        self.registry.set_channels(
            self.channels
                .values()
                .map(|c| ChannelEntry {
                    ctx: c.ctx.clone(),
                    port: c.port.clone(),
                    transport: status::describe_transport(&c.config.transport),
                })
                .collect(),
        );
    }

    /// Applies a new configuration (SIGHUP): channels added, removed or changed are
    /// started, stopped or restarted; the others keep running. `[uplink]` changes rebuild
    /// the uplink. Returns what it could not apply (needs a restart).
    pub async fn reload(&mut self, new: Config) -> Vec<String> {
        let mut needs_restart = Vec::new();
        if new.agent.state_dir != self.config.agent.state_dir {
            needs_restart.push("agent.state_dir".to_string());
        }
        if new.agent.status_socket != self.config.agent.status_socket {
            needs_restart.push("agent.status_socket".to_string());
        }
        if new.agent.metrics != self.config.agent.metrics {
            needs_restart.push("agent.metrics".to_string());
        }
        if new.agent.id != self.config.agent.id {
            needs_restart.push("agent.id".to_string());
        }
        if new.buffer != self.config.buffer {
            needs_restart.push("[buffer]".to_string());
        }
        let old_channels: Vec<String> = self.channels.keys().cloned().collect();
        let mut removed = 0;
        let mut restarted = 0;
        let mut added = 0;
        for name in &old_channels {
            match new.channel(name) {
                None => {
                    self.stop_channel(name).await;
                    tracing::info!(channel = %name, "channel removed (its stored backlog keeps draining)");
                    removed += 1;
                }
                Some(c) if *c != self.channels[name].config => {
                    self.stop_channel(name).await;
                    self.start_channel(c.clone());
                    tracing::info!(channel = %name, "channel changed: restarted");
                    restarted += 1;
                }
                Some(_) => {}
            }
        }
        for c in &new.channels {
            if !self.channels.contains_key(&c.name) {
                self.start_channel(c.clone());
                tracing::info!(channel = %c.name, "channel added");
                added += 1;
            }
        }
        // MQTT routes orders to channel contexts: new or restarted channels need a new one.
        let routes_changed = matches!(self.uplink, Some(UplinkRun::Mqtt(_)))
            && (added > 0 || restarted > 0 || removed > 0);
        // `[remote]` decides what the uplink subscribes to and what it polls.
        let uplink_changed =
            new.uplink != self.config.uplink || new.remote != self.config.remote || routes_changed;
        self.hub.set_settings(new.remote_or_default());
        let keep = Config {
            agent: self.config.agent.clone(),
            buffer: self.config.buffer.clone(),
            uplink: new.uplink.clone(),
            channels: new.channels.clone(),
            remote: new.remote.clone(),
        };
        let old = std::mem::replace(&mut self.config, keep);
        if uplink_changed {
            if let Some(u) = self.uplink.take() {
                u.shutdown().await;
            }
            match self.start_uplink().await {
                Ok(()) => tracing::info!("uplink rebuilt"),
                Err(e) => {
                    // The file passed validation but the uplink cannot start with it: keep
                    // the one that ran (messages stay stored either way).
                    tracing::error!(error = %e, "new uplink settings cannot be used; the previous ones stay");
                    self.config.uplink = old.uplink;
                    if let Err(e) = self.start_uplink().await {
                        tracing::error!(error = %e, "the previous uplink did not restart either; messages stay stored");
                        *self.hooks.write().unwrap_or_else(|e| e.into_inner()) = Hooks::default();
                        self.registry.set_uplink(None);
                    }
                }
            }
            self.start_pending_uplink();
        }
        self.publish_channels();
        tracing::info!(
            added,
            removed,
            restarted,
            uplink_rebuilt = uplink_changed,
            "configuration reloaded"
        );
        for k in &needs_restart {
            tracing::warn!(key = %k, "this setting changed but takes effect only after a restart");
        }
        needs_restart
    }

    /// Health for the watchdog — the store answers and every channel task is alive (a
    /// dead uplink is not unhealthy: buffering is the job) — and the `STATUS=` line, from
    /// one snapshot.
    pub async fn health(&self) -> (Result<(), String>, String) {
        for (name, c) in &self.channels {
            if c.task.is_finished() {
                return (Err(format!("channel {name} task ended")), String::new());
            }
        }
        let r = self.registry.clone();
        match tokio::time::timeout(
            HEALTH_TIMEOUT,
            tokio::task::spawn_blocking(move || r.snapshot()),
        )
        .await
        {
            Ok(Ok(snap)) => match &snap.store.error {
                None => (Ok(()), snap.summary()),
                Some(e) => (Err(format!("store: {e}")), snap.summary()),
            },
            Ok(Err(e)) => (Err(format!("status task: {e}")), String::new()),
            Err(_) => (Err("store did not answer".into()), String::new()),
        }
    }

    /// Stops accepting, lets channels finish (bounded by [`STOP_DEADLINE`]), stops the
    /// uplink, syncs the store.
    pub async fn stop(mut self) {
        self.notifier.stopping();
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for c in self.channels.values() {
            let _ = c.stop.send(true);
        }
        let mut joins = Vec::new();
        for n in names {
            if let Some(c) = self.channels.remove(&n) {
                joins.push(c.task);
            }
        }
        let drain = async {
            for j in &mut joins {
                let _ = j.await;
            }
        };
        if tokio::time::timeout(STOP_DEADLINE, drain).await.is_err() {
            tracing::warn!("channels did not finish within the stop deadline; stopping anyway");
            for j in &joins {
                j.abort();
            }
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(f) = self.remote_feed.take() {
            f.shutdown();
        }
        if let Some(u) = self.uplink.take() {
            u.shutdown().await;
        }
        let s = self.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.sync()).await {
            tracing::error!(error = %e, "final store sync failed");
        }
        tracing::info!("agent stopped");
    }

    /// The service loop of `labagent run`: tells systemd READY, feeds the watchdog while
    /// healthy, updates STATUS, reloads `config_path` on SIGHUP, stops on SIGTERM/SIGINT.
    pub async fn serve(mut self, config_path: PathBuf, notifier: Notifier) {
        use tokio::signal::unix::{signal, SignalKind};
        self.notifier = Arc::new(notifier);
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        let summary = self.summary().await;
        self.notifier.ready(&summary);
        // Said once the signals are handled: a SIGHUP from now on reloads.
        tracing::info!(channels = self.channels.len(), "agent running");
        let watchdog = self.notifier.watchdog_every().is_some();
        // Without a watchdog the same tick refreshes STATUS= and logs ill health.
        let every = self
            .notifier
            .watchdog_every()
            .unwrap_or(Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = summary;
        let mut remote = self.remote.take();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                Some(ev) = async { match remote.as_mut() { Some(r) => Some(r.next().await), None => None } } => {
                    if let Some(r) = remote.as_mut() {
                        self.on_remote(r, ev).await;
                    }
                }
                _ = hup.recv() => {
                    self.notifier.reloading();
                    // The file in force: a pushed one while it exists.
                    let path = if config_path.as_os_str().is_empty() {
                        config_path.clone()
                    } else {
                        self.hub.files().in_force(&config_path)
                    };
                    tracing::info!(file = %path.display(), "reloading the configuration");
                    self.reload_from(&path).await;
                    let s = self.summary().await;
                    self.notifier.ready(&s);
                    last_status = s;
                }
                _ = tick.tick() => {
                    let (health, s) = self.health().await;
                    match health {
                        Ok(()) if watchdog => self.notifier.watchdog(),
                        Ok(()) => {}
                        Err(why) => tracing::error!(%why, "unhealthy: not feeding the watchdog"),
                    }
                    if !s.is_empty() && s != last_status {
                        self.notifier.status(&s);
                        last_status = s;
                    }
                }
            }
        }
        tracing::info!("stop requested");
        self.stop().await;
    }

    async fn reload_from(&mut self, path: &Path) {
        let p = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || labagent_config::load(&p)).await;
        match loaded {
            Ok(Ok(l)) => {
                for w in &l.warnings {
                    tracing::warn!("config: {w}");
                }
                self.reload(l.config).await;
            }
            Ok(Err(e)) => {
                tracing::error!("configuration not reloaded, the running one stays: {e}");
            }
            Err(e) => tracing::error!("configuration not reloaded: {e}"),
        }
    }

    async fn summary(&self) -> String {
        let r = self.registry.clone();
        tokio::task::spawn_blocking(move || r.snapshot().summary())
            .await
            .unwrap_or_default()
    }
}
