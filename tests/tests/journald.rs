//! What stderr looks like to its reader: under journald (`JOURNAL_STREAM` naming fd 2, as
//! systemd sets it) every line carries its `<N>` priority, fatal errors and each line of a
//! multi-line message included; in a pipe or a file there are no colour escapes; a
//! `JOURNAL_STREAM` that names another file is ignored.
//!
//! The agent's stderr is one end of a socket pair here (systemd's journal stream is a
//! stream socket too); its device and inode make the `JOURNAL_STREAM` value.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use labagent_tests::config::{self, free_port};

const T: Duration = Duration::from_secs(30);

/// The agent with stderr on a socket; `journal`: set `JOURNAL_STREAM` to that socket's
/// `dev:ino` (else to another file's). Returns the child and its stderr lines.
fn spawn(args: &[&str], cfg: &std::path::Path, journal: bool) -> (Child, mpsc::Receiver<String>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let meta = std::fs::File::from(OwnedFd::from(theirs.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let stream = if journal {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let mut cmd = labagent_tests::labagent();
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .env("JOURNAL_STREAM", stream)
        .env("RUST_LOG", "labagent=debug,warn")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::from(OwnedFd::from(theirs)));
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(ours).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one contains `needle` (all lines read so far, that one last).
fn until(rx: &mpsc::Receiver<String>, needle: &str, got: &mut Vec<String>) {
    loop {
        let l = rx
            .recv_timeout(T)
            .unwrap_or_else(|e| panic!("no line with {needle:?} ({e}); got {got:#?}"));
        let found = l.contains(needle);
        got.push(l);
        if found {
            return;
        }
    }
}

/// A config with three mistakes, reported on three lines.
const BROKEN: &str = "[agent]\nid = \"bad id!\"\nstate_dir = \"relative\"\n\
    [uplink]\nkind = \"http\"\nurl = \"ftp://x\"\n[uplink.auth]\nmethod = \"none\"\n\
    [[channel]]\nname = \"a\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:1\"\n";

/// Every remaining line until the child's stderr closes.
fn rest(rx: &mpsc::Receiver<String>, got: &mut Vec<String>) {
    while let Ok(l) = rx.recv_timeout(T) {
        got.push(l);
    }
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::Term).unwrap();
    child.wait().unwrap()
}

fn priority(line: &str) -> Option<u8> {
    let b = line.as_bytes();
    (b.len() >= 3 && b[0] == b'<' && b[2] == b'>' && b[1].is_ascii_digit()).then(|| b[1] - b'0')
}

#[test]
fn under_journald_every_line_has_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config::write(
        dir.path(),
        "journal",
        &config::dead_url(),
        "",
        &config::listen_channel("chem", "astm", port),
    );
    let (mut child, rx) = spawn(&["run"], &cfg, true);
    let mut got = Vec::new();
    until(&rx, "agent running", &mut got);
    // A multi-line error: a reload of a file with three mistakes.
    std::fs::write(&cfg, BROKEN).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::Hup,
    )
    .unwrap();
    until(&rx, "expected a https:// URL", &mut got);
    let st = stop(&mut child);
    rest(&rx, &mut got);
    assert!(st.success(), "{got:#?}");

    for l in &got {
        assert!(
            priority(l).is_some(),
            "line without a priority: {l:?}\n{got:#?}"
        );
        assert!(!l.contains('\x1b'), "colour escape under journald: {l:?}");
    }
    let find = |needle: &str| {
        got.iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing: {got:#?}"))
    };
    assert_eq!(priority(find("agent running")), Some(6), "info");
    // A plain-http uplink is allowed with a warning.
    assert_eq!(priority(find("travel unencrypted")), Some(4), "warning");
    assert_eq!(priority(find("agent started")), Some(7), "debug");
    // The reload error and each line of it: errors.
    assert_eq!(priority(find("configuration not reloaded")), Some(3));
    assert_eq!(priority(find("agent.state_dir")), Some(3));
    assert_eq!(priority(find("expected a https:// URL")), Some(3));
    assert_eq!(priority(find("agent stopped")), Some(6));
}

#[test]
fn a_fatal_start_error_is_logged_once_with_priority_3() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config::write(
        dir.path(),
        "journal",
        &config::dead_url(),
        &format!("metrics = \"{}\"", taken.local_addr().unwrap()),
        &config::listen_channel("chem", "astm", free_port()),
    );
    let (mut child, rx) = spawn(&["run"], &cfg, true);
    let st = child.wait().unwrap();
    let mut got = Vec::new();
    rest(&rx, &mut got);
    assert_eq!(st.code(), Some(71), "{got:#?}");
    let fatal: Vec<&String> = got
        .iter()
        .filter(|l| l.contains("cannot listen for metrics"))
        .collect();
    assert_eq!(fatal.len(), 1, "logged once: {got:#?}");
    assert_eq!(priority(fatal[0]), Some(3), "{got:#?}");

    // A broken config file, before logging starts: every line of it at priority 3.
    std::fs::write(&cfg, BROKEN).unwrap();
    let (mut child, rx) = spawn(&["run"], &cfg, true);
    let st = child.wait().unwrap();
    let mut got = Vec::new();
    rest(&rx, &mut got);
    assert_eq!(st.code(), Some(2), "{got:#?}");
    assert_eq!(got.len(), 3, "{got:#?}");
    for l in &got {
        assert_eq!(priority(l), Some(3), "{l:?} in {got:#?}");
    }
}

#[test]
fn elsewhere_lines_are_plain_and_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::write(
        dir.path(),
        "plain",
        &config::dead_url(),
        "",
        &config::listen_channel("chem", "astm", free_port()),
    );
    // JOURNAL_STREAM inherited, but fd 2 is another file: no priorities; a socket is not
    // a terminal: no colour (NO_COLOR is not set here).
    let (mut child, rx) = spawn(&["run"], &cfg, false);
    let mut got = Vec::new();
    until(&rx, "agent running", &mut got);
    let st = stop(&mut child);
    rest(&rx, &mut got);
    assert!(st.success(), "{got:#?}");
    for l in &got {
        assert!(priority(l).is_none(), "{l:?}");
        assert!(!l.contains('\x1b'), "colour escape in a pipe: {l:?}");
    }
    // Timestamps stay (nobody else adds them here).
    assert!(
        got.iter().any(|l| l.len() > 20 && l.as_bytes()[4] == b'-'),
        "{got:#?}"
    );
}
