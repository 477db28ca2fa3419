//! A cursor feed over HTTPS long polls (the order feed, `[uplink] orders_url`; reusable
//! for any feed of the same shape): `GET {url}?after=CURSOR&wait=25s` on a thread of its
//! own, each page handed to a [`PageHandler`], the cursor saved only after the handler
//! made the page durable.
//!
//! - **Nothing lost, nothing skipped.** The cursor moves only after the page's items are
//!   durable; a page that cannot be taken (it does not parse, the store refuses) is asked
//!   again, with backoff, from the same cursor. A restart starts at the saved cursor, so an
//!   item is neither lost nor taken twice (the handler also ignores an id seen before).
//! - **Pacing.** The read timeout is `wait` plus `[uplink] timeout`. After a page with
//!   items, the next poll goes at once; after nothing (204, an empty page) that came
//!   sooner than `wait` (a server that does not hold polls), the next waits `poll`; after
//!   a held poll, at once. `Retry-After` on 429/503 is honoured; other failures back off
//!   (1 s doubling to 5 min), and a success resets the backoff.
//! - **Auth as uploads**: the uploader's [`Authenticator`]; a 401 gets one new token and
//!   one retry.
//! - **Time is injected** ([`Clock`]) so tests run the pacing on a virtual clock.
//! - Logs: states and counts only, never an item's text.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::auth::{Authenticator, Credential};
use super::backoff::{seed, Backoff, Clock};
use super::http::HttpClient;
use super::query::percent_encode;
use super::response::wait_hint;

/// Largest page read.
const MAX_PAGE: u64 = 16 << 20;

/// What a feed polls and how.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// What the feed is, for logs and status (`orders`).
    pub name: String,
    pub url: String,
    /// The cursor's name in the store.
    pub cursor: String,
    /// How long the server may hold a poll (`wait=`).
    pub wait: Duration,
    /// The wait before the next poll after a quick answer with nothing (`orders_poll`).
    pub poll: Duration,
    /// `[uplink] timeout`, added to `wait` for the read timeout.
    pub timeout: Duration,
    /// `X-Labagent-Agent`.
    pub agent_id: String,
}

/// A page as taken by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Items in the page (stored or kept as failed; seen before counts too).
    pub items: usize,
    /// The cursor to ask from next (`None`: the same one).
    pub next: Option<String>,
}

/// Takes a page and keeps the cursor. Called on the feed's thread; may block.
pub trait PageHandler: Send + Sync {
    /// Makes every item of `body` (a 200's body) durable. `Err`: the page cannot be
    /// taken now (the reason, without content); it is asked again.
    fn take(&self, body: &str) -> Result<Taken, String>;
    /// The saved cursor (`None`: from the start).
    fn cursor(&self, name: &str) -> Result<Option<String>, String>;
    /// Saves the cursor, durably.
    fn save_cursor(&self, name: &str, value: &str) -> Result<(), String>;
}

/// What `labagent status` shows about a feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeedStatus {
    pub name: String,
    /// `starting`, `polling`, `waiting`, `backing off`, `stopped`.
    pub state: String,
    pub cursor: Option<String>,
    pub polls: u64,
    /// Items taken since start.
    pub items: u64,
    /// Unix milliseconds of the last answered poll.
    pub last_poll_ms: Option<u64>,
    /// Unix milliseconds when the last answered poll *started* (a pushed config on trial
    /// is confirmed only by a poll that started after it was applied).
    #[serde(default)]
    pub last_ok_started_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What one poll came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A page with items was taken: poll again at once.
    Took(usize),
    /// Nothing; `held`: the server held the poll (poll again at once), else wait `poll`.
    Nothing { held: bool },
    /// Failed: wait this long (`None`: backoff), ask the same cursor again.
    Failed(Option<Duration>, String),
}

/// The feed loop (see the module doc).
pub struct Feed {
    settings: FeedSettings,
    http: HttpClient,
    auth: Arc<Authenticator>,
    handler: Arc<dyn PageHandler>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    status: watch::Sender<FeedStatus>,
}

/// A running feed: stop it without waiting for the poll in flight.
pub struct FeedHandle {
    clock: Arc<dyn Clock>,
    status: watch::Receiver<FeedStatus>,
}

impl FeedHandle {
    pub fn status(&self) -> watch::Receiver<FeedStatus> {
        self.status.clone()
    }
    /// Stops the feed: its thread ends once the poll in flight returns (its page, if any,
    /// is not taken); nothing waits for it.
    pub fn shutdown(&self) {
        self.clock.shutdown();
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.clock.shutdown();
    }
}

impl Feed {
    pub fn new(
        settings: FeedSettings,
        http: HttpClient,
        auth: Arc<Authenticator>,
        handler: Arc<dyn PageHandler>,
        clock: Arc<dyn Clock>,
    ) -> Feed {
        let (status, _) = watch::channel(FeedStatus {
            name: settings.name.clone(),
            state: "starting".into(),
            ..FeedStatus::default()
        });
        Feed {
            settings,
            http,
            auth,
            handler,
            clock,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300), seed()),
            status,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<FeedStatus> {
        self.status.subscribe()
    }

    /// Runs on a thread of its own until the clock is shut down.
    pub fn spawn(self) -> std::io::Result<FeedHandle> {
        let clock = self.clock.clone();
        let status = self.status.subscribe();
        std::thread::Builder::new()
            .name(format!("feed-{}", self.settings.name))
            .spawn(move || {
                let mut me = self;
                me.run();
            })?;
        Ok(FeedHandle { clock, status })
    }

