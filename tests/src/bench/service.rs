//! The agent as a service: time from start to systemd `READY=1` with an empty store and
//! with a large backlog, idle CPU over a quiet period with 4 channels open, and RSS.
//!
//! Env: `LABAGENT_BENCH_PENDING` (default 1 000 000 messages of 1 KiB prefilled, 8 writer
//! threads with group commit), `LABAGENT_BENCH_IDLE_SECS` (default 60),
//! `LABAGENT_BENCH_DIR` (default `/var/tmp/labagent-bench`: a real disk, not tmpfs).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use labagent::store::{NewMessage, Store, StoreOptions};

use crate::table::Row;

fn config(dir: &Path, channels: usize) -> PathBuf {
    let dead = labagent_tests::config::free_port();
    let mut text = format!(
        "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n\
         [buffer]\nmax_bytes = \"64GiB\"\nmin_free = \"1MiB\"\n\
         [uplink]\nkind = \"http\"\nurl = \"http://127.0.0.1:{dead}/x\"\nallow_plain_http = true\n\
         [uplink.auth]\nmethod = \"none\"\n",
        dir.join("state").display(),
        dir.join("status.sock").display()
    );
    for i in 0..channels {
        text.push_str(&format!(
            "[[channel]]\nname = \"ch{i}\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{}\"\n",
            labagent_tests::config::free_port()
        ));
    }
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts the agent with a notify socket; returns it once READY=1 arrived, and the time.
fn start_until_ready(dir: &Path, cfg: &Path) -> (Child, Duration) {
    let sock = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock);
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let t0 = Instant::now();
    let mut child = labagent_tests::labagent()
        .args(["run", "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", &sock)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        match rx.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"READY=1") => return (child, t0.elapsed()),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 from the agent: {e}");
            }
        }
    }
}

fn stop(mut c: Child) {
    if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::Term);
    }
    let _ = c.wait();
}

fn prefill(dir: &Path, n: u64) -> Duration {
    let opts = StoreOptions {
        max_bytes: 64 << 30,
        min_free: 1 << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.join("state").join("store"), opts).unwrap();
    let body = vec![b'x'; 1000];
    crate::sys::fill(&store, n, 8, |i| {
        let mut b = body.clone();
        b.extend_from_slice(format!("{i:016}").as_bytes());
        NewMessage {
            channel: format!("ch{}", i % 4),
            protocol: labagent::store::Protocol::Astm,
            received_at: SystemTime::now(),
            clock_synced: Some(true),
            bytes: b,
            meta: serde_json::Value::Null.into(),
        }
    })
}

pub fn run() -> Vec<Row> {
    let base = PathBuf::from(
        std::env::var("LABAGENT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/labagent-bench".into()),
    );
    std::fs::create_dir_all(&base).unwrap();
    let pending = crate::sys::env_u64("LABAGENT_BENCH_PENDING", 1_000_000);
    let idle = crate::sys::env_u64("LABAGENT_BENCH_IDLE_SECS", 60);
    let mut rows = Vec::new();

    // Empty store, 4 channels: READY, then idle CPU and RSS.
    let d = tempfile::tempdir_in(&base).unwrap();
    let cfg = config(d.path(), 4);
    let (child, ready) = start_until_ready(d.path(), &cfg);
    rows.push(Row::new(
        "start → READY=1, empty store, 4 channels",
        format!("{:.0} ms", ready.as_secs_f64() * 1e3),
        "",
    ));
    let pid = child.id();
    let t0 = Instant::now();
    let c0 = crate::sys::cpu_time(&pid.to_string());
    std::thread::sleep(Duration::from_secs(idle));
    let c1 = crate::sys::cpu_time(&pid.to_string());
    let cpu = (c1 - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    rows.push(Row::new(
        format!("idle CPU over {idle} s, 4 listen channels"),
        format!("{cpu:.3} % of a core"),
        "target ≤ 0.5 %; clock ticks of 10 ms, so < 0.017 % reads as 0",
    ));
    rows.push(Row::new(
        "RSS idle (VmRSS)",
        format!(
            "{:.1} MiB",
            crate::sys::status_kib(&pid.to_string(), "VmRSS:") as f64 / 1024.0
        ),
        "target ≤ 16 MiB",
    ));
    rows.push(Row::new(
        "peak RSS so far (VmHWM)",
        format!(
            "{:.1} MiB",
            crate::sys::status_kib(&pid.to_string(), "VmHWM:") as f64 / 1024.0
        ),
        "",
    ));
    stop(child);

    // A backlog of `pending` messages.
    let d = tempfile::tempdir_in(&base).unwrap();
    let fill = prefill(d.path(), pending);
    rows.push(Row::new(
        format!("prefill {pending} × 1 KiB (8 writers, group commit)"),
        format!("{:.0} s", fill.as_secs_f64()),
        format!("{:.0} appends/s", pending as f64 / fill.as_secs_f64()),
    ));
    let cfg = config(d.path(), 4);
    let (child, ready) = start_until_ready(d.path(), &cfg);
    rows.push(Row::new(
        format!("start → READY=1, {pending} pending"),
        format!("{:.0} ms", ready.as_secs_f64() * 1e3),
        "includes sled's log replay since its last open",
    ));
    rows.push(Row::new(
        format!("RSS after READY, {pending} pending"),
        format!(
            "{:.1} MiB",
            crate::sys::status_kib(&child.id().to_string(), "VmRSS:") as f64 / 1024.0
        ),
        "",
    ));
    stop(child);
    rows
}
