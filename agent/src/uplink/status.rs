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

/// Upper bounds (milliseconds) of the upload-latency histogram buckets; a last, implicit
/// bucket takes the rest.
pub const LATENCY_BUCKETS_MS: [u64; 9] = [5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// Time from sending a request to its response, per request (any HTTP status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_MS`], plus one for the rest.
    pub buckets: [u64; 10],
    pub count: u64,
    pub sum_us: u64,
}

impl Latency {
    pub fn observe(&mut self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us += d.as_micros() as u64;
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
