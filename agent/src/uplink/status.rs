//! What `labagent status` shows about the uplink, published through a
//! `tokio::sync::watch` so readers always see the latest state without polling the
//! uplink thread. No token or secret is ever part of it: only the token's expiry.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The uplink's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkState {
    Starting,
    /// Delivering, or idle with nothing to send.
    Ok,
    /// A transient failure (network, 5xx, 429/503); retrying after `wait`.
    BackingOff {
        wait: Duration,
    },
    /// A configuration or permission problem (401 after a new token, 403, 404, 405,
    /// redirect, TLS): not the messages' fault; retried with backoff.
    Paused {
        reason: String,
    },
    /// The token endpoint refused the client, or granted too broad a scope under
    /// `strict_scope`.
    CredentialsProblem {
        detail: String,
    },
    Stopped,
}

impl fmt::Display for UplinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UplinkState::Starting => f.write_str("starting"),
            UplinkState::Ok => f.write_str("ok"),
            UplinkState::BackingOff { wait } => write!(f, "backing off ({} s)", wait.as_secs()),
            UplinkState::Paused { reason } => write!(f, "paused: {reason}"),
            UplinkState::CredentialsProblem { detail } => {
                write!(f, "credentials problem: {detail}")
            }
            UplinkState::Stopped => f.write_str("stopped"),
        }
    }
}

/// The authentication in use right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Basic,
    ClientCredentials,
    /// OAuth2 configured, but the token endpoint refused the grant: Basic for now.
    FallbackBasic,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Basic => "basic",
            AuthMode::ClientCredentials => "client_credentials",
            AuthMode::FallbackBasic => "fallback: basic",
        })
    }
}

/// The upper bounds (milliseconds) latency buckets are chosen from: every one below the
/// configured timeout, then the timeout itself, which no request outlasts.
const LATENCY_STEPS_MS: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 15_000, 30_000, 60_000, 120_000,
    300_000,
];

/// Time from sending a request to its response, per request (any HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    /// Upper bounds of the buckets in milliseconds, ascending; the last is the timeout.
    pub bounds_ms: Vec<u64>,
    /// Non-cumulative counts per bound, plus one for the rest.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_us: u64,
}

impl Latency {
    /// Buckets that reach `timeout` (`[uplink] timeout`).
    pub fn new(timeout: Duration) -> Self {
        let t = (timeout.as_millis().min(u128::from(u64::MAX)) as u64).max(1);
        let mut bounds_ms: Vec<u64> = LATENCY_STEPS_MS.into_iter().filter(|b| *b < t).collect();
        bounds_ms.push(t);
        Latency {
            buckets: vec![0; bounds_ms.len() + 1],
            bounds_ms,
            count: 0,
            sum_us: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = self
            .bounds_ms
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(self.bounds_ms.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us += d.as_micros() as u64;
    }
}

impl Default for Latency {
    /// For the default `timeout` of 30 s.
    fn default() -> Self {
        Latency::new(Duration::from_secs(30))
    }
}

/// Which failed attempts deserve a log line: the first of a kind and every change of kind
/// (with how many attempts the previous one took), and the recovery — not each repeat.
/// A server answering 503 for an hour logs two lines, not one per attempt.
#[derive(Debug, Default)]
pub struct Failures {
    current: Option<String>,
    attempts: u64,
}

/// What a failed attempt is, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The first failure after a success (or ever).
    First,
    /// A different failure than the previous attempts'.
    Changed { previous: String, attempts: u64 },
    /// The same failure again; `attempts` counts this one.
    Repeated { attempts: u64 },
}

impl Failures {
    /// An attempt failed with `what` (the error text, without the wait).
    pub fn failed(&mut self, what: &str) -> Failure {
        match &self.current {
            Some(c) if c == what => {
                self.attempts += 1;
                Failure::Repeated {
                    attempts: self.attempts,
                }
            }
            Some(_) => {
                let previous = self.current.replace(what.to_string()).unwrap_or_default();
                let attempts = std::mem::replace(&mut self.attempts, 1);
                Failure::Changed { previous, attempts }
            }
            None => {
                self.current = Some(what.to_string());
                self.attempts = 1;
                Failure::First
            }
        }
    }

    /// An attempt succeeded: the failure that ended, and its attempts.
    pub fn recovered(&mut self) -> Option<(String, u64)> {
        let what = self.current.take()?;
        Some((what, std::mem::take(&mut self.attempts)))
    }
}

/// A snapshot of the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkStatus {
    pub state: UplinkState,
    pub auth_mode: AuthMode,
    /// Expiry of the access token in use (never the token).
    pub token_expires_at: Option<SystemTime>,
    pub last_delivery: Option<SystemTime>,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub rejected: u64,
    /// Waits after a failed attempt (network, 5xx, 429/503, pause).
    pub retries: u64,
    /// Requests to the token endpoint since start.
    pub token_requests: u64,
    pub latency: Latency,
}

impl UplinkStatus {
    pub fn new(auth_mode: AuthMode) -> Self {
        UplinkStatus {
            state: UplinkState::Starting,
            auth_mode,
            token_expires_at: None,
            last_delivery: None,
            last_error: None,
            delivered: 0,
            rejected: 0,
            retries: 0,
            token_requests: 0,
            latency: Latency::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_reach_the_timeout() {
        let l = Latency::new(Duration::from_secs(30));
        assert_eq!(l.bounds_ms.last(), Some(&30_000));
        assert_eq!(
            l.bounds_ms,
            [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 15_000, 30_000]
        );
        assert_eq!(
            Latency::new(Duration::from_secs(7)).bounds_ms.last(),
            Some(&7000)
        );
        assert_eq!(
            Latency::new(Duration::from_millis(1500)).bounds_ms,
            [5, 10, 25, 50, 100, 250, 500, 1000, 1500]
        );
        let mut l = Latency::new(Duration::from_secs(30));
        l.observe(Duration::from_secs(12));
        l.observe(Duration::from_secs(31));
        assert_eq!(l.buckets[11], 1, "12 s is in the 15 s bucket");
        assert_eq!(l.buckets[13], 1, "past the timeout: the last bucket");
        assert_eq!((l.count, l.sum_us), (2, 43_000_000));
    }

    #[test]
    fn repeated_failures_are_counted_not_logged() {
        let mut f = Failures::default();
        assert_eq!(f.recovered(), None);
        let busy = "server unavailable (HTTP 503)";
        assert_eq!(f.failed(busy), Failure::First);
        for n in 2..=180 {
            assert_eq!(f.failed(busy), Failure::Repeated { attempts: n });
        }
        assert_eq!(
            f.failed("connection refused"),
            Failure::Changed {
                previous: busy.into(),
                attempts: 180
            }
        );
        assert_eq!(f.recovered(), Some(("connection refused".into(), 1)));
        assert_eq!(f.recovered(), None);
        assert_eq!(f.failed(busy), Failure::First);
    }
}
