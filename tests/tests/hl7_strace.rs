//! The durability promise for HL7, at the syscall level on the real binary: every ACK
//! written to a sender comes after an fsync/fdatasync of the store that *started after*
//! the block it answers was read (ARCHITECTURE.md, "Durability"). Same method as
//! `astm_strace.rs`: `strace -f`, the uplink on a closed port so only appends write.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use labagent::simulate::{send_hl7, Pacer};
use labagent_tests::process::AgentProcess;

const STRACE: &str = "/usr/bin/strace";

#[derive(Debug, Default, PartialEq)]
struct Verdict {
    frames: usize,
    acks_after_frames: usize,
    syncs: usize,
    violation: Option<String>,
}

/// True if the strace string argument holds a VT (MLLP start of block), which strace
/// writes `\v` (and `\\v` is an escaped backslash followed by the letter v).
fn has_vt(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1))
        .any(|i| b[i] == b'\\' && b[i + 1] == b'v' && (i == 0 || b[i - 1] != b'\\'))
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
            "read" | "recvfrom" if conn_fds.contains_key(&fd) && ok && has_vt(args) => {
                v.frames += 1;
                frame_read = Some(start);
            }
            "write" | "sendto" if conn_fds.contains_key(&fd) && args.contains("\"\\vMSH") => {
                if let Some(f) = frame_read.take() {
                    v.acks_after_frames += 1;
                    if synced_from.map_or(true, |s| s <= f) && v.violation.is_none() {
                        v.violation = Some(format!(
                            "line {}: ACK for the block read at line {} without a store sync started after that read: {line}",
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
                1 read(10, \"\\vMSH|^~\\\\&|A|B\\r\\34\\r\", 16384) = 16\n";
    let ack =
        "1 write(10, \"\\vMSH|^~\\\\&|C|D|A|B|2026||ACK|1|P|2.5\\rMSA|AA|1\\r\\34\\r\", 40) = 40\n";
    let good = format!(
        "{base}2 pwrite64(7, \"x\", 1, 0) = 1\n3 fdatasync(7 <unfinished ...>\n3 <... fdatasync resumed>) = 0\n{ack}"
    );
    let v = check(&good, Path::new("/s/store"));
    assert_eq!((v.frames, v.acks_after_frames, v.syncs), (1, 1, 1), "{v:?}");
    assert!(v.violation.is_none(), "{v:?}");
    assert!(check(&format!("{base}{ack}"), Path::new("/s/store"))
        .violation
        .is_some());
    assert!(!has_vt("\\\\vx") && has_vt("\\vMSH"));
}

#[test]
fn every_hl7_ack_follows_a_store_fsync() {
    assert!(
        Path::new(STRACE).exists(),
        "{STRACE} is missing: apt-get install strace (tests/run.sh does this)"
    );
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, dead) = (free(), free());
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"strace\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n\
             [uplink]\nkind = \"http\"\nurl = \"http://127.0.0.1:{dead}/x\"\nallow_plain_http = true\n\
             [uplink.auth]\nmethod = \"none\"\n\
             [[channel]]\nname = \"hema\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:{port}\"\n",
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
    agent.wait_line(0, &["agent running"], Duration::from_secs(30));

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            format!(
                "MSH|^~\\&|STRACE|LAB|LIS|HOSP|20261130||ORU^R01|S{i}|P|2.5\rPID|1||P{i}\rOBX|1|TX|N||{}\r",
                "n".repeat(100 + 10 * i)
            )
            .into_bytes()
        })
        .collect();
    let sent = send_hl7(
        &mut s,
        &mut Pacer::new(None),
        &messages,
        Duration::from_secs(20),
        |_| {},
    )
    .unwrap();
    assert!(sent.iter().all(|x| x.detail == "AA"), "{sent:?}");
    drop(s);
    let st = agent.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", agent.log());

    let text = std::fs::read_to_string(&trace).unwrap();
    let v = check(&text, &dir.path().join("state").join("store"));
    eprintln!("{v:?}");
    assert!(v.frames >= 20, "expected a block read per message: {v:?}");
    assert_eq!(v.acks_after_frames, 20, "every message was ACKed: {v:?}");
    assert!(v.syncs >= 20, "{v:?}");
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}
