//! `labagent run`: the store, one driver per channel, the uplink, wired together.
//!
//! Start order: store (the promise depends on it: no store, no channel) → uplink → channels.
//! Stop order (SIGTERM/SIGINT): channels stop accepting (ENQ answered NAK, new connections
//! refused) and finish the transmission in progress, bounded by a deadline → the uplink
//! finishes its request in flight → the store is synced and closed.

pub mod adapters;
pub mod settings;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use labagent_config::{Config, UplinkKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::channel::{run_channel, ChannelCtx, Hooks};
use crate::source::Link;
use crate::store::{Store, StoreError};
use crate::uplink::{SystemClock, Uplink, UplinkError, UplinkHandle};
use adapters::{StoreQueue, StoreTokenCache};

/// How long channels may take to finish a transmission in progress after a stop request.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How often delivered messages older than `keep_delivered` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot create the state directory {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
    #[error("{0}")]
    Uplink(#[from] UplinkError),
    #[error("{0}")]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("{0}")]
    Unavailable(String),
}

/// A running agent.
pub struct Agent {
    pub store: Store,
    pub channels: Vec<Arc<ChannelCtx>>,
    uplink: Option<UplinkHandle>,
    /// The MQTT uplink, when `uplink.kind = "mqtt"`.
    pub mqtt: Option<crate::mqtt::MqttHandle>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
    /// Opens the store, starts the uplink and every channel. Must run inside tokio.
    pub async fn start(config: Config) -> Result<Agent, RunError> {
        let c = config.clone();
        let store = tokio::task::spawn_blocking(move || open_store(&c))
            .await
            .map_err(|e| RunError::Unavailable(format!("store task: {e}")))??;
        let stats = store.stats().ok();
        if let Some(s) = &stats {
            tracing::info!(
                backlog = s.totals.pending,
                incomplete = s.totals.incomplete,
                rejected = s.totals.rejected,
                "store open"
            );
        }

        let mut hooks = Hooks::default();
        let mut mqtt_pending = None;
        let uplink = match config.uplink.kind {
            UplinkKind::Http => {
                let (us, auth) = settings::http_uplink(&config)
                    .ok_or_else(|| RunError::Unavailable("uplink.url is not set".into()))?;
                let up = Uplink::new(
                    us,
                    auth,
                    Arc::new(StoreQueue::new(store.clone())),
                    Arc::new(StoreTokenCache::new(store.clone())),
                    SystemClock::new(),
                )?;
                let handle = up.spawn()?;
                let waker = handle.waker();
                hooks.stored = Arc::new(waker);
                Some(handle)
            }
            UplinkKind::Mqtt => {
                let (h, pending) = crate::mqtt::prepare(
                    &config,
                    settings::auth_settings(&config.uplink.auth),
                    Arc::new(StoreQueue::new(store.clone())),
                    Arc::new(StoreTokenCache::new(store.clone())),
                    store.clone(),
                )?;
                hooks = h;
                mqtt_pending = Some(pending);
                None
            }
        };

        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut channels = Vec::new();
        for ch in &config.channels {
            let ctx = ChannelCtx::new(ch.clone(), store.clone(), hooks.clone(), stopping.clone());
            let link = Link::new(
                settings::endpoint(&ch.transport),
                settings::link_options(ch),
            );
            let span = tracing::info_span!("channel", name = %ch.name);
            let c = ctx.clone();
            tasks.spawn(tracing::Instrument::instrument(run_channel(c, link), span));
            channels.push(ctx);
        }
        let mqtt = mqtt_pending.map(|p| p.start(&channels));
        let s = store.clone();
        let mut prune_stop = stopping.clone();
        tasks.spawn(async move {
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
        tracing::info!(channels = channels.len(), "agent running");
        Ok(Agent {
            store,
            channels,
            uplink,
            mqtt,
            stop,
            tasks,
        })
    }

    /// Stops accepting, lets channels finish (bounded by [`STOP_DEADLINE`]), stops the
    /// uplink, syncs the store.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_DEADLINE, drain).await.is_err() {
            tracing::warn!("channels did not finish within the stop deadline; stopping anyway");
            self.tasks.abort_all();
        }
        if let Some(u) = self.uplink.take() {
            let _ = tokio::task::spawn_blocking(move || u.shutdown()).await;
        }
        if let Some(m) = self.mqtt.take() {
            m.shutdown().await;
        }
        let s = self.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.sync()).await {
            tracing::error!(error = %e, "final store sync failed");
        }
        tracing::info!("agent stopped");
    }

    /// Runs until `shutdown` completes, then stops.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("stop requested");
        self.stop().await;
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
