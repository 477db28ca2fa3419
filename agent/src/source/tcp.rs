//! TCP links: a server that accepts many instrument connections (`listen`), and a client
//! that keeps one connection to a serial device server or an analyzer up (`connect`).
//!
//! Both set TCP_NODELAY (protocol replies are a single byte: ACK) and keepalive probes, so
//! a peer that vanished without a FIN (power cut, cable pulled) is noticed within about
//! two minutes instead of the kernel's default two hours — for `listen` that also frees
//! its slot under `max_connections`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::conn::{AsyncStream, Conn, IdleTimeout, Tracker};
use super::status::{PortState, PortStatus, StatusTx};

/// A connection that lasted this long, or carried data, resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 5;

/// Settings of TCP links.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// `listen` only: connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// Reads fail with `TimedOut` after this long without traffic (both kinds).
    pub idle_timeout: Option<Duration>,
    /// `connect` only: give up one attempt after this long.
    pub connect_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            max_connections: 16,
            idle_timeout: Some(Duration::from_secs(600)),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Sets TCP_NODELAY and keepalive probes on a connected socket.
pub fn tune_socket(s: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    s.set_nodelay(true)?;
    sockopt::set_socket_keepalive(s, true)?;
    sockopt::set_tcp_keepidle(s, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(s, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(s, KEEPALIVE_PROBES)?;
    Ok(())
}

fn boxed(s: TcpStream, idle: Option<Duration>) -> Box<dyn AsyncStream> {
    match idle {
        Some(idle) => Box::new(IdleTimeout::new(s, idle)),
        None => Box::new(s),
    }
}

/// A TCP server; each accepted connection is its own [`Conn`].
#[derive(Debug)]
pub struct TcpListenLink {
    addr: SocketAddr,
    opts: TcpOptions,
    listener: Option<TcpListener>,
    slots: Arc<Semaphore>,
    backoff: Backoff,
    status: StatusTx,
    retry_at: Option<Instant>,
}

impl TcpListenLink {
    /// Binds at once when it can (so [`local_addr`](Self::local_addr) is known); a failed
    /// bind (address in use, not yet configured) is retried by `next_connection`.
    /// Must be called inside a tokio runtime.
    pub fn new(addr: SocketAddr, opts: TcpOptions, backoff: Backoff) -> Self {
        let status = StatusTx::new(addr.to_string());
        let mut link = TcpListenLink {
            addr,
            slots: Arc::new(Semaphore::new(opts.max_connections)),
            opts,
            listener: None,
            backoff,
            status,
            retry_at: None,
        };
        link.bind();
        link
    }

    /// The bound address (useful with port 0), once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn status(&self) -> watch::Receiver<PortStatus> {
        self.status.subscribe()
    }

    fn bind(&mut self) {
        self.status.attempt();
        // std's bind sets SO_REUSEADDR, so a restart does not wait out TIME_WAIT.
        let bound = std::net::TcpListener::bind(self.addr).and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        });
        match bound {
            Ok(l) => {
                self.backoff.reset();
                self.listener = Some(l);
                self.status.set(PortState::Listening, None, None);
            }
            Err(e) => {
                self.status
                    .set(PortState::Reconnecting, Some(format!("bind: {e}")), None);
                self.retry_at = Some(Instant::now() + self.backoff.next_delay());
            }
        }
    }

    /// The next accepted connection within `max_connections`. Connections over the limit
    /// are closed here, so keep calling this (spawn a session per `Conn`). Cancel-safe.
    pub async fn next_connection(&mut self) -> Conn {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let Some(listener) = &self.listener else {
                self.bind();
                continue;
            };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            port = %self.addr, %peer, max = self.opts.max_connections,
                            "too many connections; closing the new one"
                        );
                        drop(stream);
                        continue;
                    };
                    if let Err(e) = tune_socket(&stream) {
                        tracing::debug!(%peer, error = %e, "socket options");
                    }
                    tracing::info!(port = %self.addr, %peer, "connection accepted");
                    let io = boxed(stream, self.opts.idle_timeout);
                    let (conn, _) =
                        Conn::new(peer.to_string(), io, self.status.clone(), false, Some(slot));
                    return conn;
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin on a full fd table.
                    tracing::warn!(port = %self.addr, error = %e, "accept failed");
                    self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                }
            }
        }
    }
}

/// A TCP client that reconnects with backoff; one [`Conn`] at a time.
#[derive(Debug)]
pub struct TcpConnectLink {
    target: String,
    opts: TcpOptions,
    backoff: Backoff,
    status: StatusTx,
    slot: Arc<Semaphore>,
    previous: Option<(Arc<Tracker>, Instant)>,
    retry_at: Option<Instant>,
}

impl TcpConnectLink {
    /// `target` is `host:port`, resolved again at every attempt.
    pub fn new(target: impl Into<String>, opts: TcpOptions, backoff: Backoff) -> Self {
        let target = target.into();
        TcpConnectLink {
            status: StatusTx::new(target.clone()),
            target,
            opts,
            backoff,
            slot: Arc::new(Semaphore::new(1)),
            previous: None,
            retry_at: None,
        }
    }

    pub fn status(&self) -> watch::Receiver<PortStatus> {
        self.status.subscribe()
    }

    /// The next connection. Waits until the previous [`Conn`] is dropped, then the backoff
    /// delay, then retries until connected. Never fails; cancel-safe.
    pub async fn next_connection(&mut self) -> Conn {
        let slot = self
            .slot
            .clone()
            .acquire_owned()
            .await
            .expect("the link never closes its semaphore");
        if let Some((tracker, opened_at)) = self.previous.take() {
            if tracker.bytes_read() > 0 || opened_at.elapsed() >= STABLE_AFTER {
                self.backoff.reset();
            }
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            self.status.attempt();
            let attempt =
                tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect(&self.target));
            let result = match attempt.await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.opts.connect_timeout),
                )),
            };
            match result {
                Ok(stream) => {
                    if let Err(e) = tune_socket(&stream) {
                        tracing::debug!(target = %self.target, error = %e, "socket options");
                    }
                    let label = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| self.target.clone());
                    self.status.set(PortState::Open, None, Some(label.clone()));
                    let io = boxed(stream, self.opts.idle_timeout);
                    let (conn, tracker) =
                        Conn::new(label, io, self.status.clone(), true, Some(slot));
                    self.previous = Some((tracker, Instant::now()));
                    return conn;
                }
                Err(e) => {
                    self.status
                        .set(PortState::Reconnecting, Some(e.to_string()), None);
                    self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                }
            }
        }
    }
}
