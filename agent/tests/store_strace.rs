//! Ordering proof (ARCHITECTURE.md, Durability 2): run `examples/store_crash` under
//! `strace -f` and check that every `ACK <id>` written to stdout (the stand-in for the
//! instrument ACK) is preceded by a successful fsync/fdatasync that *started after* the
//! write that stored the message: of the same file as the ACKing thread's last store
//! write (the append writes its log record in the caller's thread), or, if that thread
//! wrote nothing to the store, of any store file after the last write to any store file.
//! Writes the checkpointer makes to sled in the background are copies of records already
//! synced in the log, and need no sync before an ACK. The per-thread rule relies on
//! `store_crash` appending and ACKing on one thread; the end-to-end strace tests of the
//! drivers (`tests/src/strace.rs`) use an any-store-fsync-after-the-frame rule instead.
//! SIGKILL tests cannot show this (the page cache outlives the process); strace can.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const STRACE: &str = "/usr/bin/strace";

fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join("store_crash");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--example", "store_crash", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .status()
            .unwrap();
        assert!(
            st.success() && p.exists(),
            "could not build {}",
            p.display()
        );
    }
    p
}

/// Result of checking a trace: number of ACKs seen and the first violation.
#[derive(Debug)]
struct Verdict {
    acks: usize,
    syncs: usize,
    violation: Option<String>,
}

/// Parses `strace -f` output. Store files are those opened under `store_dir`.
fn check_trace(trace: &str, store_dir: &Path) -> Verdict {
    let dir = store_dir.to_string_lossy().into_owned();
    let mut store_fds: HashMap<i64, bool> = HashMap::new();
    // fd -> file (one id per successful openat), file -> highest write covered by a sync,
    // thread -> (file, write) of its last store write.
    let mut fd_file: HashMap<i64, u64> = HashMap::new();
    let mut files = 0u64;
    let mut synced_file: HashMap<u64, u64> = HashMap::new();
    let mut last_write_by: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut sync_file: HashMap<&str, u64> = HashMap::new();
    // pid -> (syscall, fd) of an unfinished call
    let mut pending: HashMap<&str, (String, i64)> = HashMap::new();
    let mut sync_start: HashMap<&str, u64> = HashMap::new();
    let (mut write_gen, mut synced_gen) = (0u64, 0u64);
    let mut v = Verdict {
        acks: 0,
        syncs: 0,
        violation: None,
    };
    for (n, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (name, fd, finished, ok) = if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("").to_string();
            let Some((_, fd)) = pending.remove(pid) else {
                continue;
            };
            (name, fd, true, !r.contains("= -1"))
        } else {
            let Some(paren) = rest.find('(') else {
                continue;
            };
            let name = rest[..paren].to_string();
            let args = &rest[paren + 1..];
            let fd = args
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .next()
                .unwrap_or("")
                .parse::<i64>()
                .unwrap_or(-1);
            if name == "openat" {
                if let (Some(path), Some(ret)) = (args.split('"').nth(1), rest.rsplit("= ").next())
                {
                    if let Ok(ret) = ret.split_whitespace().next().unwrap_or("").parse::<i64>() {
                        if ret >= 0 {
                            store_fds.insert(ret, path.starts_with(&dir));
                            files += 1;
                            fd_file.insert(ret, files);
                        }
                    }
                }
                continue;
            }
            if name == "close" {
                store_fds.remove(&fd);
                continue;
            }
            let unfinished = rest.contains("<unfinished ...>");
            if unfinished {
                pending.insert(pid, (name.clone(), fd));
            }
            // The ACK itself.
            if name == "write" && fd == 1 && args.starts_with("1, \"ACK ") {
                v.acks += 1;
                let covered = match last_write_by.get(pid) {
                    Some((file, gen)) => synced_file.get(file).is_some_and(|s| s >= gen),
                    None => synced_gen >= write_gen,
                };
                if !covered && v.violation.is_none() {
                    v.violation = Some(format!(
                        "line {}: ACK written after a store write not yet fsynced: {line}",
                        n + 1
                    ));
                }
                continue;
            }
            (name, fd, !unfinished, !rest.contains("= -1"))
        };
        let is_store = store_fds.get(&fd).copied().unwrap_or(false);
        if !is_store {
            continue;
        }
        match name.as_str() {
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
                write_gen += 1;
                if let Some(&file) = fd_file.get(&fd) {
                    last_write_by.insert(pid, (file, write_gen));
                }
            }
            "fsync" | "fdatasync" => {
                if !finished || !sync_start.contains_key(pid) {
                    sync_start.insert(pid, write_gen);
                    if let Some(&file) = fd_file.get(&fd) {
                        sync_file.insert(pid, file);
                    }
                }
                if finished {
                    let start = sync_start.remove(pid).unwrap_or(write_gen);
                    let file = sync_file.remove(pid);
                    if ok {
                        synced_gen = synced_gen.max(start);
                        if let Some(file) = file {
                            let s = synced_file.entry(file).or_insert(0);
                            *s = (*s).max(start);
                        }
                        v.syncs += 1;
                    }
                }
            }
            _ => {}
        }
    }
    v
}

