//! Store benchmark: a plain program (harness = false) that prints a table.
//!
//! `cargo bench -p labagent --bench store` (sled) and
//! `cargo bench -p labagent --bench store --features bench-redb` (sled and redb).
//!
//! Sizes (env): `LABAGENT_BENCH_APPENDS` (per writer-count run, default 4000),
//! `LABAGENT_BENCH_PENDING` (default 1_000_000), `LABAGENT_BENCH_CYCLES` (default
//! 5_000_000), `LABAGENT_BENCH_SAMPLE` (cycles between samples, default 500_000),
//! `LABAGENT_BENCH_DIR` (default /var/tmp/labagent-bench: must be a real disk, not tmpfs),
//! `LABAGENT_BENCH_ONLY` (comma list of: fsync,writers,pending,cycles),
//! `LABAGENT_BENCH_ENGINES` (comma list of: sled+log,sled,redb; default all built).
//! Heavy parts run in child processes (the same binary, `child ...` arguments) so RSS
//! (VmHWM) and crash recovery are measured in a fresh process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use labagent::store::{EngineKind, NewMessage, Store, StoreOptions};

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(d)
}

fn opts() -> StoreOptions {
    StoreOptions {
        max_bytes: u64::MAX,
        min_free: 0,
        keep_delivered: Duration::ZERO,
        ..StoreOptions::default()
    }
}

fn engines() -> Vec<(&'static str, EngineKind)> {
    let mut v = all_engines();
    // LABAGENT_BENCH_ENGINES=sled+log,redb picks some (the long sections take hours for all).
    if let Ok(only) = std::env::var("LABAGENT_BENCH_ENGINES") {
        let all = v.clone();
        v.retain(|(n, _)| only.split(',').any(|o| o == *n));
        assert!(
            !v.is_empty(),
            "LABAGENT_BENCH_ENGINES: none of {only} in {all:?}"
        );
    }
    v
}

/// Any engine by name, whether or not `LABAGENT_BENCH_ENGINES` selected it (child processes).
fn all_engines() -> Vec<(&'static str, EngineKind)> {
    #[allow(unused_mut)]
    let mut v = vec![
        ("sled+log", EngineKind::Sled),
        ("sled", EngineKind::SledDirect),
    ];
    #[cfg(feature = "bench-redb")]
    v.push(("redb", EngineKind::Redb));
    v
}

fn kind(name: &str) -> EngineKind {
    all_engines()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("engine")
        .1
}

fn msg(ch: usize, i: u64) -> NewMessage {
    let mut bytes = format!("MSH|^~\\&|{ch}|{i}|").into_bytes();
    bytes.resize(1024, b'x');
    NewMessage {
        channel: format!("ch{ch}"),
        protocol: labagent::store::Protocol::Hl7,
        received_at: SystemTime::now(),
        clock_synced: Some(true),
        bytes,
        meta: serde_json::json!({"msh10": i}).into(),
    }
}

fn io_write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn status_kib(pid: &str, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Raw write(1 KiB) + fdatasync rate of this disk.
fn raw_fsync(dir: &Path) -> (f64, Duration) {
    let p = fresh(dir, "raw");
    std::fs::create_dir_all(&p).unwrap();
    let mut f = std::fs::File::create(p.join("f")).unwrap();
    let buf = [7u8; 1024];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (
        lat.len() as f64 / t0.elapsed().as_secs_f64(),
        lat[lat.len() / 2],
    )
}

/// Durable appends/s with `writers` threads, syncs/message, disk bytes/message.
fn writers(dir: &Path, engine: &str, writers: usize, total: u64) -> (f64, f64, f64) {
    let p = fresh(dir, &format!("w-{engine}-{writers}"));
    let s = Store::open_with(&p, opts(), kind(engine)).unwrap();
    let syncs0 = s.stats().unwrap().syncs;
    let io0 = io_write_bytes();
    let per = total / writers as u64;
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..writers {
            let s = s.clone();
            sc.spawn(move || {
                for i in 0..per {
                    s.append(msg(w % 4, i * 1000 + w as u64)).unwrap();
                }
            });
        }
    });
    let el = t0.elapsed().as_secs_f64();
    let n = (per * writers as u64) as f64;
    let syncs = (s.stats().unwrap().syncs - syncs0) as f64;
    let io = (io_write_bytes() - io0) as f64;
    drop(s);
    let _ = std::fs::remove_dir_all(&p);
    (n / el, syncs / n, io / n)
}

