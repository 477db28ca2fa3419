//! Checks `strace -f -s 64` output of the agent for the durability promise: every
//! acknowledgement written to an instrument comes after an fsync/fdatasync of the store
//! that *started after* the frame or block it answers was read (ARCHITECTURE.md,
//! "Durability"). Used by the ASTM and HL7 strace tests, with their own idea of a frame and
//! an ACK.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::AgentProcess;

/// Where the tests expect strace (tests/run.sh installs it).
pub const STRACE: &str = "/usr/bin/strace";

/// A traced agent on one listen channel of `protocol`, the uplink on a closed port (so
/// only appends write to the store): `strace -f -s 64` of the syscalls the checker reads,
/// into `dir/trace`. Returns the agent (ready: "agent running" logged), the channel's
/// port, the trace path and the store directory.
pub fn traced_agent(dir: &Path, protocol: &str) -> (AgentProcess, u16, PathBuf, PathBuf) {
    assert!(
        Path::new(STRACE).exists(),
        "{STRACE} is missing: apt-get install strace (tests/run.sh does this)"
    );
    let port = crate::config::free_port();
    let cfg = crate::config::write(
        dir,
        "strace",
        &crate::config::dead_url(),
        "",
        &crate::config::listen_channel("traced", protocol, port),
    );
    let trace = dir.join("trace");
    let mut cmd = Command::new(STRACE);
    cmd.args(["-f", "-s", "64", "-e"])
        .arg(
            "trace=openat,close,accept,accept4,read,recvfrom,write,sendto,pwrite64,fsync,fdatasync",
        )
        .arg("-o")
        .arg(&trace)
        .arg(crate::labagent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1");
    let agent = AgentProcess::spawn_wrapped(cmd);
    agent.wait_line(0, &["agent running"], Duration::from_secs(30));
    (agent, port, trace, dir.join("state").join("store"))
}

/// What the checker found.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub frames: usize,
    pub acks_after_frames: usize,
    pub syncs: usize,
    pub violation: Option<String>,
}

/// True if the strace string argument starting at `s` holds an STX byte. strace writes it
/// `\2`, or `\002` when a digit follows (as the frame number always does); `\\2` is an
/// escaped backslash followed by the character 2.
pub fn has_stx(s: &str) -> bool {
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

pub fn ret_of(line: &str) -> Option<i64> {
    line.rsplit("= ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// True if the strace string argument holds a VT (MLLP start of block), which strace
/// writes `\v` (and `\\v` is an escaped backslash followed by the letter v).
pub fn has_vt(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1))
        .any(|i| b[i] == b'\\' && b[i + 1] == b'v' && (i == 0 || b[i - 1] != b'\\'))
}

/// Parses `strace -f -s 64` output of the agent.
pub fn check(
    trace: &str,
    store_dir: &Path,
    is_frame: impl Fn(&str) -> bool,
    is_ack: impl Fn(&str) -> bool,
) -> Verdict {
    let dir = store_dir.to_string_lossy().into_owned();
    let mut store_fds: HashMap<i64, bool> = HashMap::new();
    let mut conn_fds: HashMap<i64, bool> = HashMap::new();
    // pid -> (syscall, fd, index at start, arguments shown at start) of an unfinished call
    let mut pending: HashMap<String, (String, i64, usize, String)> = HashMap::new();
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
        let joined;
        let (name, fd, start, args, finished) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, fd, start, first)) = pending.remove(pid) else {
                continue;
            };
            // A write split as `sendto(10, "\6", … <unfinished ...>` and `<... sendto
            // resumed>) = 1`: its bytes are on the first line.
            joined = format!("{first} {r}");
            (name, fd, start, joined.as_str(), true)
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
                pending.insert(pid.to_string(), (name, fd, i, args.to_string()));
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
            "read" | "recvfrom" if conn_fds.contains_key(&fd) && ok && is_frame(args) => {
                v.frames += 1;
                frame_read = Some(start);
            }
            "write" | "sendto" if conn_fds.contains_key(&fd) && is_ack(args) => {
                if let Some(f) = frame_read.take() {
                    v.acks_after_frames += 1;
                    if synced_from.map_or(true, |s| s <= f) && v.violation.is_none() {
                        v.violation = Some(format!(
                            "line {}: ACK for the frame/block read at line {} without a store sync started after that read: {line}",
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
