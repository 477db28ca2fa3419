//! Exit codes of the `labagent` binary, one per kind of failure, documented in `--help`,
//! the man page and the README from [`TABLE`].
//!
//! Chosen so they read right where administrators see them. `systemctl status` names the
//! LSB codes 2–7 (`status=3/NOTIMPLEMENTED`), so only 2 is used from that range, for the
//! one failure its name fits and a restart cannot cure: the configuration file
//! (`status=2/INVALIDARGUMENT`; the unit's `RestartPreventExitStatus=2`). Everything
//! else uses the BSD `sysexits.h` codes 64–78, which `systemd-analyze exit-status` lists
//! by name (USAGE, DATAERR, …) and which systemd restarts like any failure, except 64 and
//! 65, which the unit also excludes: a wrong command line or a store of another format
//! stays wrong however often the service restarts.

use crate::service::RunError;
use crate::store::StoreError;
use crate::uplink::tls::TlsError;
use crate::uplink::UplinkError;

/// Success.
pub const OK: u8 = 0;
/// A runtime failure: an IO error, a component that died; `status`, `monitor` and `queue`
/// when no agent answers.
pub const FAILURE: u8 = 1;
/// The configuration file is missing or invalid (`INVALIDARGUMENT`).
pub const CONFIG: u8 = 2;
/// The command line is wrong (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// The store holds data this version cannot use: another format version, or corrupt
/// (`EX_DATAERR`).
pub const DATA: u8 = 65;
/// A file the configuration names cannot be read: `ca_file`, `client_cert`, `client_key`
/// (`EX_NOINPUT`).
pub const NO_INPUT: u8 = 66;
/// An internal error: a start-up task panicked (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// The system refused a resource: a thread, the runtime, a port or socket in use
/// (`EX_OSERR`).
pub const OS: u8 = 71;
/// A system file is missing: no trusted root certificates for an https or mqtts URL
/// (`EX_OSFILE`; install `ca-certificates`).
pub const OS_FILE: u8 = 72;
/// The state directory cannot be created (`EX_CANTCREAT`).
pub const CANT_CREATE: u8 = 73;
/// An IO error opening the store (`EX_IOERR`).
pub const IO: u8 = 74;
/// Permission denied on the state directory, the store or a socket (`EX_NOPERM`).
pub const NO_PERMISSION: u8 = 77;

/// Every code with its meaning, in order.
pub const TABLE: &[(u8, &str)] = &[
    (OK, "success"),
    (
        FAILURE,
        "runtime failure (IO error, a component that died); status/monitor/queue: no agent answers",
    ),
    (
        CONFIG,
        "the configuration file is missing or invalid (systemd: RestartPreventExitStatus=2)",
    ),
    (USAGE, "bad command line (EX_USAGE)"),
    (
        DATA,
        "the store has another format version or is corrupt (EX_DATAERR)",
    ),
    (
        NO_INPUT,
        "a file the configuration names cannot be read: ca_file, client_cert, client_key (EX_NOINPUT)",
    ),
    (SOFTWARE, "internal error: a start-up task panicked (EX_SOFTWARE)"),
    (
        OS,
        "the system refused a resource: thread, runtime, a port or socket in use (EX_OSERR)",
    ),
    (
        OS_FILE,
        "no trusted root certificates for an https/mqtts URL: install ca-certificates (EX_OSFILE)",
    ),
    (CANT_CREATE, "the state directory cannot be created (EX_CANTCREAT)"),
    (IO, "IO error opening the store (EX_IOERR)"),
    (
        NO_PERMISSION,
        "permission denied on the state directory, store or a socket (EX_NOPERM)",
    ),
];

/// The table as `--help` and the man page show it.
pub fn help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, what) in TABLE {
        s.push_str(&format!("  {code:<3} {what}\n"));
    }
    s.pop();
    s
}

fn io(e: &std::io::Error, otherwise: u8) -> u8 {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => NO_PERMISSION,
        _ => otherwise,
    }
}

fn tls(e: &TlsError) -> u8 {
    match e {
        TlsError::NoRoots => OS_FILE,
        TlsError::File { .. } | TlsError::NoCertificate { .. } => NO_INPUT,
        TlsError::HalfClientCert => CONFIG,
    }
}

/// The code `labagent run` exits with when the agent cannot start.
pub fn of_run_error(e: &RunError) -> u8 {
    match e {
        RunError::Config(_) => CONFIG,
        RunError::Store { source, .. } => match source {
            StoreError::UnsupportedFormat { .. } | StoreError::Corrupt(_) => DATA,
            StoreError::Io(e) => io(e, IO),
            _ => IO,
        },
        RunError::StateDir { source, .. } => io(source, CANT_CREATE),
        RunError::Task(_) => SOFTWARE,
        RunError::Uplink(u) => match u {
            UplinkError::PlainHttp { .. } | UplinkError::BadUrl { .. } | UplinkError::Auth(_) => {
                CONFIG
            }
            UplinkError::Tls(t) => tls(t),
            UplinkError::Thread(_) => OS,
            // A channel's `timezone` the system's tzdata does not have.
            UplinkError::Fhir(_) => CONFIG,
        },
        RunError::Mqtt(m) => match m {
            crate::mqtt::MqttError::Tls(t) => tls(t),
            _ => CONFIG,
        },
        RunError::StatusSocket { source, .. } | RunError::Metrics { source, .. } => io(source, OS),
        RunError::Runtime(e) => io(e, OS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_2_is_the_config_file_only() {
        let mut codes: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
        // The LSB range 3..=7 reads as NOTIMPLEMENTED etc. in `systemctl status`.
        assert!(codes.iter().all(|c| !(3..=7).contains(c)), "{codes:?}");
        assert!(help().contains("  2   the configuration file"));
    }

    #[test]
    fn each_start_failure_has_its_code() {
        let io_err = |k| std::io::Error::new(k, "x");
        let cases: Vec<(RunError, u8)> = vec![
            (RunError::Config("uplink.url is not set".into()), CONFIG),
            (
                RunError::Store {
                    dir: "d".into(),
                    source: StoreError::UnsupportedFormat {
                        found: 9,
                        supported: 2,
                    },
                },
                DATA,
            ),
            (
                RunError::Store {
                    dir: "d".into(),
                    source: StoreError::Io(io_err(std::io::ErrorKind::Other)),
                },
                IO,
            ),
            (
                RunError::StateDir {
                    dir: "d".into(),
                    source: io_err(std::io::ErrorKind::PermissionDenied),
                },
                NO_PERMISSION,
            ),
            (
                RunError::StateDir {
                    dir: "d".into(),
                    source: io_err(std::io::ErrorKind::NotADirectory),
                },
                CANT_CREATE,
            ),
            (RunError::Task("store task: panicked".into()), SOFTWARE),
            (
                RunError::Uplink(UplinkError::Tls(TlsError::NoRoots)),
                OS_FILE,
            ),
            (
                RunError::Uplink(UplinkError::PlainHttp {
                    what: "uplink.url",
                    url: "http://x".into(),
                }),
                CONFIG,
            ),
            (
                RunError::Metrics {
                    addr: "127.0.0.1:1".into(),
                    source: io_err(std::io::ErrorKind::AddrInUse),
                },
                OS,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(of_run_error(&e), want, "{e}");
        }
    }
}
