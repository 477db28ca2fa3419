//! Host queries over HTTP (`[uplink] query_url`): a [`QueryHook`] that POSTs an
//! analyzer's query to the upstream and hands back its answer, or `None`.
//!
//! - **Its own workers.** [`WORKERS`] threads of their own (blocking HTTP, like the
//!   uploader), so a query never waits behind an upload, and a slow upstream holds at most
//!   these threads. They share the uploader's [`Authenticator`]: one token for both.
//! - **The deadline is kept whatever a worker does.** A timer thread sends `None` at each
//!   query's deadline if no answer came first; a worker stuck in a connect or a slow body
//!   cannot make the instrument wait longer. Each request's own timeout is the time left.
//! - **The request** is the query as received, with the upload's auth and `Content-Type`,
//!   `X-Labagent-Agent`, `X-Labagent-Channel`, `X-Labagent-Protocol`,
//!   `X-Labagent-Kind: query`, `X-Labagent-Specimens` (each id percent-encoded, comma
//!   separated) and `X-Labagent-Query-Id`; no `Idempotency-Key` (a query is not stored
//!   upstream). One 401 with a bearer token → a new token, one retry.
//! - **The answer**: `200` with a body that [`check_answer`] accepts (ASTM: starts with H
//!   and has an L record; HL7: every message starts with a valid MSH), line ends made CR.
//!   Anything else — 204, 404, a body that does not parse (logged at warn, without its
//!   content), 5xx, timeout, network error — is `None`: the caller answers from the cache.
//! - **Shutdown never waits** for a worker: [`QueryUpstream::shutdown`] (and drop) closes
//!   the job queue, answers every waiting query `None` and returns; a worker busy in a
//!   request finishes it alone and exits. A hook still held somewhere answers `None`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::auth::{Authenticator, Credential};
use super::http::HttpClient;
use super::tls::TlsError;
use super::UplinkSettings;
use crate::query::{QueryHook, QueryRequest};
use crate::store::Protocol;

/// Worker threads per query upstream.
pub const WORKERS: usize = 4;
/// Largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// Where a query's answer goes: taken by the first of the answer and the deadline.
pub type Slot = Arc<Mutex<Option<oneshot::Sender<Option<String>>>>>;

/// A new slot and the receiver of its answer.
pub fn slot() -> (Slot, oneshot::Receiver<Option<String>>) {
    let (tx, rx) = oneshot::channel();
    (Arc::new(Mutex::new(Some(tx))), rx)
}

/// Hands `answer` to the query's receiver unless the deadline (or another) came first.
pub fn settle(slot: &Slot, answer: Option<String>) -> bool {
    let tx = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    match tx {
        Some(tx) => tx.send(answer).is_ok(),
        None => false,
    }
}

/// Whether the slot still waits for its answer.
pub fn open(slot: &Slot) -> bool {
    slot.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Deadlines waiting to fire, by (deadline, sequence).
#[derive(Default)]
struct Timers {
    due: BTreeMap<(Instant, u64), Slot>,
    stopped: bool,
}

#[derive(Default)]
struct DeadlineShared {
    timers: Mutex<Timers>,
    wake: Condvar,
    next: AtomicU64,
}

/// A timer thread that answers `None` to each armed query whose deadline passed
/// unanswered, whatever the code that should answer it is doing. [`Deadlines::stop`]
/// answers every armed query `None` at once.
#[derive(Clone)]
pub struct Deadlines {
    shared: Arc<DeadlineShared>,
}

impl Deadlines {
    /// Starts the timer thread (`name` for the thread).
    pub fn start(name: &str) -> Deadlines {
        let shared = Arc::new(DeadlineShared::default());
        let s = shared.clone();
        let r = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || s.run());
        if let Err(e) = r {
            // Without the timer, deadlines rest on each request's own timeout.
            tracing::error!(error = %e, "cannot start the host-query timer");
        }
        Deadlines { shared }
    }

    /// `None` to `slot` at `deadline` unless answered before. After [`stop`](Self::stop):
    /// `None` at once.
    pub fn arm(&self, deadline: Instant, slot: Slot) {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut t = self.shared.timers();
        if t.stopped {
            drop(t);
            settle(&slot, None);
            return;
        }
        t.due.insert((deadline, n), slot);
        drop(t);
        self.shared.wake.notify_one();
    }

    /// Answers every armed query `None` and ends the thread.
    pub fn stop(&self) {
        self.shared.timers().stopped = true;
        self.shared.wake.notify_all();
    }
}

