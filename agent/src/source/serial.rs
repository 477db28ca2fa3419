//! The serial link: opens the configured path with every line setting and reopens it,
//! with backoff, whenever the device goes away.
//!
//! Why reopen the *path* rather than keep the fd: a USB adapter that is unplugged and
//! plugged back comes back as a new device (maybe `/dev/ttyUSB1`), and only the
//! `/dev/serial/by-id/...` symlink stays the same. The kernel resolves the symlink at each
//! `open`, so each attempt follows it to wherever it points now.
//!
//! "Gone" is an error (EIO, or a hang-up) or a 0-byte read on the connection: a tty in raw
//! mode never returns 0 otherwise. The link then waits a backoff delay before reopening,
//! even after a connection that opened fine, so a device that opens and fails at once
//! cannot make a busy loop.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::conn::{Conn, Tracker};
use super::settings::SerialSettings;
use super::status::{PortState, PortStatus, StatusTx};

/// A connection that lasted this long, or carried data, resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Yields one open serial port at a time; see [`SerialLink::next_connection`].
#[derive(Debug)]
pub struct SerialLink {
    settings: SerialSettings,
    backoff: Backoff,
    status: StatusTx,
    /// One permit: a new port is opened only once the previous [`Conn`] was dropped.
    slot: Arc<Semaphore>,
    previous: Option<(Arc<Tracker>, Instant)>,
    retry_at: Option<Instant>,
}

impl SerialLink {
    pub fn new(settings: SerialSettings, backoff: Backoff) -> Self {
        let status = StatusTx::new(settings.path.display().to_string());
        SerialLink {
            settings,
            backoff,
            status,
            slot: Arc::new(Semaphore::new(1)),
            previous: None,
            retry_at: None,
        }
    }

    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    /// Port state for status; changes as the port opens, closes and retries.
    pub fn status(&self) -> watch::Receiver<PortStatus> {
        self.status.subscribe()
    }

    /// The next open port. Waits until the previous [`Conn`] is dropped (the port is
    /// opened exclusively), then for the backoff delay if there was a previous one, then
    /// retries until the device opens. Never fails; cancel-safe (a cancelled call keeps its
    /// place in the backoff).
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
            match self.open() {
                Ok((stream, label)) => {
                    tracing::debug!(port = %self.settings.path.display(), line = %self.settings.line(), "opened");
                    self.status.set(PortState::Open, None, Some(label.clone()));
                    let (conn, tracker) = Conn::new(
                        label,
                        Box::new(stream),
                        self.status.clone(),
                        true,
                        Some(slot),
                    );
                    self.previous = Some((tracker, Instant::now()));
                    return conn;
                }
                Err(e) => {
                    let state = if is_missing(&e) {
                        PortState::WaitingForDevice
                    } else {
                        PortState::Reconnecting
                    };
                    self.status.set(state, Some(e.to_string()), None);
                    let delay = self.backoff.next_delay();
                    tracing::debug!(port = %self.settings.path.display(), ?delay, error = %e, "open failed");
                    self.retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    fn open(&self) -> io::Result<(tokio_serial::SerialStream, String)> {
        let path = &self.settings.path;
        // Resolving first tells a missing device (ENOENT, or a dangling by-id symlink)
        // apart from other failures, and names the real device in status.
        let real = std::fs::canonicalize(path)?;
        let stream =
            tokio_serial::SerialStream::open(&self.settings.builder()).map_err(serial_error)?;
        Ok((stream, label(path, &real)))
    }
}

fn label(path: &Path, real: &Path) -> String {
    if path == real {
        path.display().to_string()
    } else {
        format!("{} -> {}", path.display(), real.display())
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error())
}

fn serial_error(e: tokio_serial::Error) -> io::Error {
    let kind = match e.kind {
        tokio_serial::ErrorKind::Io(kind) => kind,
        // serialport reports EBUSY (someone else holds TIOCEXCL) as NoDevice.
        tokio_serial::ErrorKind::NoDevice => {
            return io::Error::other(format!("device busy or unavailable: {}", e.description))
        }
        tokio_serial::ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
        tokio_serial::ErrorKind::Unknown => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.description)
}
