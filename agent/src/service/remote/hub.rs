//! The command side shared by the transports and the service loop: intake (checks,
//! record before it runs, refusals and repeats answered from the store, audit), results
//! kept until delivered, the view for status and metrics, start-up (see the parent
//! module's "Crash safety").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use labagent_config::Config;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::remote::command::{self, Command, Policy};
use crate::remote::files::Files;
use crate::remote::port::CommandPort;
use crate::store::{CommandRecord, CommandState, Store};

/// A command accepted and recorded, waiting for the service loop.
#[derive(Debug, Clone)]
pub struct Job {
    pub cmd: Command,
    pub via: String,
}

/// The last command, for `labagent status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCommand {
    pub id: Option<String>,
    pub command: Option<String>,
    pub outcome: String,
    pub at_unix: u64,
}

/// Fleet management as `labagent status --json` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteView {
    pub enabled: bool,
    /// The config file in force.
    pub config_file: String,
    /// A pushed config is in force (not the local file).
    pub pushed: bool,
    /// The command whose pushed config is on trial.
    pub trial: Option<String>,
    pub last: Option<LastCommand>,
    /// (command, outcome) → count since start.
    pub counts: Vec<(String, String, u64)>,
}

/// The command side, shared by the transports and the service loop.
pub struct RemoteHub {
    store: Store,
    agent_id: String,
    local: PathBuf,
    files: Files,
    remote: RwLock<labagent_config::Remote>,
    jobs: mpsc::UnboundedSender<Job>,
    ready: Arc<Notify>,
    generation: (Mutex<u64>, Condvar),
    /// The HTTPS command feed: its waker and status (trials).
    feed: Mutex<Option<FeedLink>>,
    presence: watch::Sender<Option<Vec<u8>>>,
    last: Mutex<Option<LastCommand>>,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    trial: Mutex<Option<String>>,
    /// Wall-clock start of the latest successful command poll (HTTPS).
    poll_ok: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for RemoteHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHub")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the hub knows of the running command feed.
pub struct FeedLink {
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub status: watch::Receiver<crate::uplink::feed::FeedStatus>,
}

/// The result document: `{"id","ok","result"|"error","at"}`.
pub fn result_doc(id: &str, outcome: &Result<Value, String>) -> Value {
    let at = crate::calendar::rfc3339(SystemTime::now());
    match outcome {
        Ok(v) => json!({"id": id, "ok": true, "result": v, "at": at}),
        Err(e) => json!({"id": id, "ok": false, "error": e, "at": at}),
    }
}

impl RemoteHub {
    /// The hub and the receiving end of its job queue.
    pub fn new(
        store: Store,
        config: &Config,
        local: PathBuf,
    ) -> (Arc<RemoteHub>, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (presence, _) = watch::channel(None);
        let hub = RemoteHub {
            store,
            agent_id: config.agent.id.clone(),
            local,
            files: Files::new(&config.agent.state_dir),
            remote: RwLock::new(config.remote_or_default()),
            jobs: tx,
            ready: Arc::new(Notify::new()),
            generation: (Mutex::new(0), Condvar::new()),
            feed: Mutex::new(None),
            presence,
            last: Mutex::new(None),
            counts: Mutex::new(BTreeMap::new()),
            trial: Mutex::new(None),
            poll_ok: Mutex::new(None),
        };
        (Arc::new(hub), rx)
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    /// `[remote]` as running now.
    pub fn settings(&self) -> labagent_config::Remote {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A local reload may change `[remote]`.
    pub fn set_settings(&self, r: labagent_config::Remote) {
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// The config file in force.
    pub fn config_file(&self) -> PathBuf {
        self.files.in_force(&self.local)
    }

    fn policy(&self) -> Policy {
        let r = self.settings();
        Policy {
            agent_id: self.agent_id.clone(),
            allow: r.allow.clone(),
            signing_key: r.signing_key.map(|k| k.public),
        }
    }

    /// One audit line (never the arguments or a signature) and the counters.
    fn audit(&self, id: Option<&str>, cmd: Option<&str>, via: &str, outcome: &str, why: &str) {
        tracing::info!(
            id = id.unwrap_or("-"),
            command = cmd.unwrap_or("-"),
            via,
            outcome,
            detail = why,
            "remote command"
        );
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((cmd.unwrap_or("unknown").to_string(), outcome.to_string()))
            .or_default() += 1;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastCommand {
            id: id.map(str::to_string),
            command: cmd.map(str::to_string),
            outcome: outcome.to_string(),
            at_unix: unix_now(),
        });
    }

    fn signal_results(&self) {
        self.ready.notify_waiters();
        self.ready.notify_one();
        let (m, c) = &self.generation;
        *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        c.notify_all();
    }

    /// Stores the result of command `id` (durable), audits it, wakes the transports.
    pub fn finish(
        &self,
        id: &str,
        cmd: &str,
        via: &str,
        not_after: i64,
        outcome: Result<Value, String>,
        label: &str,
    ) {
        let doc = result_doc(id, &outcome);
        let rec = CommandRecord {
            id: id.to_string(),
            command: cmd.to_string(),
            state: CommandState::Done,
            not_after_unix: u64::try_from(not_after).unwrap_or(0),
            result: Some(doc),
            delivered: false,
            refused: false,
            via: via.to_string(),
        };
        if let Err(e) = self.store.command_put(&rec) {
            tracing::error!(id, error = %e, "cannot store a remote command's result");
        }
        let why = match &outcome {
            Ok(_) => String::new(),
            Err(e) => e.clone(),
        };
        self.audit(Some(id), Some(cmd), via, label, &why);
        self.signal_results();
    }

    /// Wakes a command feed waiting between polls (a trial wants a fresh poll).
    pub fn poke(&self) {
        if let Some(f) = self.feed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            (f.wake)();
        }
    }

    /// The running command feed (or none).
    pub fn set_feed(&self, f: Option<FeedLink>) {
        *self.feed.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// [`RemoteHub::finish`] off the runtime (the store write waits for an fsync).
    pub async fn finish_async(
        self: &Arc<Self>,
        id: &str,
        cmd: &str,
        via: &str,
        not_after: i64,
        outcome: Result<Value, String>,
        label: &'static str,
    ) {
        let (h, id, cmd, via) = (
            self.clone(),
            id.to_string(),
            cmd.to_string(),
            via.to_string(),
        );
        if let Err(e) = tokio::task::spawn_blocking(move || {
            h.finish(&id, &cmd, &via, not_after, outcome, label)
        })
        .await
        {
            tracing::error!(error = %e, "remote result task failed");
        }
    }

    /// Publishes the retained presence document.
    pub fn set_presence(&self, doc: Option<Vec<u8>>) {
        self.presence.send_replace(doc);
    }

    /// A command poll or result upload that started at or after `t` succeeded.
    pub fn polled_since(&self, t: SystemTime) -> bool {
        let t_ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let polled = self
            .feed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|f| f.status.borrow().last_ok_started_ms)
            .is_some_and(|s| s >= t_ms);
        polled
            || self
                .poll_ok
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|p| p >= t)
    }

