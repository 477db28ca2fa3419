//! The one HTTP agent the uplink uses, configured the way ARCHITECTURE.md asks.
//!
//! ureq's defaults do not fit an unattended agent, so each is set on purpose:
//! * every timeout (resolve, connect, send, receive, body, and the whole call) is set —
//!   ureq has none by default, and a server that never answers must not hold the queue;
//! * HTTP statuses are data (`http_status_as_error(false)`): the status table in
//!   [`super::response`] decides, not the client;
//! * redirects are never followed (`max_redirects(0)`): credentials must not reach
//!   another origin, and the status table pauses with the `Location` named instead;
//! * one [`ureq::Agent`] for everything, so TLS connections are kept alive and reused;
//! * the proxy comes from the environment (`HTTPS_PROXY`, `NO_PROXY`, ...).
//!
//! Every call is blocking; the uplink calls it only from its own thread.

use std::time::Duration;

use ureq::unversioned::transport::Connector;
use ureq::Agent;

use super::response::Hints;
use super::tls::{tls_config, TlsError};
use super::UplinkSettings;

/// Largest response body read (error details, token responses).
const MAX_BODY: u64 = 64 * 1024;

/// A response: status, the headers that matter, and the start of the body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub hints: Hints,
    pub body: String,
}

/// Why no response was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetErrorKind {
    /// Certificate not trusted, handshake failed: a configuration problem.
    Tls,
    Timeout,
    /// DNS, connect, reset, protocol errors.
    Network,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct NetError {
    pub kind: NetErrorKind,
    pub detail: String,
}

/// The uplink's HTTP client: one keep-alive agent.
#[derive(Clone)]
pub struct HttpClient {
    agent: Agent,
}

impl HttpClient {
    pub fn new(settings: &UplinkSettings) -> Result<Self, TlsError> {
        let tls = tls_config(
            settings.ca_file.as_deref(),
            settings.client_cert.as_deref(),
            settings.client_key.as_deref(),
        )?;
        let t = Some(settings.timeout);
        let proxy = ureq::Proxy::try_from_env();
        if let Some(p) = &proxy {
            tracing::info!(
                host = p.host(),
                port = p.port(),
                "uplink uses a proxy from the environment"
            );
        }
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .https_only(!settings.allow_plain_http)
            .proxy(proxy)
            .tls_config(tls)
            .timeout_global(t)
            .timeout_resolve(t)
            .timeout_connect(t)
            .timeout_send_request(t)
            .timeout_send_body(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .max_idle_connections_per_host(4)
            .max_idle_age(Duration::from_secs(50))
            .user_agent(concat!("labagent/", env!("CARGO_PKG_VERSION")))
            .build();
        // Our resolver: IP literals as they are, names cached and looked up on one thread
        // (ureq's own spawns a thread per request, see `resolve`). On top of ureq's
        // connectors, a layer that sends a request's head and body in one write.
        let agent = Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default()
                .chain(super::coalesce::Coalesce),
            super::resolve::CachingResolver::new(),
        );
        Ok(HttpClient { agent })
    }

    /// POSTs `body`; `headers` are (name, value) pairs.
    pub fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, NetError> {
        self.post_limited(url, headers, body, MAX_BODY)
    }

    /// [`post`](Self::post) reading up to `limit` bytes of the response body (a FHIR
    /// transaction-response grows with the Bundle).
    pub fn post_limited(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
    ) -> Result<Reply, NetError> {
        self.send(url, headers, Some(body), limit, None)
    }

    /// A POST or (without `body`) a GET; `timeout`: the whole call's limit instead of
    /// `[uplink] timeout` (a host query's deadline, a long poll's wait plus timeout).
    pub fn send(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        limit: u64,
        timeout: Option<Duration>,
    ) -> Result<Reply, NetError> {
        let mut resp = match body {
            Some(body) => with(self.agent.post(url), headers, timeout).send(body),
            None => with(self.agent.get(url), headers, timeout).call(),
        }
        .map_err(net_error)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let hints = Hints {
            retry_after: header("retry-after"),
            rate_limit: header("ratelimit"),
            location: header("location"),
        };
        let status = resp.status().as_u16();
        // The whole body is read, so the connection can be reused; a body that does not
        // arrive in time makes the call fail (nothing is confirmed on a half answer).
        let bytes = match resp.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(_)) => Vec::new(),
            Err(e) => return Err(net_error(e)),
        };
        Ok(Reply {
            status,
            hints,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

fn net_error(e: ureq::Error) -> NetError {
    let kind = match &e {
        ureq::Error::Timeout(_) => NetErrorKind::Timeout,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => NetErrorKind::Tls,
        ureq::Error::Io(io) if is_tls(io) => NetErrorKind::Tls,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => NetErrorKind::Timeout,
        _ => NetErrorKind::Network,
    };
    NetError {
        kind,
        detail: e.to_string(),
    }
}

fn is_tls(io: &std::io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// A request with `headers` and, when given, `timeout` for the whole exchange.
fn with<B>(
    mut req: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
    timeout: Option<Duration>,
) -> ureq::RequestBuilder<B> {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(t) = timeout {
        req = req
            .config()
            .timeout_global(Some(t))
            .timeout_recv_response(Some(t))
            .timeout_recv_body(Some(t))
            .build();
    }
    req
}