impl DeadlineShared {
    fn timers(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut t = self.timers();
        loop {
            if t.stopped {
                for (_, slot) in std::mem::take(&mut t.due) {
                    settle(&slot, None);
                }
                return;
            }
            let now = Instant::now();
            while let Some(entry) = t.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let slot = entry.remove();
                if settle(&slot, None) {
                    tracing::debug!("host query: no answer from the upstream by the deadline");
                }
            }
            // Answered queries are dropped from the map lazily: their slot is empty.
            t.due.retain(|_, s| open(s));
            let wait = t
                .due
                .keys()
                .next()
                .map(|(at, _)| at.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            t = self
                .wake
                .wait_timeout(t, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

struct Job {
    q: QueryRequest,
    deadline: Instant,
    slot: Slot,
}

struct Shared {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    deadlines: Deadlines,
    stopped: AtomicBool,
}

impl Shared {
    /// The hook's body: queue the job and arm its deadline.
    fn ask(&self, q: QueryRequest, deadline: Instant) -> oneshot::Receiver<Option<String>> {
        let (slot, rx) = slot();
        if self.stopped.load(Ordering::SeqCst) || deadline <= Instant::now() {
            settle(&slot, None);
            return rx;
        }
        self.deadlines.arm(deadline, slot.clone());
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|jobs| {
                jobs.send(Job {
                    q,
                    deadline,
                    slot: slot.clone(),
                })
                .is_ok()
            });
        if !sent {
            settle(&slot, None);
        }
        rx
    }
}

/// What a worker needs to ask the upstream.
struct Asker {
    url: String,
    agent_id: String,
    http: HttpClient,
    auth: Arc<Authenticator>,
    /// `[uplink] timeout`: no request takes longer, whatever its deadline.
    timeout: Duration,
}

/// The running query upstream (owns the workers; see the module doc).
pub struct QueryUpstream {
    shared: Arc<Shared>,
}

impl QueryUpstream {
    /// Starts the workers and the timer for `url`, with the uploader's `settings` (TLS,
    /// timeout, agent id) and authenticator.
    pub fn start(
        url: &str,
        settings: &UplinkSettings,
        auth: Arc<Authenticator>,
    ) -> Result<QueryUpstream, TlsError> {
        let asker = Arc::new(Asker {
            url: url.to_string(),
            agent_id: settings.agent_id.clone(),
            http: HttpClient::new(settings)?,
            auth,
            timeout: settings.timeout,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Some(tx)),
            deadlines: Deadlines::start("query-timer"),
            stopped: AtomicBool::new(false),
        });
        for i in 0..WORKERS {
            let rx = rx.clone();
            let asker = asker.clone();
            let r = std::thread::Builder::new()
                .name(format!("query-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return };
                    if !open(&job.slot) {
                        continue; // its deadline passed while it waited
                    }
                    let answer = asker.ask(&job.q, job.deadline);
                    settle(&job.slot, answer);
                });
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot start a host-query worker");
            }
        }
        tracing::info!(url, "host queries go to the upstream");
        Ok(QueryUpstream { shared })
    }

    /// The hook for the channels.
    pub fn hook(&self) -> QueryHook {
        let s = self.shared.clone();
        Arc::new(move |q, deadline| s.ask(q, deadline))
    }

    /// Stops without waiting for a worker: waiting queries get `None` now.
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.deadlines.stop();
    }
}