#[test]
fn every_ack_follows_an_fsync_of_the_store() {
    assert!(
        Path::new(STRACE).exists(),
        "{STRACE} is missing: apt-get install strace (the test script does this on CI)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let trace = dir.path().join("trace");
    let out = Command::new(STRACE)
        .args(["-f", "-e", "trace=openat,close,fsync,fdatasync,write,pwrite64,writev,pwritev,pwritev2,sync_file_range", "-o"])
        .arg(&trace)
        .arg(example())
        .arg(&store_dir)
        .arg("200")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let v = check_trace(&text, &store_dir);
    eprintln!("{v:?}");
    assert_eq!(v.acks, 200, "expected 200 ACK writes in the trace");
    assert!(
        v.syncs >= 200,
        "expected at least one fsync per single-writer append"
    );
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}

/// The checker itself must catch an ACK that overtakes the fsync.
#[test]
fn checker_catches_ack_before_fsync() {
    let good = "1 openat(AT_FDCWD, \"/s/sled/db\", O_RDWR) = 3\n\
                2 pwrite64(3, \"x\", 1, 0) = 1\n\
                3 fdatasync(3 <unfinished ...>\n\
                3 <... fdatasync resumed>) = 0\n\
                1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    let v = check_trace(good, Path::new("/s"));
    assert!(v.violation.is_none() && v.acks == 1, "{v:?}");
    let bad = "1 openat(AT_FDCWD, \"/s/sled/db\", O_RDWR) = 3\n\
               3 fdatasync(3 <unfinished ...>\n\
               2 pwrite64(3, \"x\", 1, 0) = 1\n\
               3 <... fdatasync resumed>) = 0\n\
               1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    assert!(check_trace(bad, Path::new("/s")).violation.is_some());
    let no_sync = "1 openat(AT_FDCWD, \"/s/sled/db\", O_RDWR) = 3\n\
                   2 pwrite64(3, \"x\", 1, 0) = 1\n\
                   2 sync_file_range(3, 0, 1, 7) = 0\n\
                   1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    assert!(check_trace(no_sync, Path::new("/s")).violation.is_some());
    // The appending thread writes its log record; another thread syncs that file; a
    // background write to sled after the sync does not need a sync of its own.
    let log = "1 openat(AT_FDCWD, \"/s/wal/1.wal\", O_RDWR) = 4\n\
               5 openat(AT_FDCWD, \"/s/sled/db\", O_RDWR) = 3\n\
               1 write(4, \"rec\", 3) = 3\n\
               2 fdatasync(4) = 0\n\
               5 pwrite64(3, \"x\", 1, 0) = 1\n\
               1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    let v = check_trace(log, Path::new("/s"));
    assert!(v.violation.is_none() && v.acks == 1, "{v:?}");
    // ... but a sync of another file does not cover the record.
    let other = "1 openat(AT_FDCWD, \"/s/wal/1.wal\", O_RDWR) = 4\n\
                 5 openat(AT_FDCWD, \"/s/sled/db\", O_RDWR) = 3\n\
                 1 write(4, \"rec\", 3) = 3\n\
                 2 fdatasync(3) = 0\n\
                 1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    assert!(check_trace(other, Path::new("/s")).violation.is_some());
    // ... nor one that started before the record was written.
    let early = "1 openat(AT_FDCWD, \"/s/wal/1.wal\", O_RDWR) = 4\n\
                 2 fdatasync(4 <unfinished ...>\n\
                 1 write(4, \"rec\", 3) = 3\n\
                 2 <... fdatasync resumed>) = 0\n\
                 1 write(1, \"ACK a-1 00\\n\", 11) = 11\n";
    assert!(check_trace(early, Path::new("/s")).violation.is_some());
}
