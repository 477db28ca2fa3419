//! The HTTPS side of fleet management (`uplink.kind = "http"`): the command feed and the
//! durable result sender, each on a thread of its own (a long poll must not hold the
//! runtime's single blocking thread).
//!
//! # The command feed
//!
//! The order feed's loop (`uplink::feed`: `GET {commands_url}?after=CURSOR&wait=25s`,
//! auth as uploads, the cursor saved only after the page is durable, pacing, backoff) with
//! [`CommandPages`] as its page handler: `200` → `{"commands": [ ... ], "next": "CURSOR2"}`;
//! every command is recorded (or refused and reported) by [`CommandPort::intake`] before
//! the cursor moves, under the feed cursor `commands`. A pushed config on trial wakes the
//! feed ([`RemoteFeed::waker`]) so a poll starts after the apply.
//!
//! # The result sender
//!
//! Each finished command's result document is POSTed to `uplink.url` with
//! `X-Labagent-Kind: command-result` and `Content-Type: application/json`, whatever the
//! upload format, with `Idempotency-Key: command-result-<id>`. It stays in the store until
//! a 2xx (then `delivered`), retried with backoff; it never waits in a channel's backlog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::port::CommandPort;
use crate::backoff::Backoff;
use crate::store::Store;
use crate::uplink::auth::Authenticator;
use crate::uplink::backoff::Clock;
use crate::uplink::feed::{FeedHandle, FeedStatus, PageHandler, Taken};
use crate::uplink::http::HttpClient;

/// How long the server may hold a poll.
pub const WAIT: Duration = Duration::from_secs(25);
/// Between polls when the server answers at once with nothing.
pub const IDLE: Duration = Duration::from_secs(10);
/// The feed's name, its cursor's name and the page's array key.
pub const NAME: &str = "commands";

/// One page: the items and the next cursor.
pub fn parse_page(body: &str, items: &str) -> Result<(Vec<Value>, Option<String>), String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = match v.get(items) {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(format!("\"{items}\" is not an array")),
    };
    let next = v.get("next").and_then(Value::as_str).map(str::to_string);
    if !list.is_empty() && next.is_none() {
        return Err("a page with items needs \"next\"".into());
    }
    Ok((list, next))
}

/// The command feed's page handler.
pub struct CommandPages {
    pub port: Arc<dyn CommandPort>,
    pub store: Store,
    /// Where commands came from, for the audit (the feed URL).
    pub via: String,
}

impl PageHandler for CommandPages {
    fn take(&self, body: &str) -> Result<Taken, String> {
        let (items, next) = parse_page(body, NAME)?;
        for it in &items {
            let bytes = serde_json::to_vec(it).unwrap_or_default();
            self.port.intake(&bytes, &self.via)?;
        }
        Ok(Taken {
            items: items.len(),
            next,
        })
    }

    fn cursor(&self, name: &str) -> Result<Option<String>, String> {
        self.store.cursor(name).map_err(|e| e.to_string())
    }

    fn save_cursor(&self, name: &str, value: &str) -> Result<(), String> {
        self.store
            .save_cursor(name, value)
            .map_err(|e| e.to_string())
    }
}

/// The running command feed and result sender.
pub struct RemoteFeed {
    pub feed: FeedHandle,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
}

impl RemoteFeed {
    pub fn new(feed: FeedHandle, clock: Arc<dyn Clock>, stop: Arc<AtomicBool>) -> RemoteFeed {
        RemoteFeed { feed, clock, stop }
    }

    /// Ends an idle wait between polls (a trial wants a fresh poll).
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let c = self.clock.clone();
        Arc::new(move || c.wake())
    }

    pub fn status(&self) -> tokio::sync::watch::Receiver<FeedStatus> {
        self.feed.status()
    }

    /// Stops both threads without waiting: a poll in flight is dropped unread (the cursor
    /// stays), a result in flight may be sent once more (same id).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.feed.shutdown();
    }
}

/// Starts the result sender thread; it ends once `stop` is set.
pub fn spawn_sender(
    url: String,
    agent_id: String,
    http: HttpClient,
    auth: Arc<Authenticator>,
    port: Arc<dyn CommandPort>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("remote-results".into())
        .spawn(move || send_loop(&url, &agent_id, &http, &auth, &*port, &stop))?;
    Ok(())
}

/// Waits `d` in short steps; `false`: stop.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}

fn send_loop(
    url: &str,
    agent_id: &str,
    http: &HttpClient,
    auth: &Authenticator,
    port: &dyn CommandPort,
    stop: &AtomicBool,
) {
    let mut backoff = Backoff::with_random_seed();
    let mut gen = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let pending = port.pending_results();
        let mut failed = false;
        for (id, doc) in &pending {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let cred = match auth.credential() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "command results: no credentials");
                    failed = true;
                    break;
                }
            };
            let key = format!("command-result-{id}");
            let mut headers: Vec<(&str, &str)> = vec![
                ("Content-Type", "application/json"),
                ("X-Labagent-Kind", "command-result"),
                ("X-Labagent-Agent", agent_id),
                ("Idempotency-Key", &key),
            ];
            if let Some(h) = cred.header_value() {
                headers.push(("Authorization", h));
            }
            let started = SystemTime::now();
            match http.post(url, &headers, doc) {
                Ok(r) if (200..300).contains(&r.status) => {
                    port.poll_ok(started);
                    port.delivered(id);
                    backoff.reset();
                }
                Ok(r) => {
                    if r.status == 401 {
                        auth.invalidate(&cred);
                    }
                    tracing::warn!(id = %id, status = r.status, "command result not accepted; retrying with backoff");
                    failed = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "command result not sent; retrying with backoff");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            if !pause(stop, backoff.next_delay()) {
                return;
            }
            continue;
        }
        // Wait for a new result (in short steps, to see a stop).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = port.wait_results(gen, Duration::from_millis(250));
            if now != gen {
                gen = now;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let (items, next) =
            parse_page(r#"{"commands":[{"id":"a"}],"next":"7"}"#, "commands").unwrap();
        assert_eq!((items.len(), next.as_deref()), (1, Some("7")));
        assert!(parse_page(r#"{"commands":[{"id":"a"}]}"#, "commands").is_err());
        assert!(parse_page(r#"{"commands":{}}"#, "commands").is_err());
        assert_eq!(parse_page(r#"{}"#, "commands").unwrap().0.len(), 0);
    }
}