    /// Polls until the clock is shut down.
    pub fn run(&mut self) {
        tracing::info!(feed = %self.settings.name, url = %self.settings.url, "feed started");
        while !self.clock.is_shutdown() {
            let outcome = self.poll_once();
            if !self.pace(&outcome) {
                break;
            }
        }
        self.status.send_modify(|s| s.state = "stopped".into());
    }

    /// Waits as `outcome` asks; false once shut down.
    pub fn pace(&mut self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Took(_) | Outcome::Nothing { held: true } => !self.clock.is_shutdown(),
            Outcome::Nothing { held: false } => {
                self.status.send_modify(|s| s.state = "waiting".into());
                // Nothing to do: a wake (`Clock::wake`) polls again at once.
                self.clock.idle(self.settings.poll)
            }
            Outcome::Failed(hint, _) => {
                let wait = hint.unwrap_or_else(|| self.backoff.next_delay());
                self.status.send_modify(|s| s.state = "backing off".into());
                self.clock.sleep(wait)
            }
        }
    }

    /// The URL of a poll from `cursor`.
    pub fn poll_url(&self, cursor: Option<&str>) -> String {
        let sep = if self.settings.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let wait = format!("{}s", self.settings.wait.as_secs());
        match cursor {
            Some(c) => format!(
                "{}{sep}after={}&wait={wait}",
                self.settings.url,
                percent_encode(c)
            ),
            None => format!("{}{sep}wait={wait}", self.settings.url),
        }
    }

    /// One poll: ask, take the page, save the cursor. Never sleeps.
    pub fn poll_once(&mut self) -> Outcome {
        let name = self.settings.name.clone();
        let unix_ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        let started_ms = unix_ms(self.clock.now());
        let outcome = self.poll_inner();
        let now_ms = unix_ms(self.clock.now());
        match &outcome {
            Outcome::Took(n) => {
                self.backoff.reset();
                tracing::info!(feed = %name, items = n, "feed page taken");
            }
            Outcome::Nothing { .. } => self.backoff.reset(),
            Outcome::Failed(_, why) if self.clock.is_shutdown() => {
                tracing::debug!(feed = %name, error = %why, "feed stopped during a poll")
            }
            Outcome::Failed(_, why) => {
                tracing::warn!(feed = %name, error = %why, "feed poll failed; asking again from the same cursor")
            }
        }
        self.status.send_modify(|s| {
            s.polls += 1;
            s.state = "polling".into();
            match &outcome {
                Outcome::Took(n) => {
                    s.items += *n as u64;
                    s.last_poll_ms = Some(now_ms);
                    s.last_ok_started_ms = Some(started_ms);
                    s.last_error = None;
                }
                Outcome::Nothing { .. } => {
                    s.last_poll_ms = Some(now_ms);
                    s.last_ok_started_ms = Some(started_ms);
                    s.last_error = None;
                }
                Outcome::Failed(_, why) => s.last_error = Some(why.clone()),
            }
        });
        outcome
    }

    fn poll_inner(&mut self) -> Outcome {
        let cursor = match self.handler.cursor(&self.settings.cursor) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(None, format!("cannot read the cursor: {e}")),
        };
        self.status.send_modify(|s| s.cursor = cursor.clone());
        let url = self.poll_url(cursor.as_deref());
        let timeout = self.settings.wait + self.settings.timeout;
        let agent = self.settings.agent_id.clone();
        let mut retried = false;
        let started = self.clock.instant();
        let reply = loop {
            let cred = match self.auth.credential() {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::Failed(
                        Some(self.auth.retry_in()).filter(|d| !d.is_zero()),
                        e.to_string(),
                    )
                }
            };
            let mut headers: Vec<(&str, &str)> = vec![
                ("Accept", "application/json"),
                ("X-Labagent-Agent", agent.as_str()),
            ];
            if let Some(v) = cred.header_value() {
                headers.push(("Authorization", v));
            }
            let reply = match self
                .http
                .send(&url, &headers, None, MAX_PAGE, Some(timeout))
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(None, e.detail),
            };
            if reply.status == 401 && !retried && matches!(cred, Credential::Bearer(_)) {
                retried = true;
                self.auth.invalidate(&cred);
                continue;
            }
            break reply;
        };
        if self.clock.is_shutdown() {
            // Stopped while the poll was held: the page is not taken (asked again later).
            return Outcome::Failed(None, "stopped".into());
        }
        let took = self.clock.instant().saturating_duration_since(started);
        // A poll the server held (nearly) as long as asked.
        let held = took + Duration::from_secs(1) >= self.settings.wait;
        match reply.status {
            200 => match self.handler.take(&reply.body) {
                Ok(t) => {
                    if let Some(next) = t.next.as_deref().filter(|n| Some(*n) != cursor.as_deref())
                    {
                        if let Err(e) = self.handler.save_cursor(&self.settings.cursor, next) {
                            return Outcome::Failed(None, format!("cannot save the cursor: {e}"));
                        }
                        self.status
                            .send_modify(|s| s.cursor = Some(next.to_string()));
                    }
                    if t.items > 0 {
                        Outcome::Took(t.items)
                    } else {
                        Outcome::Nothing { held }
                    }
                }
                Err(why) => Outcome::Failed(None, format!("page not taken: {why}")),
            },
            204 => Outcome::Nothing { held },
            429 | 503 => Outcome::Failed(
                wait_hint(&reply.hints, self.clock.now()),
                format!("HTTP {}", reply.status),
            ),
            401 => Outcome::Failed(
                None,
                "401 Unauthorized with a fresh credential: check client id, secret and permissions"
                    .into(),
            ),
            s => Outcome::Failed(None, format!("HTTP {s}")),
        }
    }
}
