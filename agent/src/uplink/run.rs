//! The drain loop: take the oldest messages of each channel, post them, act on the answer.
//!
//! Per channel the loop never moves past a message that is neither confirmed (2xx) nor
//! parked (400/409/413/415/422 naming that message), so order is kept. Any other outcome
//! stops the round: the uplink waits (backoff, `Retry-After`, pause) and starts again
//! from the oldest message, with the same `Idempotency-Key`.
//!
//! A stored message wakes an idle uplink at once ([`Clock::idle`]); a backoff or a
//! `Retry-After` is always waited out ([`Clock::sleep`]), however many messages arrive.
//! A store that cannot answer is waited out the same way, never read as an empty queue.
//! Failures are logged when they start, change and end ([`Failures`]), not per attempt.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::auth::{AuthError, Authenticator, Credential};
use super::backoff::{seed, Backoff, Clock, SystemClock};
use super::http::{HttpClient, NetErrorKind};
use super::queue::{rfc3339, Envelope, Outgoing, Queue, QueueError, TokenCache};
use super::response::{classify, Action};
use super::status::{Failure, Failures, Latency, UplinkState, UplinkStatus};
use super::tls::TlsError;
use super::{AuthSettings, Format, UplinkSettings};
use crate::fhir::response::{verdict, Verdict};
use crate::fhir::{Input, Mapper, Skip};
use crate::store::{OrderReportRecord, ORDER_REPORTS};

/// Largest transaction-response read (it lists one entry per resource sent).
const FHIR_MAX_REPLY: u64 = 4 << 20;

/// How long an idle uplink waits before looking at the queue again (a wake ends it early).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Raw and FHIR post one message per request; the store is read this many at a time and
/// they are posted one by one, in order. Each read of the queue is a range over the
/// store's index: reading one message at a time cost the uplink thread about a third of
/// its CPU (docs/perf/ingest.md). What is not posted stays pending and is read again.
/// Those accepted are confirmed together after the read (one store write, not one each):
/// a crash before that sends them again, with the same ids (at-least-once).
const PREFETCH: usize = 16;

