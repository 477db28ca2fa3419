//! The HTTPS uplink: drains the durable queue to an ingest endpoint.
//!
//! # Why it looks like this
//!
//! * **Blocking HTTP in its own thread.** `ureq` is a blocking client; the uplink runs on a
//!   dedicated OS thread ([`Uplink::spawn`]) so a slow server can never stall the tokio
//!   runtime that serves the instruments. The queue and token cache it calls are blocking
//!   too (sled), which is fine there.
//! * **The queue is the source of truth.** A message leaves the queue only through
//!   [`Queue::confirm`] after a 2xx, or [`Queue::reject`] after a 400/409/413/415/422 that
//!   names that one message. Everything else (network errors, 5xx, 401/403/404/405, 429,
//!   a store that cannot answer) leaves the message where it is and the uplink waits; a
//!   new message never cuts a wait short (see [`run`]). Delivery is at-least-once; the
//!   `Idempotency-Key` (the message id) is the same on every retry and after restarts.
//! * **Order per channel.** A channel never moves past a message that is neither confirmed
//!   nor parked; a JSON batch rejected with 4xx is bisected, and halves go in order.
//! * **Time is injected** ([`Clock`]): backoff waits, token expiry and `Retry-After` dates
//!   use it, so tests jump over a 30-second wait in microseconds.
//! * **Secrets never reach a log line**: [`Secret`] and tokens print as `[redacted]`.
//!
//! Modules: [`http`] (ureq agent, request building), [`tls`] (roots, mutual TLS),
//! [`auth`] (OAuth2 client credentials, Basic, fallback), [`response`] (status → action
//! table), [`backoff`] (the clocks; the agent's one backoff policy), [`status`]
//! (what `labagent status` shows), [`queue`] (the traits the store implements, plus
//! in-memory versions for tests), [`run`] (the drain loop).
//!
//! # Proxies
//!
//! `HTTPS_PROXY` / `https_proxy` / `ALL_PROXY` / `HTTP_PROXY` are read at construction (the
//! first one set wins, ureq's order), and `NO_PROXY` lists hosts that bypass it. TLS is
//! end-to-end through the proxy (`CONNECT`).

pub mod auth;
pub mod backoff;
mod coalesce;
pub mod feed;
pub mod http;
pub mod query;
pub mod queue;
pub mod resolve;
pub mod response;
pub mod run;
pub mod status;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{AuthError, Authenticator};
pub use backoff::{Backoff, Clock, SystemClock, VirtualClock};
pub use query::QueryUpstream;
pub use queue::{
    MemoryQueue, MemoryTokenCache, Outgoing, Protocol, Queue, QueueError, StoredToken, TokenCache,
};
pub use run::{Uplink, UplinkError, UplinkHandle};
pub use status::{AuthMode, UplinkState, UplinkStatus};

/// How messages are posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One message per POST, the message text as the body.
    Raw,
    /// A JSON array of envelopes per POST, up to `batch_max`.
    Json,
    /// One FHIR R4 transaction Bundle per message, POSTed to `url` (the FHIR base); see
    /// [`crate::fhir`].
    Fhir,
}

/// `[uplink]` as the HTTP uplink needs it (the config crate is mapped onto this).
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub url: String,
    pub format: Format,
    pub batch_max: usize,
    /// Connect + whole request; also each phase's limit.
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub allow_plain_http: bool,
    /// `agent.id`, sent as `X-Labagent-Agent` and in envelopes.
    pub agent_id: String,
    /// `format = "fhir"`: each channel's mapping settings (code map, zone, ...); a channel
    /// not listed uses the defaults.
    pub fhir: std::collections::BTreeMap<String, labagent_config::ChannelFhir>,
    /// `[uplink] orders_url`: with `format = "fhir"`, order reports go there (without it
    /// they are delivered by policy: a FHIR base takes no plain reports).
    pub orders_url: Option<String>,
}

impl UplinkSettings {
    /// Defaults from CONFIG.md for everything but the URL and agent id.
    pub fn new(url: impl Into<String>, agent_id: impl Into<String>) -> Self {
        UplinkSettings {
            url: url.into(),
            format: Format::Raw,
            batch_max: 100,
            timeout: Duration::from_secs(30),
            ca_file: None,
            client_cert: None,
            client_key: None,
            allow_plain_http: false,
            agent_id: agent_id.into(),
            fhir: Default::default(),
            orders_url: None,
        }
    }
}

/// `[uplink.auth] method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientCredentials,
    Basic,
    None,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1): HTTP Basic of the form-encoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` as form fields.
    Post,
}

/// `[uplink.auth] fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    None,
    Basic,
}

/// `[uplink.auth]`, secret already resolved.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub method: AuthMethod,
    pub token_url: String,
    pub client_id: String,
    pub secret: Option<Secret>,
    pub scope: Option<String>,
    pub client_auth: ClientAuth,
    pub strict_scope: bool,
    pub fallback: Fallback,
    /// How long Basic is used after a fallback before OAuth2 is tried again.
    pub fallback_retry: Duration,
}

impl AuthSettings {
    /// No authentication at all.
    pub fn none() -> Self {
        AuthSettings {
            method: AuthMethod::None,
            token_url: String::new(),
            client_id: String::new(),
            secret: None,
            scope: None,
            client_auth: ClientAuth::Basic,
            strict_scope: false,
            fallback: Fallback::None,
            fallback_retry: Duration::from_secs(3600),
        }
    }

    /// Client credentials with the defaults of CONFIG.md.
    pub fn client_credentials(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: Secret,
    ) -> Self {
        AuthSettings {
            method: AuthMethod::ClientCredentials,
            token_url: token_url.into(),
            client_id: client_id.into(),
            secret: Some(secret),
            ..AuthSettings::none()
        }
    }
}

/// A secret (client secret, access token): the config crate's type, whose Debug and
/// Display print `[redacted]`; the value is reachable only through `Secret::expose`.
pub use labagent_config::Secret;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s} {s:?} {:?}", Some(&s)),
            "[redacted] [redacted] Some([redacted])"
        );
        assert_eq!(s.expose(), "hunter2");
    }
}
