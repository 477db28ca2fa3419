//! The ingest hot path of the real `labagent run` (issue 23): 8 lockstep MLLP connections
//! of 1 KiB ORU messages, durable ACK, measured from outside the agent process:
//!
//! - agent CPU (user + system, `/proc/<pid>/stat`) per message during the load, with the
//!   uplink offline (its URL refuses connections: ingest alone) and uploading raw to a
//!   local HTTP upstream (keep-alive);
//! - the agent's threads: how many exist, and how many were created during the load
//!   (`/proc/<pid>/task` sampled every 2 ms);
//! - the store's syncs per message (its own counter, through `labagent status --json`);
//! - with `bench --syscalls ingest`: the same load with `strace -c -f` attached to the agent
//!   for the load only, and the calls per message of each system call;
//! - one lockstep connection against the disk's own write + fdatasync rate, and python-hl7's
//!   asyncio MLLP server (which stores nothing) through the same client.
//!
//! The agent runs as deployed: its config's log level (info), no `RUST_LOG`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hl7::{drive, ms, start_python};
use crate::table::Row;

/// Messages per connection (8 connections) and for the single connection.
const PER_CONN: usize = 1500;
const ONE_CONN: usize = 2000;

/// `bench --syscalls`: count system calls with strace.
pub static SYSCALLS: AtomicBool = AtomicBool::new(false);

/// The agent as a child process, killed by its pid when dropped.
struct Agent {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
        }
        let _ = self.child.wait();
    }
}

impl Agent {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn start(upload_url: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = labagent_tests::config::free_port();
        let channel = labagent_tests::config::listen_channel("bench", "hl7", port);
        let cfg =
            labagent_tests::config::write(dir.path(), "bench-ingest", upload_url, "", &channel);
        let child = Command::new(labagent_tests::labagent_bin())
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start labagent");
        let a = Agent { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        a
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The store's sync counter, from `labagent status --json`.
    fn syncs(&self) -> Option<u64> {
        let out = Command::new(labagent_tests::labagent_bin())
            .arg("status")
            .arg("--json")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.pointer("/store/syncs").and_then(|s| s.as_u64())
    }
}

/// Samples a process's thread ids until stopped.
struct Threads {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(BTreeSet<u32>, usize, BTreeMap<String, usize>)>,
}

fn task_ids(pid: &str) -> BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Threads {
    fn start(pid: String) -> Threads {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            let mut most = 0;
            while !s.load(Ordering::Relaxed) {
                let now = task_ids(&pid);
                most = most.max(now.len());
                for t in now {
                    if seen.insert(t) {
                        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                            .unwrap_or_default();
                        *names.entry(comm.trim().to_string()).or_default() += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (seen, most, names)
        });
        Threads { stop, handle }
    }

    /// Every thread id seen, the most alive at once, and how many had each name.
    fn finish(self) -> (BTreeSet<u32>, usize, BTreeMap<String, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler")
    }
}

/// `strace -c -f` attached to a running process until dropped; the summary goes to a file.
struct Strace {
    child: Child,
    out: std::path::PathBuf,
}

impl Strace {
    fn attach(pid: &str, dir: &Path) -> Option<Strace> {
        let out = dir.join("strace.txt");
        let child = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&out)
            .args(["-p", pid])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // strace says "Process N attached" for each thread once it is in.
        let mut child = child;
        let err = child.stderr.take()?;
        let mut r = std::io::BufReader::new(err);
        let mut line = String::new();
        use std::io::BufRead;
        r.read_line(&mut line).ok()?;
        std::thread::spawn(move || {
            let mut sink = String::new();
            while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Some(Strace { child, out })
    }

    /// Detaches (SIGINT) and parses the summary: calls per system call.
    fn finish(mut self) -> BTreeMap<String, u64> {
        if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::Int);
        }
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut calls = BTreeMap::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall
            if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
                if let (Ok(n), Some(name)) = (f[3].parse::<u64>(), f.last()) {
                    if *name != "total" {
                        calls.insert(name.to_string(), n);
                    }
                }
            }
        }
        calls
    }
}

