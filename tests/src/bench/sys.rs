//! What several sections need: a process's memory and CPU from /proc, environment knobs,
//! and a store filled fast (many writers share group-commit syncs).

use std::time::{Duration, Instant};

use labagent::store::{NewMessage, Store};

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); `pid` "self" for this one.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process so far (`/proc/<pid>/stat`, 10 ms ticks).
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3. USER_HZ is 100 on Linux.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// User + system CPU time of each thread of a process so far, summed by thread name
/// (`sled-io-0` .. `sled-io-6` as `sled-io`).
pub fn cpu_by_thread(pid: &str) -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let tid = t.file_name().to_string_lossy().to_string();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        let name = match comm.trim() {
            n if n.starts_with("sled-io") => "sled-io".to_string(),
            n => n.to_string(),
        };
        *out.entry(name).or_default() += cpu_time(&format!("{pid}/task/{tid}"));
    }
    out
}

/// An integer from the environment, or `d`.
pub fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Appends `n` messages made by `make(i)` from `writers` threads, then syncs.
pub fn fill(
    store: &Store,
    n: u64,
    writers: u64,
    make: impl Fn(u64) -> NewMessage + Sync,
) -> Duration {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (store, make) = (store.clone(), &make);
            s.spawn(move || {
                let mut i = w;
                while i < n {
                    store.append(make(i)).expect("append");
                    i += writers;
                }
            });
        }
    });
    store.sync().expect("sync");
    t0.elapsed()
}