/// The uplink cannot be built from these settings.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("{what} {url:?} is plain http: refused unless uplink.allow_plain_http = true")]
    PlainHttp { what: &'static str, url: String },
    #[error("{what} {url:?} is not an http(s) URL")]
    BadUrl { what: &'static str, url: String },
    #[error("uplink TLS settings: {0}")]
    Tls(#[from] TlsError),
    #[error("uplink.auth: {0}")]
    Auth(&'static str),
    #[error("cannot start the uplink thread: {0}")]
    Thread(String),
    #[error("format = \"fhir\": {0}")]
    Fhir(#[from] crate::fhir::ZoneError),
}

/// Why a round stopped early.
enum Stop {
    /// Wait this long (or as the backoff says, if None), in this state.
    Wait(Option<Duration>, UplinkState, String),
}

/// The HTTPS uplink. Build with [`Uplink::new`], run with [`Uplink::spawn`] (production) or
/// [`Uplink::run`] on a thread of your own.
pub struct Uplink {
    settings: UplinkSettings,
    queue: Arc<dyn Queue>,
    http: HttpClient,
    /// Shared with the host-query workers (`query.rs`) and the order feed.
    auth: Arc<Authenticator>,
    clock: Arc<dyn Clock>,
    status: watch::Sender<UplinkStatus>,
    backoff: Backoff,
    /// `format = "fhir"`: maps each message to a transaction Bundle.
    mapper: Option<Arc<Mapper>>,
    failures: Failures,
}

/// Controls a spawned uplink.
pub struct UplinkHandle {
    clock: Arc<dyn Clock>,
    thread: Option<JoinHandle<()>>,
    status: watch::Receiver<UplinkStatus>,
}

impl UplinkHandle {
    /// New data was queued: look now instead of at the next poll (an idle uplink only; a
    /// backoff or `Retry-After` is waited out).
    pub fn wake(&self) {
        self.clock.wake();
    }
    /// A function that wakes an idle uplink, for the channel drivers.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let clock = self.clock.clone();
        move || clock.wake()
    }
    /// The latest status (also: [`UplinkHandle::subscribe`] for changes).
    pub fn status(&self) -> UplinkStatus {
        self.status.borrow().clone()
    }
    pub fn subscribe(&self) -> watch::Receiver<UplinkStatus> {
        self.status.clone()
    }
    /// Stops the uplink after the request in flight (bounded by `timeout`) and waits for it.
    pub fn shutdown(mut self) {
        self.clock.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn check_url(url: &str, what: &'static str, allow_plain: bool) -> Result<(), UplinkError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        Ok(())
    } else if lower.starts_with("http://") {
        if allow_plain {
            tracing::warn!(
                url,
                "{what} is plain http: credentials and data travel unencrypted"
            );
            Ok(())
        } else {
            Err(UplinkError::PlainHttp {
                what,
                url: url.to_string(),
            })
        }
    } else {
        Err(UplinkError::BadUrl {
            what,
            url: url.to_string(),
        })
    }
}

impl Uplink {
    /// Validates the settings and builds the HTTP agent. `clock`: [`SystemClock::new`] in
    /// production, a `VirtualClock` in tests.
    pub fn new(
        settings: UplinkSettings,
        auth: AuthSettings,
        queue: Arc<dyn Queue>,
        cache: Arc<dyn TokenCache>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, UplinkError> {
        check_url(&settings.url, "uplink.url", settings.allow_plain_http)?;
        if auth.method == super::AuthMethod::ClientCredentials {
            check_url(
                &auth.token_url,
                "uplink.auth.token_url",
                settings.allow_plain_http,
            )?;
        }
        if auth.method != super::AuthMethod::None && auth.secret.is_none() {
            return Err(UplinkError::Auth("no client secret"));
        }
        // Trusted roots are needed only for https: a plain-http site needs no CA store.
        let mut https = vec![settings.url.as_str()];
        if auth.method == super::AuthMethod::ClientCredentials {
            https.push(&auth.token_url);
        }
        if https
            .iter()
            .any(|u| u.to_ascii_lowercase().starts_with("https://"))
        {
            super::tls::require_roots(settings.ca_file.as_deref())?;
        }
        let http = HttpClient::new(&settings)?;
        let mapper = match settings.format {
            Format::Fhir => Some(Arc::new(Mapper::new(&settings.agent_id, &settings.fhir)?)),
            Format::Raw | Format::Json => None,
        };
        let authn = Arc::new(Authenticator::new(auth, http.clone(), cache, clock.clone()));
        let mut initial = UplinkStatus::new(authn.mode());
        initial.latency = Latency::new(settings.timeout);
        let (status, _) = watch::channel(initial);
        Ok(Uplink {
            settings,
            queue,
            http,
            auth: authn,
            clock,
            status,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300), seed()),
            mapper,
            failures: Failures::default(),
        })
    }

    /// Status updates.
    pub fn subscribe(&self) -> watch::Receiver<UplinkStatus> {
        self.status.subscribe()
    }

    /// The authenticator, shared by whatever else talks to the same upstream (host
    /// queries, the order feed): one token for all.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.auth.clone()
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &UplinkSettings {
        &self.settings
    }

    /// Token requests made by this instance.
    pub fn token_requests(&self) -> u64 {
        self.auth.token_requests()
    }

    /// Runs on a dedicated OS thread (blocking HTTP never touches the tokio runtime).
    pub fn spawn(self) -> Result<UplinkHandle, UplinkError> {
        let clock = self.clock.clone();
        let status = self.status.subscribe();
        let thread = std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || {
                let mut me = self;
                me.run();
            })
            .map_err(|e| UplinkError::Thread(e.to_string()))?;
        Ok(UplinkHandle {
            clock,
            thread: Some(thread),
            status,
        })
    }

    /// Drains until the clock reports shutdown; waits [`IDLE_POLL`] (or a wake) when empty.
    pub fn run(&mut self) {
        let span = tracing::info_span!("uplink", url = %self.settings.url);
        let _g = span.enter();
        while !self.clock.is_shutdown() {
            let alive = match self.round() {
                Ok(true) => true,
                Ok(false) => self.clock.idle(IDLE_POLL),
                Err(stop) => self.wait(stop),
            };
            if !alive {
                break;
            }
        }
        self.status.send_modify(|s| s.state = UplinkState::Stopped);
    }

    /// Drains until the queue is empty or the clock reports shutdown (tests, `queue flush`).
    /// Returns whether the queue was found empty.
    pub fn drain(&mut self) -> bool {
        loop {
            match self.round() {
                Ok(true) => {}
                Ok(false) => return true,
                Err(stop) => {
                    if !self.wait(stop) {
                        return false;
                    }
                }
            }
        }
    }

    fn wait(&mut self, stop: Stop) -> bool {
        let Stop::Wait(hint, state, error) = stop;
        let wait = hint
            .unwrap_or_else(|| self.backoff.next_delay())
            .max(self.auth.retry_in());
        let state = match state {
            UplinkState::BackingOff { .. } => UplinkState::BackingOff { wait },
            s => s,
        };
        let wait_ms = wait.as_millis() as u64;
        match self.failures.failed(&error) {
            Failure::First => {
                tracing::warn!(state = %state, wait_ms, "upload failed: {error}; retrying")
            }
            Failure::Changed { previous, attempts } => tracing::warn!(
                state = %state,
                wait_ms,
                previous = %previous,
                previous_attempts = attempts,
                "upload failed: {error}; retrying"
            ),
            Failure::Repeated { attempts } => {
                tracing::debug!(attempts, wait_ms, "upload failed again: {error}")
            }
        }
        self.publish(|s| {
            s.state = state;
            s.last_error = Some(error);
            s.retries += 1;
        });
        self.clock.sleep(wait)
    }

    fn publish(&self, f: impl FnOnce(&mut UplinkStatus)) {
        let mode = self.auth.mode();
        let expiry = self.auth.token_expiry();
        let token_requests = self.auth.token_requests();
        self.status.send_modify(|s| {
            s.auth_mode = mode;
            s.token_expires_at = expiry;
            s.token_requests = token_requests;
            f(s);
        });
    }

    /// One pass over all channels, one batch each. Ok(true): something was delivered or
    /// parked; Ok(false): nothing pending.
    fn round(&mut self) -> Result<bool, Stop> {
        // `one_by_one`: the batch read is posted a message per request.
        let (max, one_by_one) = match self.settings.format {
            Format::Raw | Format::Fhir => (PREFETCH, true),
            Format::Json => (self.settings.batch_max.max(1), false),
        };
        let mut progressed = false;
        for channel in self.queue.channels().map_err(|e| store_stop("read", e))? {
            // Order reports go one at a time, whatever the format.
            let max = if channel == ORDER_REPORTS { 1 } else { max };
            let batch = self
                .queue
                .next_batch(&channel, max)
                .map_err(|e| store_stop("read", e))?;
            if batch.is_empty() {
                continue;
            }
            // The ids the server accepted, confirmed in one store write once the read is
            // posted, or as far as it got when a post failed.
            let mut accepted = Vec::new();
            let posted = if one_by_one {
                self.deliver_each(&batch, &mut accepted)
            } else {
                self.deliver(&batch, &mut accepted).map(|()| true)
            };
            self.confirm_posted(accepted)?;
            progressed |= posted?;
        }
        if progressed {
            self.backoff.reset();
            self.publish(|s| {
                s.state = UplinkState::Ok;
            });
        } else {
            let idle = self.status.borrow().state == UplinkState::Starting;
            if idle {
                self.publish(|s| s.state = UplinkState::Ok);
            }
        }
        Ok(progressed)
    }

    /// Delivers each message of `batch` on its own, in order, until one fails or the
    /// uplink stops (the rest stays pending, read again). Ok(true): one or more delivered.
    fn deliver_each(
        &mut self,
        batch: &[Outgoing],
        accepted: &mut Vec<String>,
    ) -> Result<bool, Stop> {
        let mut progressed = false;
        for m in batch {
            if self.clock.is_shutdown() {
                break;
            }
            self.deliver(std::slice::from_ref(m), accepted)?;
            progressed = true;
        }
        Ok(progressed)
    }

    /// Marks `ids`, accepted by the server, delivered in the store (none: nothing to do).
    fn confirm_posted(&mut self, ids: Vec<String>) -> Result<(), Stop> {
        if ids.is_empty() {
            return Ok(());
        }
        // Not confirmed: sent again with the same id after the wait (at-least-once).
        self.queue
            .confirm(&ids)
            .map_err(|e| store_stop("mark delivered messages in", e))?;
        tracing::debug!(count = ids.len(), "delivered and confirmed");
        let now = self.clock.now();
        // Delivered is Ok, in the same update: a watcher never sees a count of delivered
        // messages beside a state from before them.
        self.publish(|s| {
            s.state = UplinkState::Ok;
            s.delivered += ids.len() as u64;
            s.last_delivery = Some(now);
        });
        Ok(())
    }

    /// Delivers `batch` (one request, or bisection on a 4xx that blames a message). On
    /// return Ok every message of it is parked, confirmed (FHIR, order reports) or
    /// accepted and added to `accepted`, which the caller confirms.
    fn deliver(&mut self, batch: &[Outgoing], accepted: &mut Vec<String>) -> Result<(), Stop> {
        if let [m] = batch {
            if m.channel == ORDER_REPORTS {
                return self.deliver_report(m);
            }
        }
        if let (Some(mapper), [m]) = (self.mapper.clone(), batch) {
            return self.deliver_fhir(&mapper, m);
        }
        match self.post(batch)? {
            Action::Delivered => {
                let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
                if let Some((what, attempts)) = self.failures.recovered() {
                    tracing::info!(
                        failed_attempts = attempts,
                        "uploads succeed again (after: {what})"
                    );
                }
                accepted.extend(ids);
                Ok(())
            }
            Action::Reject(why) if batch.len() == 1 => {
                // The store hears of the messages in the order they were posted.
                self.confirm_posted(std::mem::take(accepted))?;
                let m = &batch[0];
                tracing::warn!(id = %m.id, channel = %m.channel, reason = %why, "message rejected by the server; parked");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                self.publish(|s| s.rejected += 1);
                Ok(())
            }
            Action::Reject(why) => {
                tracing::info!(size = batch.len(), reason = %why, "batch refused; splitting it to find the message at fault");
                let (a, b) = batch.split_at(batch.len() / 2);
                self.deliver(a, accepted)?;
                self.deliver(b, accepted)
            }
            other => Err(self.stop_for(other)),
        }
    }

    /// `format = "fhir"`: one message → one transaction Bundle POSTed to the FHIR base.
    /// Queries, QC and messages without results are delivered by policy (reason in meta),
    /// text that cannot be mapped and Bundles the server refuses are kept as rejected with
    /// the reason; on return Ok the message is settled either way.
    fn deliver_fhir(&mut self, mapper: &Mapper, m: &Outgoing) -> Result<(), Stop> {
        let input = Input {
            key: &m.id,
            channel: &m.channel,
            protocol: m.protocol.as_str(),
            text: &m.text,
            received_at: m.received_at,
        };
        let bundle = match mapper.bundle(&input) {
            Ok(b) => b,
            Err(Skip::Policy(why)) => {
                tracing::info!(id = %m.id, channel = %m.channel, reason = %why, "not posted as FHIR; kept as delivered by policy");
                self.queue
                    .skip(&m.id, &why)
                    .map_err(|e| store_stop("mark a message delivered by policy in", e))?;
                return Ok(());
            }
            Err(skip @ Skip::NotMappable(_)) => {
                let why = skip.to_string();
                tracing::warn!(id = %m.id, channel = %m.channel, reason = %why, "message kept as rejected");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                self.publish(|s| s.rejected += 1);
                return Ok(());
            }
        };
        let kinds: Vec<&str> = bundle.entry.iter().map(|e| e.request.url).collect();
        let body = match serde_json::to_vec(&bundle) {
            Ok(b) => b,
            Err(e) => {
                let why = format!("cannot serialize the Bundle: {e}");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                self.publish(|s| s.rejected += 1);
                return Ok(());
            }
        };
        let url = self.settings.url.trim_end_matches('/').to_string();
        let received_at = rfc3339(m.received_at);
        let agent = self.settings.agent_id.clone();
        let headers = [
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
            ("Prefer", "return=minimal"),
            ("Idempotency-Key", m.id.as_str()),
            ("X-Labagent-Agent", agent.as_str()),
            ("X-Labagent-Channel", m.channel.as_str()),
            ("X-Labagent-Protocol", m.protocol.as_str()),
            ("X-Labagent-Received-At", received_at.as_str()),
        ];
        let (reply, action) = self.exchange(&url, &headers, &body, Some(FHIR_MAX_REPLY))?;
        match verdict(reply.status, &reply.body, &kinds) {
            Verdict::Delivered => {
                self.queue
                    .confirm(std::slice::from_ref(&m.id))
                    .map_err(|e| store_stop("mark delivered messages in", e))?;
                tracing::debug!(id = %m.id, resources = kinds.len(), "delivered and confirmed");
                let now = self.clock.now();
                self.publish(|s| {
                    s.delivered += 1;
                    s.last_delivery = Some(now);
                });
                Ok(())
            }
            Verdict::Rejected(why) => {
                tracing::warn!(id = %m.id, channel = %m.channel, reason = %why, "Bundle refused by the FHIR server; message kept as rejected");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                self.publish(|s| s.rejected += 1);
                Ok(())
            }
            Verdict::NotFhir(why) => Err(Stop::Wait(
                None,
                UplinkState::Paused {
                    reason: why.clone(),
                },
                why,
            )),
            Verdict::Status => match action {
                Action::Reject(why) => {
                    self.queue
                        .reject(&m.id, &why)
                        .map_err(|e| store_stop("park a rejected message in", e))?;
                    self.publish(|s| s.rejected += 1);
                    Ok(())
                }
                Action::Delivered => Err(Stop::Wait(
                    None,
                    UplinkState::Paused {
                        reason: "2xx without a FHIR answer".into(),
                    },
                    "2xx without a FHIR answer".into(),
                )),
                other => Err(self.stop_for(other)),
            },
        }
    }

    /// An order report (`#order-reports`): POSTed alone as `{"id","status","detail","at"}`
    /// with `X-Labagent-Kind: order-report`, through the same durable path as a message
    /// (same id on every retry). With `format = "fhir"` it goes to `orders_url`, or without
    /// one is delivered by policy (a FHIR base takes no plain reports).
    fn deliver_report(&mut self, m: &Outgoing) -> Result<(), Stop> {
        let rec: OrderReportRecord = match serde_json::from_str(&m.text) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("not an order report: {e}");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                return Ok(());
            }
        };
        let url = match (self.settings.format, &self.settings.orders_url) {
            (Format::Fhir, Some(u)) => u.clone(),
            (Format::Fhir, None) => {
                self.queue
                    .skip(&m.id, "order report: format = \"fhir\" without orders_url")
                    .map_err(|e| store_stop("mark a message delivered by policy in", e))?;
                return Ok(());
            }
            _ => self.settings.url.clone(),
        };
        let body = serde_json::json!({
            "id": rec.id,
            "status": rec.status,
            "detail": rec.detail,
            "at": rec.at,
        })
        .to_string();
        let agent = self.settings.agent_id.clone();
        let headers = [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", m.id.as_str()),
            ("X-Labagent-Agent", agent.as_str()),
            ("X-Labagent-Channel", rec.channel.as_str()),
            ("X-Labagent-Kind", "order-report"),
        ];
        match self.exchange(&url, &headers, body.as_bytes(), None)?.1 {
            Action::Delivered => {
                self.queue
                    .confirm(std::slice::from_ref(&m.id))
                    .map_err(|e| store_stop("mark delivered messages in", e))?;
                tracing::debug!(order = %rec.id, status = %rec.status, "order report delivered");
                Ok(())
            }
            Action::Reject(why) => {
                tracing::warn!(order = %rec.id, reason = %why, "order report refused by the server; parked");
                self.queue
                    .reject(&m.id, &why)
                    .map_err(|e| store_stop("park a rejected message in", e))?;
                Ok(())
            }
            other => Err(self.stop_for(other)),
        }
    }

    fn stop_for(&self, action: Action) -> Stop {
        match action {
            Action::Pause(reason) => Stop::Wait(
                None,
                UplinkState::Paused {
                    reason: reason.clone(),
                },
                reason,
            ),
            Action::Unauthorized => {
                let r = "401 Unauthorized with a fresh credential: check client id, secret and permissions".to_string();
                Stop::Wait(None, UplinkState::Paused { reason: r.clone() }, r)
            }
            Action::RateLimited(hint) => Stop::Wait(
                hint,
                UplinkState::BackingOff {
                    wait: Duration::ZERO,
                },
                "rate limited by the server (HTTP 429)".into(),
            ),
            Action::Unavailable(hint) => Stop::Wait(
                hint,
                UplinkState::BackingOff {
                    wait: Duration::ZERO,
                },
                "server unavailable (HTTP 503)".into(),
            ),
            Action::Retry(e) => Stop::Wait(
                None,
                UplinkState::BackingOff {
                    wait: Duration::ZERO,
                },
                e,
            ),
            Action::Delivered | Action::Reject(_) => unreachable_stop(),
        }
    }

    /// One POST of `batch`, with one new token and one retry after a 401.
    fn post(&mut self, batch: &[Outgoing]) -> Result<Action, Stop> {
        let (body, content_type) = match self.settings.format {
            Format::Raw => (
                batch[0].text.clone().into_bytes(),
                batch[0].protocol.content_type(),
            ),
            Format::Json | Format::Fhir => (self.envelopes(batch), "application/json"),
        };
        let received_at;
        let agent = self.settings.agent_id.clone();
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", content_type)];
        if self.settings.format == Format::Raw {
            let m = &batch[0];
            received_at = rfc3339(m.received_at);
            headers.extend([
                ("Idempotency-Key", m.id.as_str()),
                ("X-Labagent-Agent", agent.as_str()),
                ("X-Labagent-Channel", m.channel.as_str()),
                ("X-Labagent-Protocol", m.protocol.as_str()),
                ("X-Labagent-Received-At", received_at.as_str()),
            ]);
        } else {
            headers.push(("X-Labagent-Agent", agent.as_str()));
        }
        let url = self.settings.url.clone();
        self.exchange(&url, &headers, &body, None).map(|(_, a)| a)
    }

    /// POSTs `body` with `headers` plus the credential; after a 401 with a bearer token,
    /// one new token and one retry. Returns the reply and what its status means.
    fn exchange(
        &mut self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        body_limit: Option<u64>,
    ) -> Result<(super::http::Reply, Action), Stop> {
        let mut retried = false;
        loop {
            let cred = self.auth.credential().map_err(auth_stop)?;
            let mut all: Vec<(&str, &str)> = headers.to_vec();
            if let Some(v) = cred.header_value() {
                all.push(("Authorization", v));
            }
            let sent = std::time::Instant::now();
            let result = match body_limit {
                Some(limit) => self.http.post_limited(url, &all, body, limit),
                None => self.http.post(url, &all, body),
            };
            let reply = match result {
                Ok(r) => {
                    let took = sent.elapsed();
                    self.status.send_modify(|s| s.latency.observe(took));
                    r
                }
                Err(e) => {
                    let state = match e.kind {
                        NetErrorKind::Tls => UplinkState::Paused {
                            reason: format!("TLS: {}", e.detail),
                        },
                        _ => UplinkState::BackingOff {
                            wait: Duration::ZERO,
                        },
                    };
                    return Err(Stop::Wait(None, state, e.detail));
                }
            };
            let action = classify(reply.status, &reply.hints, self.clock.now());
            if action == Action::Unauthorized && !retried && matches!(cred, Credential::Bearer(_)) {
                retried = true;
                self.auth.invalidate(&cred);
                continue;
            }
            return Ok((reply, action));
        }
    }

    fn envelopes(&self, batch: &[Outgoing]) -> Vec<u8> {
        let list: Vec<Envelope<'_>> = batch
            .iter()
            .map(|m| Envelope::of(&self.settings.agent_id, m))
            .collect();
        serde_json::to_vec(&list).unwrap_or_default()
    }
}