fn child(args: &[&str]) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn read_line(c: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut l = String::new();
    c.read_line(&mut l).unwrap();
    l.trim().to_string()
}

/// Child process entry points; each prints one line of results.
fn child_main(args: &[String]) {
    let engine = args[1].as_str();
    let dir = PathBuf::from(&args[2]);
    match args[0].as_str() {
        // Load n pending with 64 writers, print VmHWM, then wait to be killed.
        "load" => {
            let n: u64 = args[3].parse().unwrap();
            let s = Store::open_with(&dir, opts(), kind(engine)).unwrap();
            let t0 = Instant::now();
            std::thread::scope(|sc| {
                for w in 0..64u64 {
                    let s = s.clone();
                    sc.spawn(move || {
                        let mut i = w;
                        while i < n {
                            s.append(msg((i % 4) as usize, i)).unwrap();
                            i += 64;
                        }
                    });
                }
            });
            let load = t0.elapsed().as_secs_f64();
            let disk = s.stats().unwrap().disk_bytes;
            println!("{} {load:.1} {disk}", status_kib("self", "VmHWM:"));
            std::io::stdout().flush().unwrap();
            let mut l = String::new();
            let _ = std::io::stdin().read_line(&mut l);
            std::thread::sleep(Duration::from_secs(3600));
        }
        // Open, print open time, pending count and VmHWM; read every pending message
        // (print VmHWM), then stop cleanly.
        "open" => {
            let t0 = Instant::now();
            let s = Store::open_with(&dir, opts(), kind(engine)).unwrap();
            let open = t0.elapsed().as_secs_f64();
            let st = s.stats().unwrap();
            let hwm_open = status_kib("self", "VmHWM:");
            let read_all = args.get(3).is_some_and(|a| a == "read");
            let mut read = 0;
            if read_all {
                for ch in s.channels() {
                    // FIFO read without confirming: page through by sequence.
                    for info in s.list(Some(&ch), None, usize::MAX).unwrap() {
                        if s.get(info.id).unwrap().is_some() {
                            read += 1;
                        }
                    }
                }
            }
            println!(
                "{open:.3} {} {hwm_open} {} {read}",
                st.totals.pending,
                status_kib("self", "VmHWM:")
            );
        }
        // Append-and-deliver cycles with a small backlog; print RSS and disk per sample.
        "cycles" => {
            let n: u64 = args[3].parse().unwrap();
            let sample: u64 = args[4].parse().unwrap();
            let s = Store::open_with(&dir, opts(), kind(engine)).unwrap();
            let t0 = Instant::now();
            let done = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|sc| {
                for w in 0..8usize {
                    let s = s.clone();
                    let done = &done;
                    sc.spawn(move || {
                        let ch = format!("ch{w}");
                        let mut i = 0u64;
                        loop {
                            let k = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if k >= n {
                                break;
                            }
                            s.append(msg(w, i)).unwrap();
                            i += 1;
                            // Keep a backlog of ~16 per channel: deliver the oldest.
                            let p = s.next_pending(&ch, 32).unwrap();
                            if p.len() > 16 {
                                s.confirm(p[0].info.id).unwrap();
                            }
                            if k % 10_000 == 0 {
                                s.prune(SystemTime::now() + Duration::from_secs(1)).unwrap();
                            }
                            if k % sample == sample - 1 {
                                let st = s.stats().unwrap();
                                println!(
                                    "{} {:.0} {} {} {}",
                                    k + 1,
                                    t0.elapsed().as_secs_f64(),
                                    status_kib("self", "VmRSS:"),
                                    st.disk_bytes,
                                    st.totals.pending
                                );
                                std::io::stdout().flush().unwrap();
                            }
                        }
                    });
                }
            });
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn kill9(c: &mut std::process::Child) {
    let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::Kill).unwrap();
    c.wait().unwrap();
}

fn pending_bench(dir: &Path, engine: &str, n: u64) {
    let p = fresh(dir, &format!("pending-{engine}"));
    let ps = p.to_string_lossy().into_owned();
    let mut c = child(&["load", engine, &ps, &n.to_string()]);
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let l = read_line(&mut out);
    let f: Vec<&str> = l.split_whitespace().collect();
    println!(
        "| {engine} | load {n} pending (64 writers) | {} s, {:.0}/s | VmHWM {} MiB | disk {} MiB |",
        f[1],
        n as f64 / f[1].parse::<f64>().unwrap(),
        f[0].parse::<u64>().unwrap() / 1024,
        f[2].parse::<u64>().unwrap() >> 20
    );
    kill9(&mut c);
    let run = |what: &str, read: bool| {
        let mut c = child(&["open", engine, &ps, if read { "read" } else { "" }]);
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let l = read_line(&mut out);
        c.wait().unwrap();
        let f: Vec<&str> = l.split_whitespace().collect();
        println!(
            "| {engine} | open {what} | {} s, {} pending | VmHWM after open {} MiB | after reading all {} MiB ({} read) |",
            f[0],
            f[1],
            f[2].parse::<u64>().unwrap() / 1024,
            f[3].parse::<u64>().unwrap() / 1024,
            f[4]
        );
    };
    run("after SIGKILL (recovery)", false);
    run("after clean stop", true);
    let _ = std::fs::remove_dir_all(&p);
}

fn cycles_bench(dir: &Path, engine: &str, n: u64, sample: u64) {
    let p = fresh(dir, &format!("cycles-{engine}"));
    let ps = p.to_string_lossy().into_owned();
    let mut c = child(&["cycles", engine, &ps, &n.to_string(), &sample.to_string()]);
    let out = BufReader::new(c.stdout.take().unwrap());
    for l in out.lines() {
        let l = l.unwrap();
        let f: Vec<&str> = l.split_whitespace().collect();
        println!(
            "| {engine} | {} cycles | {} s | RSS {} MiB | disk {} MiB | backlog {} |",
            f[0],
            f[1],
            f[2].parse::<u64>().unwrap() / 1024,
            f[3].parse::<u64>().unwrap() >> 20,
            f[4]
        );
    }
    c.wait().unwrap();
    let _ = std::fs::remove_dir_all(&p);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "child") {
        return child_main(&args[1..]);
    }
    let dir = PathBuf::from(
        std::env::var("LABAGENT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/labagent-bench".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let only = std::env::var("LABAGENT_BENCH_ONLY")
        .unwrap_or_else(|_| "fsync,writers,pending,cycles".into());
    let appends = env_u64("LABAGENT_BENCH_APPENDS", 4000);
    let pending = env_u64("LABAGENT_BENCH_PENDING", 1_000_000);
    let cycles = env_u64("LABAGENT_BENCH_CYCLES", 5_000_000);
    let sample = env_u64("LABAGENT_BENCH_SAMPLE", 500_000).max(1);
    println!("labagent store benchmark, dir {}", dir.display());
    if only.contains("fsync") {
        let (rate, p50) = raw_fsync(&dir);
        println!(
            "raw write(1 KiB)+fdatasync: {rate:.0}/s, p50 {:.2} ms",
            p50.as_secs_f64() * 1e3
        );
    }
    if only.contains("writers") {
        println!("\n| engine | writers | durable appends/s | syncs/message | disk bytes written/message |\n|---|---|---|---|---|");
        for (engine, _) in engines() {
            for w in [1usize, 8, 64] {
                let n = appends.max(w as u64 * 20);
                let (rate, spm, bpm) = writers(&dir, engine, w, n);
                println!("| {engine} | {w} | {rate:.0} | {spm:.3} | {bpm:.0} |");
            }
        }
    }
    if only.contains("pending") {
        println!("\n| engine | what | time | memory | other |\n|---|---|---|---|---|");
        for (engine, _) in engines() {
            pending_bench(&dir, engine, pending);
        }
    }
    if only.contains("cycles") {
        println!(
            "\n| engine | cycles | elapsed | RSS | disk | backlog |\n|---|---|---|---|---|---|"
        );
        for (engine, _) in engines() {
            cycles_bench(&dir, engine, cycles, sample);
        }
    }
}