    pub fn set_trial(&self, id: Option<String>) {
        *self.trial.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// For status and metrics.
    pub fn view(&self) -> RemoteView {
        let file = self.config_file();
        RemoteView {
            enabled: self.settings().enabled,
            pushed: file != self.local,
            config_file: file.display().to_string(),
            trial: self.trial.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            last: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            counts: self
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((c, o), n)| (c.clone(), o.clone(), *n))
                .collect(),
        }
    }

    /// Finishes what a stop or crash left open (see the module doc). Blocking.
    pub fn startup(&self) {
        let marker = match self.files.read_marker() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the trial marker; treating it as a trial to roll back");
                None
            }
        };
        let records = match self.store.commands() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read remote command records");
                Vec::new()
            }
        };
        for r in records.iter().filter(|r| r.state == CommandState::Running) {
            let on_trial = marker.as_ref().is_some_and(|m| m.id == r.id);
            let not_after = i64::try_from(r.not_after_unix).unwrap_or(0);
            let (outcome, label) = if r.command == "config" && on_trial {
                (
                    Err("rolled-back: the agent stopped or restarted during the trial; the previous config was restored".to_string()),
                    "rolled-back",
                )
            } else if r.command == "config"
                && self.files.pushed_by().as_deref() == Some(r.id.as_str())
            {
                (
                    Ok(
                        json!({"outcome": "applied", "file": self.files.pushed().display().to_string()}),
                    ),
                    "ok",
                )
            } else {
                (
                    Err(
                        "interrupted: the agent stopped before it finished; not run again"
                            .to_string(),
                    ),
                    "error",
                )
            };
            self.finish(&r.id, &r.command, &r.via, not_after, outcome, label);
        }
        if let Some(m) = marker {
            if let Err(e) = self.files.end_trial() {
                tracing::error!(error = %e, "cannot remove the trial marker");
            }
            tracing::warn!(command = %m.id, "a pushed config's trial did not finish before the last stop: the previous config is in force");
        }
        match self.store.commands_prune(unix_now()) {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "old remote command records removed"),
            Err(e) => tracing::warn!(error = %e, "cannot prune remote command records"),
            _ => {}
        }
        if !self
            .store
            .commands_undelivered()
            .map_or(true, |v| v.is_empty())
        {
            self.signal_results();
        }
    }
}