fn unreachable_stop() -> Stop {
    // `deliver` handles both before calling `stop_for`; keep going rather than panic.
    Stop::Wait(
        None,
        UplinkState::BackingOff {
            wait: Duration::ZERO,
        },
        "internal: unexpected action".into(),
    )
}

/// The store could not answer: wait with backoff and try again (nothing is lost; the
/// queue is not empty just because it cannot be read).
fn store_stop(what: &str, e: QueueError) -> Stop {
    Stop::Wait(
        None,
        UplinkState::BackingOff {
            wait: Duration::ZERO,
        },
        format!("cannot {what} the store: {e}"),
    )
}

fn auth_stop(e: AuthError) -> Stop {
    let detail = e.to_string();
    let state = match &e {
        AuthError::Credentials(d) => UplinkState::CredentialsProblem { detail: d.clone() },
        AuthError::GrantRefused(_) | AuthError::Tls(_) => UplinkState::Paused {
            reason: detail.clone(),
        },
        AuthError::RateLimited | AuthError::Endpoint(_) => UplinkState::BackingOff {
            wait: Duration::ZERO,
        },
    };
    Stop::Wait(None, state, detail)
}

/// The production clock, for callers that do not inject one.
pub fn system_clock() -> Arc<dyn Clock> {
    SystemClock::new()
}
