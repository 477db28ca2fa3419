//! The product's promise, checked on the real binary at the syscall level: every ACK the
//! agent writes to an instrument after a frame comes after an fsync/fdatasync of the store
//! that *started after* that frame was read (ARCHITECTURE.md, "Durability"). A SIGKILL
//! test cannot show this (the page cache survives the process); `strace -f` can.
//!
//! The uplink points at a closed port, so no confirmation writes interleave (they are
//! deliberately not synced) and every store write comes from an append.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::process::AgentProcess;

const STRACE: &str = "/usr/bin/strace";

/// What the checker found.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    frames: usize,
    acks_after_frames: usize,
    syncs: usize,
    violation: Option<String>,
}

/// True if the strace string argument starting at `s` holds an STX byte. strace writes it
/// `\2`, or `\002` when a digit follows (as the frame number always does); `\\2` is an
/// escaped backslash followed by the character 2.
fn has_stx(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1)).any(|i| {
        if b[i] != b'\\' || (i > 0 && b[i - 1] == b'\\') {
            return false;
        }
        let rest = &b[i + 1..];
        rest.starts_with(b"002")
            || (rest.starts_with(b"2") && !rest.get(1).is_some_and(|c| c.is_ascii_digit()))
    })
}

fn ret_of(line: &str) -> Option<i64> {
    line.rsplit("= ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses `strace -f -s 64` output of the agent.
fn check(trace: &str, store_dir: &Path) -> Verdict {
    let dir = store_dir.to_string_lossy().into_owned();
    let mut store_fds: HashMap<i64, bool> = HashMap::new();
    let mut conn_fds: HashMap<i64, bool> = HashMap::new();
    // pid -> (syscall, fd, index at start) of an unfinished call
    let mut pending: HashMap<String, (String, i64, usize)> = HashMap::new();
    // Index (line) of the last frame read not yet answered, and of the start of the latest
    // completed store sync.
    let mut frame_read: Option<usize> = None;
    let mut synced_from: Option<usize> = None;
    let mut v = Verdict::default();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (name, fd, start, args, finished) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, fd, start)) = pending.remove(pid) else {
                continue;
            };
            (name, fd, start, r, true)
        } else {
            let Some(p) = rest.find('(') else { continue };
            let name = rest[..p].to_string();
            let args = &rest[p + 1..];
            let fd = args
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .next()
                .unwrap_or("")
                .parse::<i64>()
                .unwrap_or(-1);
            if rest.contains("<unfinished ...>") {
                pending.insert(pid.to_string(), (name, fd, i));
                continue;
            }
            (name, fd, i, args, true)
        };
        debug_assert!(finished);
        let ok = ret_of(line).is_some_and(|r| r >= 0);
        match name.as_str() {
            "openat" => {
                if let (Some(path), Some(r)) = (args.split('"').nth(1), ret_of(line)) {
                    if r >= 0 {
                        store_fds.insert(r, path.starts_with(&dir));
                    }
                }
            }
            "accept4" | "accept" => {
                if let Some(r) = ret_of(line).filter(|r| *r >= 0) {
                    conn_fds.insert(r, true);
                }
            }
            "close" => {
                store_fds.remove(&fd);
                conn_fds.remove(&fd);
            }
            "fsync" | "fdatasync" if store_fds.get(&fd) == Some(&true) && ok => {
                v.syncs += 1;
                synced_from = Some(synced_from.map_or(start, |s| s.max(start)));
            }
            "read" | "recvfrom" if conn_fds.contains_key(&fd) && ok && has_stx(args) => {
                v.frames += 1;
                frame_read = Some(start);
            }
            "write" | "sendto" if conn_fds.contains_key(&fd) && args.contains(", \"\\6\"") => {
                if let Some(f) = frame_read.take() {
                    v.acks_after_frames += 1;
                    if synced_from.map_or(true, |s| s <= f) && v.violation.is_none() {
                        v.violation = Some(format!(
                            "line {}: ACK for the frame read at line {} without a store sync started after that read: {line}",
                            i + 1,
                            f + 1
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    v
}

#[test]
fn checker_catches_an_ack_before_the_sync() {
    let base = "1 openat(AT_FDCWD, \"/s/store/sled/db\", O_RDWR) = 7\n\
                1 accept4(9, NULL, NULL, SOCK_CLOEXEC) = 10\n\
                1 recvfrom(10, \"\\0021H|\\\\^&\\r\\3A1\\r\\n\", 64, 0, NULL, NULL) = 12\n";
    let good = format!(
        "{base}2 pwrite64(7, \"x\", 1, 0) = 1\n3 fdatasync(7 <unfinished ...>\n3 <... fdatasync resumed>) = 0\n1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n"
    );
    let v = check(&good, Path::new("/s/store"));
    assert_eq!((v.frames, v.acks_after_frames, v.syncs), (1, 1, 1), "{v:?}");
    assert!(v.violation.is_none(), "{v:?}");
    let no_sync = format!("{base}1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n");
    assert!(check(&no_sync, Path::new("/s/store")).violation.is_some());
    // A sync that started before the frame was read does not cover it.
    let early = "1 openat(AT_FDCWD, \"/s/store/sled/db\", O_RDWR) = 7\n\
                 1 accept4(9, NULL, NULL, SOCK_CLOEXEC) = 10\n\
                 3 fdatasync(7 <unfinished ...>\n\
                 1 recvfrom(10, \"\\0021H|\\r\\3A1\\r\\n\", 64, 0, NULL, NULL) = 12\n\
                 3 <... fdatasync resumed>) = 0\n\
                 1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n";
    assert!(check(early, Path::new("/s/store")).violation.is_some());
}

#[test]
fn every_ack_to_the_instrument_follows_a_store_fsync() {
    assert!(
        Path::new(STRACE).exists(),
        "{STRACE} is missing: apt-get install strace (tests/run.sh does this)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"strace\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n\
             [uplink]\nkind = \"http\"\nurl = \"http://127.0.0.1:{dead}/x\"\nallow_plain_http = true\n\
             [uplink.auth]\nmethod = \"none\"\n\
             [[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("state").display(),
            dir.path().join("status.sock").display()
        ),
    )
    .unwrap();
    let trace = dir.path().join("trace");
    let mut cmd = Command::new(STRACE);
    cmd.args(["-f", "-s", "64", "-e"])
        .arg(
            "trace=openat,close,accept,accept4,read,recvfrom,write,sendto,pwrite64,fsync,fdatasync",
        )
        .arg("-o")
        .arg(&trace)
        .arg(labagent_tests::labagent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1");
    let mut agent = AgentProcess::spawn_wrapped(cmd);
    agent.wait_line(0, &["listening"], Duration::from_secs(30));

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let mut m = format!("H|\\^&|||STRACE^1|||||LIS||P|1\rP|1||S{i}\r");
            for r in 0..(i % 4 + 1) {
                m.push_str(&format!(
                    "R|{}|^^^T{r}|{i}.{r}|U||||F|{}\r",
                    r + 1,
                    "n".repeat(150)
                ));
            }
            m.push_str("L|1|N\r");
            m.into_bytes()
        })
        .collect();
    let sent = AstmInstrument::new(None)
        .send_all(&mut s, &messages)
        .unwrap();
    assert!(sent.iter().all(|x| x.delivered), "{sent:?}");
    drop(s);
    let st = agent.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", agent.log());

    let text = std::fs::read_to_string(&trace).unwrap();
    let v = check(&text, &dir.path().join("state").join("store"));
    eprintln!("{v:?}");
    assert!(
        v.frames >= 20,
        "expected at least one frame read per message: {v:?}"
    );
    assert_eq!(
        v.acks_after_frames, v.frames,
        "every frame was ACKed: {v:?}"
    );
    assert!(v.syncs >= 20, "{v:?}");
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}
