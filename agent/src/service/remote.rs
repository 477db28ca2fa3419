//! Remote commands in the running agent: intake (checks, record, audit), running them,
//! a pushed config on trial (confirm or roll back), start-up restore.
//!
//! # Flow
//!
//! A transport hands a command to `RemoteHub::intake` (`CommandPort`) (blocking): it is checked
//! (`remote::command`), and either refused (result stored, audit line) or recorded as
//! running in the store *before* the transport acknowledges it, then queued for the
//! agent's service loop, which runs it (`Agent::on_remote`). An id recorded before is
//! never run again: a finished one is answered from its stored result (sent again), a
//! running one is left to finish. Each command ends in exactly one result, stored durably
//! until delivered ([`RemoteHub::finish`]); transports send what
//! `CommandPort::pending_results` lists.
//!
//! # A pushed config on trial
//!
//! `config` validates `args.text` like `check-config`; keys that need a restart and
//! `[remote]` must equal the running ones. Then (files in `remote::files`): marker →
//! pushed file → reload, and the trial runs until [`Trial::deadline`]
//! (`[remote] rollback_after`). It succeeds when every listen socket is bound, every
//! serial port open (or waiting for its device, if it already was before the push), and
//! the uplink connected (MQTT) or a command poll that started after the apply succeeded
//! (HTTPS). Success: marker removed, then the result stored. Failure: the result stored
//! (`rolled-back`, why), the previous file restored, reloaded, marker removed.
//!
//! # Crash safety
//!
//! At start ([`startup_files`], before the config is read) a marker means the trial did
//! not finish: the previous file is restored (idempotent, see `remote::files`) and the
//! marker kept; once the store is open ([`RemoteHub::startup`]) the result is stored as
//! rolled back and the marker removed. A `config` record still running without a marker
//! was confirmed (marker removed) unless the pushed file does not name it (it never got
//! that far). Other commands still running were interrupted: they are reported, not run
//! again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use labagent_config::{Config, Transport};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::Agent;
use crate::remote::files::Marker;
use crate::source::PortState;
use crate::store::Store;

mod hub;
pub use hub::{result_doc, startup_files, FeedLink, Job, LastCommand, RemoteHub, RemoteView};

/// How often a trial's conditions are looked at.
const TRIAL_CHECK: Duration = Duration::from_millis(250);

