//! Kill -9 test of a real process: `examples/store_crash` appends, confirms and prunes;
//! it prints each id only after `append` returned. We SIGKILL it at seeded random moments
//! (after N printed lines — an event, not a timer), restart it, and check that the store
//! opens every time and every printed id is there with the printed SHA-256, unless it was
//! confirmed (then pruning may have removed it).
//!
//! `LABAGENT_CRASH_KILLS` (default 20) and `LABAGENT_CRASH_SEED` tune it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use labagent::store::{MessageId, Store, StoreOptions};
use sha2::{Digest, Sha256};

fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/store_crash-xxxx → target/debug/examples/store_crash
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join("store_crash");
    if !p.exists() {
        // `cargo test` builds examples, `cargo test --test store_crash` does not.
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

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_loses_no_acknowledged_message() {
    let kills: usize = std::env::var("LABAGENT_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("LABAGENT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x05ee_d1ab);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut lines_total = 0;
    for round in 0..kills {
        let mut child = Command::new(example())
            .arg(&store_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let wait_for = 1 + rng.next() % 150;
        let mut seen = 0;
        let mut line = String::new();
        let record =
            |line: &str, acked: &mut BTreeMap<String, String>, confirmed: &mut BTreeSet<String>| {
                let mut w = line.split_whitespace();
                match w.next() {
                    Some("ACK") => {
                        acked.insert(w.next().unwrap().to_string(), w.next().unwrap().to_string());
                    }
                    Some("CONFIRM") => {
                        confirmed.insert(w.next().unwrap().to_string());
                    }
                    _ => {}
                }
            };
        // Wait for `wait_for` lines (READY first: the store opened), then kill.
        while seen < wait_for {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "round {round}: store_crash exited early (could not open the store?)"
            );
            if seen == 0 {
                assert_eq!(line.trim(), "READY", "round {round}");
            }
            record(&line, &mut acked, &mut confirmed);
            seen += 1;
        }
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::Kill,
        )
        .unwrap();
        child.wait().unwrap();
        // Lines written before the kill are acknowledgements too.
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record(&line, &mut acked, &mut confirmed);
            seen += 1;
        }
        lines_total += seen;
    }
    let store = Store::open(
        &store_dir,
        StoreOptions {
            min_free: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let mut present = 0;
    for (id, sha) in &acked {
        let mid: MessageId = id.parse().unwrap();
        match store.get(mid).unwrap() {
            Some(m) => {
                let got = labagent::text::hex(&Sha256::digest(&m.bytes));
                assert_eq!(&got, sha, "message {id} corrupted");
                present += 1;
            }
            None => assert!(confirmed.contains(id), "acknowledged message {id} lost"),
        }
    }
    eprintln!(
        "{kills} kills, {lines_total} lines, {} acked, {present} present, {} confirmed",
        acked.len(),
        confirmed.len()
    );
    assert!(acked.len() >= kills);
}
