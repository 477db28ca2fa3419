//! The HTTPS side of fleet management (`uplink.kind = "http"`): a command feed and a
//! durable result sender, each on a thread of its own (a long poll must not hold the
//! runtime's single blocking thread).
//!
//! # The feed (the contract of issue 17's order feed, kept generic: [`Feed`])
//!
//! `GET {url}?after=CURSOR&wait=25s` (no `after` before the first page), authenticated as
//! uploads are. `200` → `{"<items>": [ ... ], "next": "CURSOR2"}`, `204` → nothing new.
//! The read timeout is `wait` plus `[uplink] timeout`. Every item of a page is handed to
//! the sink (for commands: recorded durably, or refused and reported) *before* the cursor
//! moves, and the cursor is persisted in the store, so a restart neither loses nor repeats
//! an item (an item seen twice is recognised by its id). When the server answers sooner
//! than `wait` with nothing, the next poll waits [`FeedSettings::idle`] (or until poked:
//! a pushed config on trial wants a poll that starts after it). Errors back off (capped,
//! jittered); `401` forgets the token once.
//!
//! # The result sender
//!
//! Each finished command's result document is POSTed to `uplink.url` with
//! `X-Labagent-Kind: command-result` and `Content-Type: application/json`, whatever the
//! upload format, with `Idempotency-Key: command-result-<id>`. It stays in the store until
//! a 2xx (then `delivered`), retried with backoff; it never waits in a channel's backlog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::port::CommandPort;
use crate::backoff::Backoff;
use crate::store::Store;
use crate::uplink::auth::{Authenticator, Credential};
use crate::uplink::http::HttpClient;

/// How long the server may hold a poll.
pub const WAIT: Duration = Duration::from_secs(25);
/// Between polls when the server answers at once with nothing.
pub const IDLE: Duration = Duration::from_secs(10);

/// Where and how to poll.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// The feed URL (`[remote] commands_url`).
    pub url: String,
    /// Name of the cursor in the store.
    pub cursor: String,
    /// The page's array key (`commands`).
    pub items: String,
    pub wait: Duration,
    pub idle: Duration,
    /// `[uplink] timeout`, added to `wait` for the read timeout.
    pub timeout: Duration,
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
    pub allow_plain_http: bool,
}

/// A stop flag the threads look at between requests.
#[derive(Default)]
struct Stop(AtomicBool);

impl Stop {
    fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The running feed and sender.
pub struct FeedHandle {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl FeedHandle {
    /// Asks both threads to stop. A poll in progress is not waited for: its page is
    /// dropped unread (the cursor stays), so a newer feed never sees the cursor go back.
    pub fn shutdown(self) {
        self.stop.0.store(true, Ordering::SeqCst);
        drop(self.threads);
    }
}

/// Waits `d` in short steps, waking early when `poke` moves; `false`: stop.
fn pause(stop: &Stop, port: &dyn CommandPort, d: Duration, poke: &mut u64) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if stop.stopped() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let now = port.wait_poke(*poke, left.min(Duration::from_millis(250)));
        if now != *poke {
            *poke = now;
            return true;
        }
    }
}