impl CommandPort for RemoteHub {
    fn intake(&self, payload: &[u8], via: &str) -> Result<(), String> {
        let policy = self.policy();
        let synced = crate::clock::synchronized();
        match command::check(payload, &policy, SystemTime::now(), synced) {
            Err(r) => {
                self.audit(
                    r.id.as_deref(),
                    r.command.as_deref(),
                    via,
                    "refused",
                    &r.why,
                );
                let Some(id) = r.id else { return Ok(()) };
                let existing = self.store.command_get(&id).map_err(|e| e.to_string())?;
                if existing.is_some_and(|e| !e.refused) {
                    // A refused copy of a known command changes nothing.
                    return Ok(());
                }
                let max = unix_now() + command::MAX_AHEAD.as_secs();
                let keep = r.not_after.map_or(max, |n| {
                    u64::try_from(n).unwrap_or(0).clamp(unix_now(), max)
                });
                let rec = CommandRecord {
                    id: id.clone(),
                    command: r.command.unwrap_or_default(),
                    state: CommandState::Done,
                    not_after_unix: keep,
                    result: Some(result_doc(&id, &Err(format!("refused: {}", r.why)))),
                    delivered: false,
                    refused: true,
                    via: via.to_string(),
                };
                self.store.command_put(&rec).map_err(|e| e.to_string())?;
                self.signal_results();
                Ok(())
            }
            Ok(cmd) => {
                let existing = self.store.command_get(&cmd.id).map_err(|e| e.to_string())?;
                if let Some(mut rec) = existing.filter(|e| !e.refused) {
                    self.audit(
                        Some(&cmd.id),
                        Some(&cmd.command),
                        via,
                        "repeated",
                        "id seen before: answered from the stored result, not run again",
                    );
                    if rec.state == CommandState::Done {
                        rec.delivered = false;
                        self.store.command_put(&rec).map_err(|e| e.to_string())?;
                        self.signal_results();
                    }
                    return Ok(());
                }
                let rec = CommandRecord {
                    id: cmd.id.clone(),
                    command: cmd.command.clone(),
                    state: CommandState::Running,
                    not_after_unix: u64::try_from(cmd.not_after).unwrap_or(0),
                    result: None,
                    delivered: false,
                    refused: false,
                    via: via.to_string(),
                };
                self.store.command_put(&rec).map_err(|e| e.to_string())?;
                let _ = self.jobs.send(Job {
                    cmd,
                    via: via.to_string(),
                });
                Ok(())
            }
        }
    }

