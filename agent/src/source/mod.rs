//! Transport: the byte pipes the protocol drivers run on.
//!
//! A channel's port is an [`Endpoint`] — a serial device, a TCP server address, or a TCP
//! client target. [`Link`] turns it into a sequence of connections ([`Conn`]): the driver
//! runs a hal session on one until it errors or ends, drops it, and asks for the next one.
//! Everything about getting there — opening with the right line settings, waiting for an
//! unplugged device, reconnecting with [`Backoff`], limiting and timing out TCP clients —
//! lives here, so a driver is one loop:
//!
//! ```no_run
//! # async fn session(_c: labagent::source::Conn) {}
//! # async fn run(endpoint: labagent::source::Endpoint) {
//! use labagent::source::{Link, LinkOptions};
//! let mut link = Link::new(endpoint, LinkOptions::default());
//! let status = link.status(); // watch::Receiver<PortStatus>, for `labagent status`
//! loop {
//!     let conn = link.next_connection().await;
//!     if link.concurrent() {
//!         tokio::spawn(session(conn)); // listen: one session per client
//!     } else {
//!         session(conn).await; // serial / connect: one at a time
//!     }
//! }
//! # }
//! ```
//!
//! Invariants:
//! - Serial and `connect` links hold at most one connection: `next_connection` waits until
//!   the previous `Conn` is dropped (the serial port is opened exclusively).
//! - Every retry waits a backoff delay of at least half the nominal one, also after a
//!   connection that opened and died at once: no busy loop, whatever the device does.
//! - State changes are logged once each (warn when the port is lost, info when it is back),
//!   never per attempt, and never with data bytes.
//! - `next_connection` never fails and is cancel-safe: select it against shutdown.

/// The one backoff policy (`crate::backoff`), under the name the transports use.
pub(crate) use crate::backoff;
mod conn;
mod serial;
mod settings;
mod status;
mod tcp;

use std::net::SocketAddr;

use tokio::sync::watch;

pub use backoff::Backoff;
pub use conn::{AsyncStream, Conn, IdleTimeout};
pub use serial::SerialLink;
pub use settings::{DataBits, FlowControl, Parity, SerialSettings, StopBits};
pub use status::{PortState, PortStatus};
pub use tcp::{tune_socket, TcpConnectLink, TcpListenLink, TcpOptions};

/// Where a channel's bytes come from: exactly one of `serial`, `listen`, `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Serial(SerialSettings),
    /// TCP server: instruments connect to us.
    Listen(SocketAddr),
    /// TCP client to `host:port` (a serial device server, typically, for ASTM).
    Connect(String),
}

/// Settings of a [`Link`] beyond its endpoint.
#[derive(Clone, Debug, Default)]
pub struct LinkOptions {
    pub backoff: Backoff,
    pub tcp: TcpOptions,
}

/// A connection supervisor for one endpoint.
#[derive(Debug)]
pub enum Link {
    Serial(SerialLink),
    Listen(TcpListenLink),
    Connect(TcpConnectLink),
}

impl Link {
    /// Builds the link; nothing is opened yet except a `listen` socket, which binds at once
    /// when it can. Must be called inside a tokio runtime.
    pub fn new(endpoint: Endpoint, opts: LinkOptions) -> Link {
        match endpoint {
            Endpoint::Serial(s) => Link::Serial(SerialLink::new(s, opts.backoff)),
            Endpoint::Listen(addr) => {
                Link::Listen(TcpListenLink::new(addr, opts.tcp, opts.backoff))
            }
            Endpoint::Connect(target) => {
                Link::Connect(TcpConnectLink::new(target, opts.tcp, opts.backoff))
            }
        }
    }

    /// The next connection; see the module doc. Never fails, cancel-safe.
    pub async fn next_connection(&mut self) -> Conn {
        match self {
            Link::Serial(l) => l.next_connection().await,
            Link::Listen(l) => l.next_connection().await,
            Link::Connect(l) => l.next_connection().await,
        }
    }

    /// Port state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<PortStatus> {
        match self {
            Link::Serial(l) => l.status(),
            Link::Listen(l) => l.status(),
            Link::Connect(l) => l.status(),
        }
    }

    /// Whether several connections can be open at once (`listen`): the driver then runs a
    /// session per connection concurrently and keeps calling `next_connection`.
    pub fn concurrent(&self) -> bool {
        matches!(self, Link::Listen(_))
    }
}