/// Keeps the retained presence document current: `{"state":"online", ...status}`, at
/// most every `[remote] status_every`, only when something other than the uptime changed.
pub async fn presence(
    registry: Arc<super::status::Registry>,
    hub: Arc<RemoteHub>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Value> = None;
    loop {
        let reg = registry.clone();
        let enabled = hub.settings().enabled;
        if !enabled {
            last = None;
        } else if let Ok(snap) = tokio::task::spawn_blocking(move || reg.snapshot()).await {
            if let Ok(Value::Object(mut m)) = serde_json::to_value(&snap) {
                m.remove("uptime_s");
                let cmp = Value::Object(m.clone());
                if last.as_ref() != Some(&cmp) {
                    m.insert("uptime_s".into(), json!(snap.uptime_s));
                    let mut doc = serde_json::Map::new();
                    doc.insert("state".into(), json!("online"));
                    doc.extend(m);
                    hub.set_presence(serde_json::to_vec(&Value::Object(doc)).ok());
                    last = Some(cmp);
                }
            }
        }
        let every = hub.settings().status_every;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The HTTPS command feed and result sender of `config`, when remote management is on and
/// `commands_url` is set; `up` is the uploader (its TLS settings and authenticator).
pub fn start_feed(
    config: &Config,
    hub: &Arc<RemoteHub>,
    store: &Store,
    up: &crate::uplink::Uplink,
) -> Option<crate::remote::feed::RemoteFeed> {
    use crate::remote::feed::{self, CommandPages, RemoteFeed};
    use crate::uplink::feed::{Feed, FeedSettings};
    let r = config.remote.as_ref().filter(|r| r.enabled)?;
    let url = r.commands_url.clone()?;
    let start = || -> Result<RemoteFeed, String> {
        let s = up.settings();
        let http = crate::uplink::http::HttpClient::new(s).map_err(|e| e.to_string())?;
        let clock = crate::uplink::SystemClock::new();
        let handler = Arc::new(CommandPages {
            port: hub.clone(),
            store: store.clone(),
            via: url.clone(),
        });
        let f = Feed::new(
            FeedSettings {
                name: feed::NAME.into(),
                url: url.clone(),
                cursor: feed::NAME.into(),
                wait: feed::WAIT,
                poll: feed::IDLE,
                timeout: s.timeout,
                agent_id: s.agent_id.clone(),
            },
            http.clone(),
            up.authenticator(),
            handler,
            clock.clone(),
        )
        .spawn()
        .map_err(|e| e.to_string())?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        feed::spawn_sender(
            s.url.clone(),
            s.agent_id.clone(),
            http,
            up.authenticator(),
            hub.clone(),
            stop.clone(),
        )
        .map_err(|e| e.to_string())?;
        Ok(RemoteFeed::new(f, clock, stop))
    };
    match start() {
        Ok(h) => {
            hub.set_feed(Some(FeedLink {
                wake: h.waker(),
                status: h.status(),
            }));
            Some(h)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the remote command feed");
            None
        }
    }
}

/// A push on trial.
#[derive(Debug)]
pub struct Trial {
    pub job: Job,
    pub marker: Marker,
    pub deadline: Instant,
    pub applied_at: SystemTime,
    /// Channels whose serial port was waiting for its device before the push (name, path).
    pub waiting_before: BTreeSet<(String, PathBuf)>,
}

/// The agent's side of remote management: the job queue and the trial in progress.
pub struct Remote {
    pub hub: Arc<RemoteHub>,
    jobs: mpsc::UnboundedReceiver<Job>,
    pub trial: Option<Trial>,
}

/// What the service loop is woken for.
pub enum RemoteEvent {
    Job(Job),
    TrialCheck,
}

impl Remote {
    pub fn new(hub: Arc<RemoteHub>, jobs: mpsc::UnboundedReceiver<Job>) -> Remote {
        Remote {
            hub,
            jobs,
            trial: None,
        }
    }

    /// The next thing to do (cancel-safe).
    pub async fn next(&mut self) -> RemoteEvent {
        let trial = self.trial.is_some();
        tokio::select! {
            Some(j) = self.jobs.recv() => RemoteEvent::Job(j),
            _ = tokio::time::sleep(TRIAL_CHECK), if trial => RemoteEvent::TrialCheck,
        }
    }
}

/// Keys that need a restart, and `[remote]`: a pushed config must keep them.
fn restart_keys_differ(run: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if new.agent.id != run.agent.id {
        v.push("agent.id");
    }
    if new.agent.state_dir != run.agent.state_dir {
        v.push("agent.state_dir");
    }
    if new.agent.status_socket != run.agent.status_socket {
        v.push("agent.status_socket");
    }
    if new.agent.metrics != run.agent.metrics {
        v.push("agent.metrics");
    }
    if new.buffer != run.buffer {
        v.push("[buffer]");
    }
    if new.remote != run.remote {
        v.push("[remote]");
    }
    v
}

fn queue_request(args: &Value) -> Result<super::queue::QueueRequest, String> {
    use super::queue::QueueRequest;
    let op = args
        .get("op")
        .and_then(Value::as_str)
        .ok_or("args.op is required: list, show, retry or purge-delivered")?;
    let id = || {
        args.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("args.id is required for op \"{op}\""))
    };
    Ok(match op {
        "list" => QueueRequest::List {
            channel: args
                .get("channel")
                .and_then(Value::as_str)
                .map(str::to_string),
            state: match args.get("state") {
                None | Some(Value::Null) => None,
                Some(s) => Some(
                    serde_json::from_value(s.clone())
                        .map_err(|_| "args.state: pending, delivered, rejected or incomplete")?,
                ),
            },
            limit: args
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(1000) as usize,
        },
        "show" => QueueRequest::Show { id: id()? },
        "retry" => QueueRequest::Retry { id: id()? },
        "purge-delivered" => QueueRequest::PurgeDelivered,
        other => {
            return Err(format!(
                "unknown queue op \"{}\": list, show, retry or purge-delivered",
                other.chars().take(32).collect::<String>()
            ))
        }
    })
}

impl Agent {
    /// Runs one remote event from the service loop.
    pub(super) async fn on_remote(&mut self, r: &mut Remote, ev: RemoteEvent) {
        match ev {
            RemoteEvent::Job(job) => self.run_job(r, job).await,
            RemoteEvent::TrialCheck => self.check_trial(r).await,
        }
    }

    async fn run_job(&mut self, r: &mut Remote, job: Job) {
        let hub = r.hub.clone();
        let c = &job.cmd;
        let outcome: Result<Value, String> = match c.command.as_str() {
            "ping" => Ok(json!({"pong": true, "agent": self.config.agent.id,
                               "version": env!("CARGO_PKG_VERSION")})),
            "status" => {
                let reg = self.registry.clone();
                tokio::task::spawn_blocking(move || reg.snapshot())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string()))
            }
            "logs" => {
                let n = c
                    .args
                    .get("lines")
                    .and_then(Value::as_u64)
                    .unwrap_or(100)
                    .min(crate::remote::logring::CAPACITY as u64) as usize;
                Ok(json!({"lines": crate::remote::logring::global().last(n)}))
            }
            "queue" => match queue_request(&c.args) {
                Ok(req) => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || super::queue::execute(&store, &req))
                        .await
                    {
                        Ok(Ok(text)) => Ok(json!({"text": text})),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e),
            },
            "reload" => {
                if r.trial.is_some() {
                    Err(
                        "a pushed config is on trial; reload after it is confirmed or rolled back"
                            .into(),
                    )
                } else {
                    self.reload_checked(&hub.config_file()).await
                }
            }
            "config" => match self.push_config(r, &job).await {
                // On trial: the result comes when it is confirmed or rolled back.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            other => Err(format!("unknown command \"{other}\"")),
        };
        let label = if outcome.is_ok() { "ok" } else { "error" };
        hub.finish_async(&c.id, &c.command, &job.via, c.not_after, outcome, label)
            .await;
    }

    /// Re-reads `path` as SIGHUP does, reporting what happened.
    async fn reload_checked(&mut self, path: &Path) -> Result<Value, String> {
        let p = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || labagent_config::load(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("configuration not reloaded, the running one stays: {e}"))?;
        let needs_restart = self.reload(loaded.config).await;
        Ok(json!({"reloaded": true, "file": path.display().to_string(),
                  "needs_restart": needs_restart}))
    }

    /// Validates a pushed config and puts it in force on trial.
    async fn push_config(&mut self, r: &mut Remote, job: &Job) -> Result<(), String> {
        if let Some(t) = &r.trial {
            return Err(format!(
                "refused: the config of command {} is on trial; push again once it is confirmed or rolled back",
                t.job.cmd.id
            ));
        }
        let text = job
            .cmd
            .args
            .get("text")
            .and_then(Value::as_str)
            .ok_or("args.text (the whole config.toml) is required")?
            .to_string();
        let files = r.hub.files().clone();
        let pushed = files.pushed();
        let t2 = text.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            labagent_config::load_str(&t2, &pushed, &labagent_config::LoadOptions::default())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("refused: {e}"))?;
        let differ = restart_keys_differ(&self.config, &loaded.config);
        if !differ.is_empty() {
            return Err(format!(
                "refused: {} must equal the running value{} (a restart or a local edit changes {})",
                differ.join(", "),
                if differ.len() > 1 { "s" } else { "" },
                if differ.len() > 1 { "them" } else { "it" },
            ));
        }
        let waiting_before: BTreeSet<(String, PathBuf)> = self
            .channels
            .values()
            .filter(|c| c.port.borrow().state == PortState::WaitingForDevice)
            .filter_map(|c| match &c.config.transport {
                Transport::Serial { path, .. } => Some((c.config.name.clone(), path.clone())),
                _ => None,
            })
            .collect();
        let id = job.cmd.id.clone();
        let f2 = files.clone();
        tokio::task::spawn_blocking(move || f2.begin_trial(&id, &text))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write the pushed config: {e}"))?;
        let marker = Marker {
            id: job.cmd.id.clone(),
            previous: false,
        };
        let marker = files.read_marker().ok().flatten().unwrap_or(marker);
        let rollback_after = r.hub.settings().rollback_after;
        let applied_at = SystemTime::now();
        tracing::info!(command = %job.cmd.id, file = %files.pushed().display(),
            rollback_after_s = rollback_after.as_secs(), "pushed config in force, on trial");
        for w in &loaded.warnings {
            tracing::warn!("pushed config: {w}");
        }
        self.reload(loaded.config).await;
        r.hub.set_trial(Some(job.cmd.id.clone()));
        r.hub.poke();
        r.trial = Some(Trial {
            job: job.clone(),
            marker,
            deadline: Instant::now() + rollback_after,
            applied_at,
            waiting_before,
        });
        Ok(())
    }

    /// What still keeps a trial from success (empty: success).
    fn trial_missing(&self, t: &Trial, hub: &RemoteHub) -> Vec<String> {
        let mut missing = Vec::new();
        for c in self.channels.values() {
            let port = c.port.borrow().clone();
            let ok = match &c.config.transport {
                Transport::Listen(_) => port.state == PortState::Listening,
                Transport::Serial { path, .. } => {
                    port.state == PortState::Open
                        || (port.state == PortState::WaitingForDevice
                            && t.waiting_before
                                .contains(&(c.config.name.clone(), path.clone())))
                }
                // A TCP client's peer may be down for reasons of its own.
                Transport::Connect(_) => true,
            };
            if !ok {
                missing.push(format!(
                    "channel {}: port {}{}",
                    c.config.name,
                    match port.state {
                        PortState::WaitingForDevice => "waiting for its device",
                        PortState::Reconnecting => "not open",
                        PortState::Starting => "not tried yet",
                        _ => "not ready",
                    },
                    port.last_error
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        match &self.uplink {
            Some(super::UplinkRun::Mqtt(h)) => {
                let st = h.status().borrow().clone();
                if !st.connected {
                    missing.push(format!(
                        "uplink not connected to the broker{}",
                        st.common
                            .last_error
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ));
                }
            }
            Some(super::UplinkRun::Http(h, ..)) => {
                let st = h.subscribe().borrow().clone();
                let uploaded = st.last_delivery.is_some_and(|d| d >= t.applied_at);
                if !uploaded && !hub.polled_since(t.applied_at) {
                    missing.push(format!(
                        "no command poll or upload succeeded since the push{}",
                        st.last_error
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default()
                    ));
                }
            }
            _ => missing.push("uplink not running".into()),
        }
        missing
    }

    async fn check_trial(&mut self, r: &mut Remote) {
        let Some(t) = r.trial.as_ref() else { return };
        let missing = self.trial_missing(t, &r.hub);
        let hub = r.hub.clone();
        if missing.is_empty() {
            let Some(t) = r.trial.take() else { return };
            let files = hub.files().clone();
            let gone = tokio::task::spawn_blocking(move || files.end_trial()).await;
            if !matches!(gone, Ok(Ok(()))) {
                tracing::error!("cannot remove the trial marker: the push would be rolled back at the next start");
            }
            hub.set_trial(None);
            let c = &t.job.cmd;
            hub.finish_async(
                &c.id,
                &c.command,
                &t.job.via,
                c.not_after,
                Ok(json!({"outcome": "applied", "file": hub.files().pushed().display().to_string()})),
                "ok",
            )
            .await;
            return;
        }
        if Instant::now() < t.deadline {
            return;
        }
        let Some(t) = r.trial.take() else { return };
        let why = missing.join("; ");
        let c = &t.job.cmd;
        tracing::warn!(command = %c.id, %why, "pushed config did not come up within rollback_after: rolling back");
        // Result first, then the files (a crash in between leaves the marker: start-up
        // restores them).
        hub.finish_async(
            &c.id,
            &c.command,
            &t.job.via,
            c.not_after,
            Err(format!(
                "rolled-back: not up within {} s: {why}",
                hub.settings().rollback_after.as_secs()
            )),
            "rolled-back",
        )
        .await;
        let files = hub.files().clone();
        let m = t.marker.clone();
        match tokio::task::spawn_blocking(move || files.restore(&m)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot restore the previous config file"),
            Err(e) => tracing::error!(error = %e, "restore task failed"),
        }
        let path = hub.config_file();
        match self.reload_checked(&path).await {
            Ok(_) => tracing::info!(file = %path.display(), "previous config back in force"),
            Err(e) => tracing::error!(error = %e, "the previous config could not be reloaded"),
        }
        let files = hub.files().clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || files.end_trial()).await {
            tracing::error!(error = %e, "cannot remove the trial marker");
        }
        hub.set_trial(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_args_map_to_the_cli_requests() {
        use super::super::queue::QueueRequest;
        assert_eq!(
            queue_request(&json!({"op": "retry", "id": "a-1"})).unwrap(),
            QueueRequest::Retry { id: "a-1".into() }
        );
        assert!(queue_request(&json!({"op": "show"}))
            .unwrap_err()
            .contains("args.id"));
        assert!(queue_request(&json!({"op": "drop"}))
            .unwrap_err()
            .contains("unknown queue op"));
        assert_eq!(
            queue_request(&json!({"op": "purge-delivered"})).unwrap(),
            QueueRequest::PurgeDelivered
        );
    }
}