fn agent_for(s: &FeedSettings) -> Result<ureq::Agent, String> {
    let tls = crate::uplink::tls::tls_config(
        s.ca_file.as_deref(),
        s.client_cert.as_deref(),
        s.client_key.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let t = Some(s.wait + s.timeout);
    let c = Some(s.timeout);
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .https_only(!s.allow_plain_http)
        .proxy(ureq::Proxy::try_from_env())
        .tls_config(tls)
        .timeout_global(t)
        .timeout_resolve(c)
        .timeout_connect(c)
        .timeout_send_request(c)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .user_agent(concat!("labagent/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

/// `a=b` pairs percent-encoded for a query string.
fn query_value(v: &str) -> String {
    let mut o = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The poll URL for `cursor`.
pub fn poll_url(base: &str, cursor: Option<&str>, wait: Duration) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    match cursor {
        Some(c) => format!(
            "{base}{sep}after={}&wait={}s",
            query_value(c),
            wait.as_secs()
        ),
        None => format!("{base}{sep}wait={}s", wait.as_secs()),
    }
}

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

/// Starts the command feed and the result sender.
pub fn spawn(
    feed: FeedSettings,
    results_url: String,
    agent_id: String,
    http: HttpClient,
    auth: Arc<Authenticator>,
    store: Store,
    port: Arc<dyn CommandPort>,
) -> Result<FeedHandle, String> {
    let agent = agent_for(&feed)?;
    let stop = Arc::new(Stop::default());
    let mut threads = Vec::new();
    {
        let (stop, port, auth) = (stop.clone(), port.clone(), auth.clone());
        threads.push(
            std::thread::Builder::new()
                .name("remote-feed".into())
                .spawn(move || poll_loop(&feed, &agent, &auth, &store, &*port, &stop))
                .map_err(|e| e.to_string())?,
        );
    }
    {
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("remote-results".into())
                .spawn(move || send_loop(&results_url, &agent_id, &http, &auth, &*port, &stop))
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(FeedHandle { stop, threads })
}

fn credential(auth: &Authenticator) -> Result<Credential, String> {
    auth.credential().map_err(|e| e.to_string())
}

fn poll_loop(
    s: &FeedSettings,
    agent: &ureq::Agent,
    auth: &Authenticator,
    store: &Store,
    port: &dyn CommandPort,
    stop: &Stop,
) {
    let mut backoff = Backoff::with_random_seed();
    let mut poke = port.wait_poke(u64::MAX, Duration::ZERO);
    let mut logged_error = false;
    while !stop.stopped() {
        let cursor = match store.cursor(&s.cursor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the command feed's cursor");
                if !pause(stop, port, backoff.next_delay(), &mut poke) {
                    return;
                }
                continue;
            }
        };
        let cred = match credential(auth) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "command feed: no credentials");
                if !pause(stop, port, backoff.next_delay(), &mut poke) {
                    return;
                }
                continue;
            }
        };
        let url = poll_url(&s.url, cursor.as_deref(), s.wait);
        let started = SystemTime::now();
        let t0 = Instant::now();
        let mut req = agent.get(&url).header("Accept", "application/json");
        if let Some(h) = cred.header_value() {
            req = req.header("Authorization", h);
        }
        let outcome = req.call().map_err(|e| e.to_string()).and_then(|mut r| {
            let status = r.status().as_u16();
            let body = r
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        });
        if stop.stopped() {
            return; // a newer feed may run: this page is not ours to take
        }
        let quick = t0.elapsed() < s.wait / 2;
        let failed = |why: String, logged: &mut bool| {
            if !*logged {
                tracing::warn!(url = %s.url, %why, "command feed poll failed; retrying with backoff");
                *logged = true;
            } else {
                tracing::debug!(%why, "command feed poll failed");
            }
        };
        match outcome {
            Ok((204, _)) => {
                port.poll_ok(started);
                backoff.reset();
                logged_error = false;
                if quick && !pause(stop, port, s.idle, &mut poke) {
                    return;
                }
            }
            Ok((200, body)) => match parse_page(&body, &s.items) {
                Ok((items, next)) => {
                    let mut all = true;
                    for it in &items {
                        let bytes = serde_json::to_vec(it).unwrap_or_default();
                        if let Err(e) = port.intake(&bytes, &s.url) {
                            tracing::error!(error = %e, "cannot record a command from the feed; the cursor stays");
                            all = false;
                            break;
                        }
                    }
                    let saved = match (&next, all) {
                        (Some(n), true) => store.save_cursor(&s.cursor, n).map_err(|e| {
                            tracing::error!(error = %e, "cannot save the command feed's cursor");
                        }),
                        (None, true) => Ok(()),
                        (_, false) => Err(()),
                    };
                    if saved.is_ok() {
                        port.poll_ok(started);
                        backoff.reset();
                        logged_error = false;
                        if items.is_empty() && quick && !pause(stop, port, s.idle, &mut poke) {
                            return;
                        }
                    } else if !pause(stop, port, backoff.next_delay(), &mut poke) {
                        return;
                    }
                }
                Err(e) => {
                    failed(format!("bad page: {e}"), &mut logged_error);
                    if !pause(stop, port, backoff.next_delay(), &mut poke) {
                        return;
                    }
                }
            },
            Ok((status, _)) => {
                if status == 401 {
                    auth.invalidate(&cred);
                }
                failed(format!("HTTP {status}"), &mut logged_error);
                if !pause(stop, port, backoff.next_delay(), &mut poke) {
                    return;
                }
            }
            Err(e) => {
                failed(e, &mut logged_error);
                if !pause(stop, port, backoff.next_delay(), &mut poke) {
                    return;
                }
            }
        }
    }
}

fn send_loop(
    url: &str,
    agent_id: &str,
    http: &HttpClient,
    auth: &Authenticator,
    port: &dyn CommandPort,
    stop: &Stop,
) {
    let mut backoff = Backoff::with_random_seed();
    let mut gen = 0u64;
    let mut poke = port.wait_poke(u64::MAX, Duration::ZERO);
    while !stop.stopped() {
        let pending = port.pending_results();
        let mut failed = false;
        for (id, doc) in &pending {
            if stop.stopped() {
                return;
            }
            let cred = match credential(auth) {
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
            if !pause(stop, port, backoff.next_delay(), &mut poke) {
                return;
            }
            continue;
        }
        // Wait for a new result (in short steps, to see a stop).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stop.stopped() {
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
    fn urls_and_pages() {
        assert_eq!(
            poll_url("https://x/c", Some("a b/7"), WAIT),
            "https://x/c?after=a%20b%2F7&wait=25s"
        );
        assert_eq!(
            poll_url("https://x/c?k=1", None, WAIT),
            "https://x/c?k=1&wait=25s"
        );
        let (items, next) =
            parse_page(r#"{"commands":[{"id":"a"}],"next":"7"}"#, "commands").unwrap();
        assert_eq!((items.len(), next.as_deref()), (1, Some("7")));
        assert!(parse_page(r#"{"commands":[{"id":"a"}]}"#, "commands").is_err());
        assert!(parse_page(r#"{"commands":{}}"#, "commands").is_err());
        assert_eq!(parse_page(r#"{}"#, "commands").unwrap().0.len(), 0);
    }
}