    fn pending_results(&self) -> Vec<(String, Vec<u8>)> {
        match self.store.commands_undelivered() {
            Ok(v) => v
                .into_iter()
                .filter_map(|r| {
                    let doc = r.result?;
                    Some((r.id, serde_json::to_vec(&doc).unwrap_or_default()))
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read remote command results");
                Vec::new()
            }
        }
    }

    fn delivered(&self, id: &str) {
        if let Err(e) = self.store.command_delivered(id) {
            tracing::warn!(id, error = %e, "cannot mark a command result delivered (it may be sent again)");
        }
    }

    fn results_ready(&self) -> Arc<Notify> {
        self.ready.clone()
    }

    fn wait_results(&self, seen: u64, timeout: Duration) -> u64 {
        let (m, c) = &self.generation;
        let g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = c
            .wait_timeout_while(g, timeout, |g| *g == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }

    fn presence(&self) -> watch::Receiver<Option<Vec<u8>>> {
        self.presence.subscribe()
    }

    fn poll_ok(&self, started: SystemTime) {
        let mut p = self.poll_ok.lock().unwrap_or_else(|e| e.into_inner());
        if p.map_or(true, |old| started > old) {
            *p = Some(started);
        }
    }
}

/// Before the config is read at start: finishes an interrupted trial on disk (restores
/// the previous file; the marker stays until the store holds the result). Returns the
/// file in force and notes to log once logging runs.
pub fn startup_files(local: &Path, state_dir: &Path) -> (PathBuf, Vec<String>) {
    let files = Files::new(state_dir);
    let mut notes = Vec::new();
    match files.read_marker() {
        Ok(Some(m)) => match files.restore(&m) {
            Ok(()) => notes.push(format!(
                "the pushed config of command {} was on trial when the agent stopped: the previous config is restored",
                m.id
            )),
            Err(e) => notes.push(format!(
                "cannot restore the config before command {}'s push: {e}",
                m.id
            )),
        },
        Ok(None) => {}
        Err(e) => notes.push(format!("cannot read the trial marker: {e}")),
    }
    (files.in_force(local), notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(dir: &Path) -> (Arc<RemoteHub>, mpsc::UnboundedReceiver<Job>, Store) {
        let text = format!(
            "[agent]\nid = \"lab\"\nstate_dir = \"{}\"\n[uplink]\nkind = \"http\"\n\
             url = \"https://x.example/in\"\n[uplink.auth]\nmethod = \"none\"\n\
             [remote]\nenabled = true\nallow = [\"ping\", \"config\"]\n\
             commands_url = \"https://x.example/c\"\n",
            dir.display()
        );
        let config = labagent_config::load_str(
            &text,
            Path::new("/c.toml"),
            &labagent_config::LoadOptions::with_env(Vec::<(String, String)>::new()),
        )
        .unwrap()
        .config;
        let store = Store::open(dir.join("store"), Default::default()).unwrap();
        let (h, rx) = RemoteHub::new(store.clone(), &config, dir.join("local.toml"));
        (h, rx, store)
    }

    fn cmd(id: &str, command: &str, agent: &str) -> Vec<u8> {
        let at = crate::calendar::rfc3339(SystemTime::now() + Duration::from_secs(600));
        json!({"id": id, "agent": agent, "command": command, "args": {}, "not_after": at})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn recorded_before_it_runs_repeats_answered_refusals_reported() {
        let d = tempfile::tempdir().unwrap();
        let (h, mut jobs, store) = hub(d.path());
        h.intake(&cmd("a", "ping", "lab"), "t").unwrap();
        let j = jobs.try_recv().expect("queued");
        assert_eq!(j.cmd.id, "a");
        assert_eq!(
            store.command_get("a").unwrap().unwrap().state,
            CommandState::Running,
            "recorded before it runs"
        );
        // Again while running: not queued twice, nothing to send yet.
        h.intake(&cmd("a", "ping", "lab"), "t").unwrap();
        assert!(jobs.try_recv().is_err());
        assert!(h.pending_results().is_empty());
        h.finish("a", "ping", "t", i64::MAX, Ok(json!({"pong": true})), "ok");
        assert_eq!(h.pending_results().len(), 1);
        h.delivered("a");
        assert!(h.pending_results().is_empty());
        // Again once done: answered from the record, not run.
        h.intake(&cmd("a", "ping", "lab"), "t").unwrap();
        assert!(jobs.try_recv().is_err());
        let again = h.pending_results();
        assert_eq!(again.len(), 1);
        let doc: Value = serde_json::from_slice(&again[0].1).unwrap();
        assert_eq!(doc["result"]["pong"], true);
        h.delivered("a");

        // Refused: reported under its id; a refused copy of a known id changes nothing.
        h.intake(&cmd("b", "status", "lab"), "t").unwrap();
        let r = h.pending_results();
        let doc: Value = serde_json::from_slice(&r[0].1).unwrap();
        assert!(
            doc["error"].as_str().unwrap().contains("not allowed"),
            "{doc}"
        );
        h.intake(&cmd("a", "ping", "other"), "t").unwrap();
        assert!(!store.command_get("a").unwrap().unwrap().refused);
        // A valid command may reuse a refused id.
        h.intake(&cmd("b", "ping", "lab"), "t").unwrap();
        assert_eq!(jobs.try_recv().unwrap().cmd.id, "b");
        let v = h.view();
        assert!(v
            .counts
            .iter()
            .any(|(c, o, n)| c == "ping" && o == "repeated" && *n == 2));
        // An accepted command is audited when it ends: the last one is the refusal.
        assert_eq!(v.last.unwrap().outcome, "refused");
    }

    #[test]
    fn startup_finishes_what_a_crash_left_open() {
        let d = tempfile::tempdir().unwrap();
        let (h, mut jobs, store) = hub(d.path());
        for (id, c) in [("p", "ping"), ("c1", "config"), ("c2", "config")] {
            h.intake(&cmd(id, c, "lab"), "t").unwrap();
            jobs.try_recv().unwrap();
        }
        // c1 was confirmed (marker gone, its file in force) before the crash; c2 was on
        // trial (marker, its file written).
        h.files().begin_trial("c1", "A\n").unwrap();
        h.files().end_trial().unwrap();
        h.files().begin_trial("c2", "B\n").unwrap();
        assert!(h.files().read_marker().unwrap().is_some());
        drop((h, jobs));
        let (local, _) = startup_files(&d.path().join("local.toml"), d.path());
        assert_eq!(
            h_files(d.path()).pushed_by().as_deref(),
            Some("c1"),
            "c2 undone"
        );
        assert_eq!(local, h_files(d.path()).pushed());
        let (h, _jobs, _) = {
            drop(store);
            hub(d.path())
        };
        h.startup();
        let results: BTreeMap<String, Value> = h
            .pending_results()
            .into_iter()
            .map(|(id, b)| (id, serde_json::from_slice(&b).unwrap()))
            .collect();
        assert!(results["p"]["error"]
            .as_str()
            .unwrap()
            .contains("interrupted"));
        assert_eq!(results["c1"]["result"]["outcome"], "applied");
        assert!(results["c2"]["error"]
            .as_str()
            .unwrap()
            .contains("restarted during the trial"));
        assert!(h.files().read_marker().unwrap().is_none());
    }

    fn h_files(state: &Path) -> Files {
        Files::new(state)
    }
}
