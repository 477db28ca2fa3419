//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: one datagram per state
//! change to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! The watchdog interval comes from `WATCHDOG_USEC`, honoured only when `WATCHDOG_PID` is
//! unset or names this process (systemd sets both; a child must not feed its parent's dog).
//! We ping at half the interval, as `sd_watchdog_enabled(3)` recommends.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager (or nothing, outside systemd).
#[derive(Debug)]
pub struct Notifier {
    sock: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let s = s.into_encoded_bytes();
            match s.first() {
                Some(b'@') => Some(Target::Abstract(s[1..].to_vec())),
                Some(b'/') => Some(Target::Path(std::path::PathBuf::from(
                    std::ffi::OsString::from_vec(s),
                ))),
                _ => None,
            }
        });
        let sock = target.and_then(|t| UnixDatagram::unbound().ok().map(|s| (s, t)));
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { sock, watchdog }
    }

    /// A notifier that sends nothing (tests, `labagent demo`).
    pub fn disabled() -> Notifier {
        Notifier {
            sock: None,
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the configured timeout; `None` without one.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `state` (newline-separated `KEY=value` assignments).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some((sock, target)) = &self.sock else {
            return Ok(());
        };
        match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC now), as sd_notify(3) asks of
    /// a reload, so the manager can tell this reload from an older one; `READY=1` follows
    /// once the new configuration is applied.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    fn send(&self, s: &str) {
        if let Err(e) = self.notify(s) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is in.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1000
}

/// STATUS= takes one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

use std::os::unix::ffi::OsStringExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier {
            sock: Some((UnixDatagram::unbound().unwrap(), Target::Path(p))),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("2 channels\nbacklog 0");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"READY=1\nSTATUS=2 channels backlog 0".as_slice()
        );
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("labagent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            sock: Some((
                UnixDatagram::unbound().unwrap(),
                Target::Abstract(name.into_bytes()),
            )),
            watchdog: None,
        };
        n.watchdog();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert!(n.watchdog_every().is_none());
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier {
            sock: Some((UnixDatagram::unbound().unwrap(), Target::Path(p))),
            watchdog: None,
        };
        let before = monotonic_usec();
        n.reloading();
        let after = monotonic_usec();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let d = std::str::from_utf8(&buf[..len]).unwrap();
        let mut lines = d.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{d:?}"));
        assert!((before..=after).contains(&usec), "{before} {usec} {after}");
    }

    #[test]
    fn disabled_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        n.ready("x");
    }
}