/// One load of `conns` × `per` messages against `agent`, with its figures.
struct Load {
    rate: f64,
    p99: Duration,
    cpu_us_per_msg: f64,
    /// The same, by thread name.
    cpu_by_thread: Vec<(String, f64)>,
    syncs_per_msg: Option<f64>,
    threads_most: usize,
    threads_created: usize,
    /// Names of the threads seen during the load that were not there before, and counts.
    created_names: String,
    syscalls: Option<BTreeMap<String, u64>>,
    messages: usize,
    /// Uploading: the agent's CPU per message from the load's start until the upstream
    /// has every message (the figure above counts only what was uploaded while the
    /// instrument side sent), and the messages uploaded per second over that time.
    drained: Option<(f64, f64)>,
}

fn load(
    agent: &Agent,
    conns: usize,
    per: usize,
    round: usize,
    upstream: Option<&labagent_tests::upstream::Upstream>,
) -> Load {
    let pid = agent.pid();
    // Warm up: connections, store, uplink.
    drive(agent.addr(), conns, 20, round * 10);
    let warm = conns * (20 + crate::hl7::WARMUP);
    // Uploading: the warm-up is uploaded before the window opens, so the window's CPU is
    // this load's alone.
    if let Some(u) = upstream {
        assert!(
            u.wait_accepted_count(warm, Duration::from_secs(120)),
            "the warm-up never reached the upstream"
        );
    }
    let before = task_ids(&pid);
    let syncs0 = agent.syncs();
    let strace = SYSCALLS
        .load(Ordering::Relaxed)
        .then(|| Strace::attach(&pid, agent.dir.path()))
        .flatten();
    let sampler = Threads::start(pid.clone());
    let t0 = std::time::Instant::now();
    let cpu0 = crate::sys::cpu_time(&pid);
    let threads0 = crate::sys::cpu_by_thread(&pid);
    let f = drive(agent.addr(), conns, per, round * 10 + 1);
    let cpu1 = crate::sys::cpu_time(&pid);
    let threads1 = crate::sys::cpu_by_thread(&pid);
    let (seen, most, names) = sampler.finish();
    let syscalls = strace.map(Strace::finish);
    let syncs1 = agent.syncs();
    // `drive` counts its own warm-up in the rate; the CPU window covers all of it.
    let n = conns * (per + crate::hl7::WARMUP);
    // Every message this agent was sent (warm-up included) reaches the upstream once.
    let drained = upstream.and_then(|u| {
        u.wait_accepted_count(warm + n, Duration::from_secs(600))
            .then(|| {
                let cpu = crate::sys::cpu_time(&pid);
                let secs = t0.elapsed().as_secs_f64();
                ((cpu - cpu0).as_secs_f64() * 1e6 / n as f64, n as f64 / secs)
            })
    });
    Load {
        drained,
        rate: f.rate,
        p99: f.p99,
        cpu_us_per_msg: (cpu1 - cpu0).as_secs_f64() * 1e6 / n as f64,
        cpu_by_thread: {
            let mut v: Vec<(String, f64)> = threads1
                .iter()
                .map(|(name, t)| {
                    let before = threads0.get(name).copied().unwrap_or_default();
                    let us = t.saturating_sub(before).as_secs_f64() * 1e6 / n as f64;
                    (name.clone(), us)
                })
                .filter(|(_, us)| *us >= 0.05)
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        },
        syncs_per_msg: syncs0
            .zip(syncs1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / n as f64),
        threads_most: most,
        threads_created: seen.difference(&before).count(),
        created_names: {
            let before_names: BTreeMap<String, usize> = before
                .iter()
                .map(|t| {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .fold(BTreeMap::new(), |mut m, n| {
                    *m.entry(n).or_default() += 1;
                    m
                });
            names
                .iter()
                .filter_map(|(n, c)| {
                    let new = c.saturating_sub(before_names.get(n).copied().unwrap_or(0));
                    (new > 0).then(|| format!("{n} x{new}"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
        syscalls,
        messages: n,
    }
}

fn rows_for(label: &str, l: &Load, rows: &mut Vec<Row>) {
    rows.push(Row::new(
        format!("agent CPU per message, 8 connections, {label}"),
        format!("{:.1} us", l.cpu_us_per_msg),
        format!(
            "{:.0} msgs/s, p99 {}; {} messages",
            l.rate,
            ms(l.p99),
            l.messages
        ),
    ));
    if let Some((us, rate)) = l.drained {
        rows.push(Row::new(
            format!("  … until every message is uploaded, {label}"),
            format!("{us:.1} us"),
            format!("{rate:.0} msgs/s uploaded over the load and the drain"),
        ));
    }
    rows.push(Row::new(
        format!("  CPU per message by thread, {label}"),
        "",
        l.cpu_by_thread
            .iter()
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    rows.push(Row::new(
        format!("  threads, {label}"),
        format!("{} at most", l.threads_most),
        format!(
            "{} created during the load {}",
            l.threads_created,
            if l.created_names.is_empty() {
                String::new()
            } else {
                format!("({})", l.created_names)
            }
        ),
    ));
    if let Some(s) = l.syncs_per_msg {
        rows.push(Row::new(
            format!("  store syncs (fdatasync) per message, {label}"),
            format!("{s:.3}"),
            "one sync covers 1/x messages",
        ));
    }
    if let Some(calls) = &l.syscalls {
        let mut v: Vec<(&String, &u64)> = calls.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let per = |n: u64| n as f64 / l.messages as f64;
        let total: u64 = calls.values().sum();
        let top: Vec<String> = v
            .iter()
            .take(10)
            .map(|(k, n)| format!("{k} {:.2}", per(**n)))
            .collect();
        rows.push(Row::new(
            format!("  syscalls per message (strace -c -f), {label}"),
            format!("{:.2}", per(total)),
            top.join(", "),
        ));
        for name in ["futex", "fdatasync", "statfs", "clone", "clone3"] {
            let n = calls.get(name).copied().unwrap_or(0);
            rows.push(Row::new(
                format!("    {name} per message"),
                format!("{:.3}", per(n)),
                "",
            ));
        }
    }
}

pub fn run() -> Vec<Row> {
    let mut rows = Vec::new();
    let (fs_rate, _, _) = crate::fsync::measure(2000);
    rows.push(Row::new(
        "fsync reference: 1 KiB write + fdatasync",
        format!("{fs_rate:.0}/s"),
        "the disk's own rate, this run",
    ));

    // `BENCH_INGEST_PER_CONN`: a longer load (to profile the agent with perf).
    let per_conn = crate::sys::env_u64("BENCH_INGEST_PER_CONN", PER_CONN as u64) as usize;
    let offline = Agent::start(&labagent_tests::config::dead_url());
    let off = load(&offline, 8, per_conn, 1, None);
    rows_for("uplink offline", &off, &mut rows);
    let one = drive(offline.addr(), 1, ONE_CONN, 90);
    rows.push(Row::new(
        "1 connection, lockstep, uplink offline",
        format!("{:.0} msgs/s", one.rate),
        format!(
            "{:.0}% of the write + fdatasync rate (target >= 60%); p50 {} p99 {}",
            100.0 * one.rate / fs_rate,
            ms(one.p50),
            ms(one.p99)
        ),
    ));
    drop(offline);

    let upstream = labagent_tests::upstream::Upstream::start();
    let online = Agent::start(&upstream.url("/ingest"));
    let on = load(&online, 8, per_conn, 2, Some(&upstream));
    rows_for("uploading raw to a local upstream", &on, &mut rows);
    drop(online);

    match start_python() {
        Some(py) => {
            let p = drive(py.addr, 8, PER_CONN, 3);
            rows.push(Row::new(
                "python-hl7 asyncio server (no storage), 8 connections",
                format!("{:.0} msgs/s", p.rate),
                format!(
                    "labagent (offline) / python = {:.1} (target >= 10)",
                    off.rate / p.rate
                ),
            ));
        }
        None => rows.push(Row::new(
            "python-hl7 baseline",
            "n/a",
            "python3 with the hl7 package not available (pip install hl7)",
        )),
    }
    rows
}