impl Drop for QueryUpstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Asker {
    /// One query: POST, one retry after a 401 with a bearer token; the checked answer.
    fn ask(&self, q: &QueryRequest, deadline: Instant) -> Option<String> {
        let specimens = q
            .specimens
            .iter()
            .map(|s| percent_encode(s))
            .collect::<Vec<_>>()
            .join(",");
        let headers = [
            ("Content-Type", q.protocol.content_type()),
            ("X-Labagent-Agent", self.agent_id.as_str()),
            ("X-Labagent-Channel", q.channel.as_str()),
            ("X-Labagent-Protocol", q.protocol.as_str()),
            ("X-Labagent-Kind", "query"),
            ("X-Labagent-Specimens", specimens.as_str()),
            ("X-Labagent-Query-Id", q.id.as_str()),
        ];
        let mut retried = false;
        loop {
            let cred = match self.auth.credential() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(channel = %q.channel, query = %q.id, error = %e, "host query not asked upstream: no credential");
                    return None;
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut all: Vec<(&str, &str)> = headers.to_vec();
            if let Some(v) = cred.header_value() {
                all.push(("Authorization", v));
            }
            let t = left.min(self.timeout);
            let reply = match self.http.send(
                &self.url,
                &all,
                Some(q.text.as_bytes()),
                MAX_ANSWER,
                Some(t),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(channel = %q.channel, query = %q.id, error = %e, "host query: the upstream did not answer");
                    return None;
                }
            };
            match reply.status {
                200 => {
                    return match check_answer(q.protocol, &reply.body) {
                        Ok(a) => Some(a),
                        Err(why) => {
                            tracing::warn!(channel = %q.channel, query = %q.id, len = reply.body.len(), reason = why,
                                "host query: the upstream's answer does not parse; not sent");
                            None
                        }
                    };
                }
                401 if !retried && matches!(cred, Credential::Bearer(_)) => {
                    retried = true;
                    self.auth.invalidate(&cred);
                }
                204 | 404 => {
                    tracing::debug!(channel = %q.channel, query = %q.id, status = reply.status, "host query: the upstream knows nothing");
                    return None;
                }
                s => {
                    tracing::info!(channel = %q.channel, query = %q.id, status = s, "host query: the upstream answered with an error");
                    return None;
                }
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (so a comma inside an
/// id never splits it).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks an upstream's answer in the instrument's protocol and makes its line ends CR:
/// ASTM must start with an H record and hold an L record; HL7 must be one or more
/// messages, each starting with a valid MSH (with a message type). The error says why
/// (never the content).
pub fn check_answer(protocol: Protocol, body: &str) -> Result<String, &'static str> {
    let text = body.replace("\r\n", "\r").replace('\n', "\r");
    let text = text.trim_matches(|c: char| c.is_whitespace() && c != '\r');
    let text = text.trim_start_matches('\r');
    let records: Vec<&str> = text.split('\r').filter(|r| !r.trim().is_empty()).collect();
    if records.is_empty() {
        return Err("empty answer");
    }
    match protocol {
        Protocol::Astm => {
            let h = records[0].as_bytes();
            if h.len() < 2 || !h[0].eq_ignore_ascii_case(&b'H') || h[1].is_ascii_alphanumeric() {
                return Err("an ASTM answer must start with an H record");
            }
            let field = h[1];
            let has_l = records.iter().skip(1).any(|r| {
                let r = r.as_bytes();
                r.len() >= 2 && r[0].eq_ignore_ascii_case(&b'L') && r[1] == field
            });
            if !has_l {
                return Err("an ASTM answer must end with an L record");
            }
        }
        Protocol::Hl7 => {
            if !records[0].starts_with("MSH") {
                return Err("an HL7 answer must start with MSH");
            }
            let mut starts: Vec<usize> = records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.starts_with("MSH"))
                .map(|(i, _)| i)
                .collect();
            starts.push(records.len());
            for w in starts.windows(2) {
                let msg = records[w[0]..w[1]].join("\r");
                let v = labagent_hal::hl7::msh::MshView::new_checked(msg.as_bytes())
                    .map_err(|_| "an HL7 answer holds a message whose MSH is not valid")?;
                if v.message_type().code.is_empty() {
                    return Err("an HL7 answer holds a message without MSH-9");
                }
            }
        }
        Protocol::Raw => return Err("raw channels have no host queries"),
    }
    let mut out = records.join("\r");
    out.push('\r');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_and_line_ends_made_cr() {
        let astm = "H|\\^&\nP|1\r\nO|1|S1||^^^GLU\nL|1|N\n";
        assert_eq!(
            check_answer(Protocol::Astm, astm).unwrap(),
            "H|\\^&\rP|1\rO|1|S1||^^^GLU\rL|1|N\r"
        );
        assert!(check_answer(Protocol::Astm, "P|1\rL|1|N\r").is_err());
        assert!(check_answer(Protocol::Astm, "H|\\^&\rO|1|S1\r").is_err());
        assert!(check_answer(Protocol::Astm, "").is_err());
        assert!(check_answer(Protocol::Astm, "<html>oops</html>").is_err());
        let two = "MSH|^~\\&|LIS||AN||20240101||QCK^Q02|1|P|2.3.1\rMSA|AA|Q1\r\
                   MSH|^~\\&|LIS||AN||20240101||DSR^Q03|2|P|2.3.1\rQRD|x\r";
        assert_eq!(check_answer(Protocol::Hl7, two).unwrap(), format!("{two}"));
        assert!(check_answer(Protocol::Hl7, "PID|1\rMSH|^~\\&|A\r").is_err());
        assert!(check_answer(Protocol::Hl7, "MSH|^~\\&|LIS||AN||2024||\r").is_err());
        assert!(check_answer(Protocol::Hl7, "MSH").is_err());
        assert!(check_answer(Protocol::Raw, "x").is_err());
    }

    #[test]
    fn specimens_are_percent_encoded() {
        assert_eq!(percent_encode("A-1.b_~"), "A-1.b_~");
        assert_eq!(percent_encode("a,b c/é"), "a%2Cb%20c%2F%C3%A9");
    }
}
