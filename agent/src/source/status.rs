//! Port state for `labagent status`, published on a `watch` channel.
//!
//! The status reporter is also where state changes are logged, so a device that stays
//! unplugged for a week logs one warning, not one per retry.

use std::sync::Arc;

use tokio::sync::watch;

/// What a port is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortState {
    /// Not tried yet.
    #[default]
    Starting,
    /// Serial port open, or TCP client connected.
    Open,
    /// TCP server bound and accepting (see [`PortStatus::connections`]).
    Listening,
    /// The serial device path does not exist (unplugged, or a dangling by-id symlink).
    WaitingForDevice,
    /// The last open/connect/bind failed, or the connection ended; retrying with backoff.
    Reconnecting,
}

/// A snapshot of a port, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStatus {
    pub state: PortState,
    /// Why the port is not open (or why the last connection ended). Never holds data bytes.
    pub last_error: Option<String>,
    /// The device or peer of the current connection, e.g. `/dev/serial/by-id/x -> /dev/ttyUSB0`.
    pub label: Option<String>,
    /// Connections open now (0 or 1 except for `listen`).
    pub connections: usize,
    /// Open / connect / bind attempts so far, successful or not.
    pub attempts: u64,
    /// Connections handed to the driver so far.
    pub opened: u64,
}

/// The sending side, shared by a link and its connections.
#[derive(Clone, Debug)]
pub(crate) struct StatusTx {
    tx: Arc<watch::Sender<PortStatus>>,
    /// What the port is, for log lines (a path or an address).
    pub(crate) port: Arc<str>,
}

impl StatusTx {
    pub(crate) fn new(port: impl Into<Arc<str>>) -> Self {
        let (tx, _) = watch::channel(PortStatus::default());
        StatusTx {
            tx: Arc::new(tx),
            port: port.into(),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<PortStatus> {
        self.tx.subscribe()
    }

    pub(crate) fn attempt(&self) {
        self.tx.send_modify(|s| s.attempts += 1);
    }

    /// Moves to `state`, logging only when the state or the error changed.
    pub(crate) fn set(&self, state: PortState, error: Option<String>, label: Option<String>) {
        let mut changed = false;
        self.tx.send_modify(|s| {
            changed = s.state != state || s.last_error != error;
            s.state = state;
            if error.is_some() || state == PortState::Open || state == PortState::Listening {
                s.last_error = error.clone();
            }
            if label.is_some() || state != PortState::Open {
                s.label = label.clone();
            }
        });
        if !changed {
            return;
        }
        let port = &*self.port;
        let err = error.as_deref().unwrap_or("");
        match state {
            PortState::Starting => {}
            PortState::Open => tracing::info!(port, device = label.as_deref(), "port open"),
            PortState::Listening => tracing::info!(port, "listening"),
            PortState::WaitingForDevice => {
                tracing::warn!(port, error = err, "device not present; waiting for it")
            }
            PortState::Reconnecting => tracing::warn!(port, error = err, "port closed; retrying"),
        }
    }

    pub(crate) fn conn_opened(&self) {
        self.tx.send_modify(|s| {
            s.connections += 1;
            s.opened += 1;
        });
    }

    /// A connection ended; `sequential` links (serial, connect) are then reconnecting.
    pub(crate) fn conn_closed(&self, sequential: bool, why: Option<String>) {
        self.tx
            .send_modify(|s| s.connections = s.connections.saturating_sub(1));
        if sequential {
            let why = why.unwrap_or_else(|| "closed by the driver".to_owned());
            self.set(PortState::Reconnecting, Some(why), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_state_and_counts() {
        let s = StatusTx::new("/dev/x");
        let rx = s.subscribe();
        s.attempt();
        s.set(PortState::WaitingForDevice, Some("not found".into()), None);
        assert_eq!(rx.borrow().state, PortState::WaitingForDevice);
        s.set(PortState::Open, None, Some("/dev/x -> /dev/pts/3".into()));
        s.conn_opened();
        let now = rx.borrow().clone();
        assert_eq!(now.last_error, None);
        assert_eq!((now.attempts, now.opened, now.connections), (1, 1, 1));
        s.conn_closed(true, Some("device gone".into()));
        let now = rx.borrow().clone();
        assert_eq!(now.state, PortState::Reconnecting);
        assert_eq!(now.last_error.as_deref(), Some("device gone"));
        assert_eq!(now.connections, 0);
    }
}
