//! The HTTP uplink draining a stored backlog (issue 6): a real on-disk store prefilled
//! with N messages of 1 KiB over 4 channels, drained by the real `Uplink` through the
//! service's `StoreQueue` adapter to a lean plain-HTTP upstream on loopback, in the same
//! process. Raw (one POST per message, keep-alive) and JSON batches of 100, each from its
//! own freshly filled store. Every message must be confirmed in the store (pending 0,
//! delivered N) and received exactly N times by the upstream.
//!
//! Peak RSS is VmHWM of the bench process, reset before each drain: it includes the
//! upstream's threads and sled's page cache, not only the uplink.
//!
//! Env: `LABAGENT_BENCH_UPLINK_N` (default 100 000), `LABAGENT_BENCH_DIR` (default
//! `/var/tmp/labagent-bench`: a real disk, not tmpfs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use labagent::service::adapters::StoreQueue;
use labagent::store::{NewMessage, Store, StoreOptions};
use labagent::uplink::{
    AuthSettings, Format, MemoryTokenCache, Outgoing, Queue, QueueError, SystemClock, Uplink,
    UplinkSettings,
};

use crate::table::Row;

const CHANNELS: u64 = 4;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Counts what a lean upstream received: requests and messages (a JSON array's length).
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    messages: AtomicU64,
    connections: AtomicU64,
}

/// Plain HTTP/1.1 on loopback, keep-alive, `TCP_NODELAY`, 200 to every POST; bodies are
/// read into one buffer per connection and dropped (nothing recorded).
fn upstream() -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = l.local_addr().unwrap();
    let counts: Arc<Counts> = Arc::default();
    let c = counts.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let c = c.clone();
            c.connections.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || serve(s, &c));
        }
    });
    (addr, counts)
}

fn serve(s: TcpStream, c: &Counts) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut json = false;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("content-type") {
                    json = v.starts_with("application/json");
                }
            }
        }
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = if json {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::Array(a)) => a.len() as u64,
                _ => 0,
            }
        } else {
            1
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.messages.fetch_add(n, Ordering::Relaxed);
        if w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .is_err()
        {
            return;
        }
    }
}

/// The adapter with a stopwatch: where the drain spends its time in the store.
struct Timed {
    inner: StoreQueue,
    next_ns: AtomicU64,
    confirm_ns: AtomicU64,
}

impl Timed {
    fn secs(a: &AtomicU64) -> f64 {
        a.load(Ordering::Relaxed) as f64 / 1e9
    }
}

fn add(a: &AtomicU64, t: Instant) {
    a.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

impl Queue for Timed {
    fn channels(&self) -> Result<Vec<String>, QueueError> {
        self.inner.channels()
    }
    fn next_batch(&self, channel: &str, max: usize) -> Result<Vec<Outgoing>, QueueError> {
        let t = Instant::now();
        let v = self.inner.next_batch(channel, max);
        add(&self.next_ns, t);
        v
    }
    fn confirm(&self, ids: &[String]) -> Result<(), QueueError> {
        let t = Instant::now();
        let r = self.inner.confirm(ids);
        add(&self.confirm_ns, t);
        r
    }
    fn reject(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        self.inner.reject(id, reason)
    }
}

/// N messages of 1 KiB over 4 channels, 8 writer threads (group commit), synced.
fn prefill(dir: &Path, n: u64) -> (Store, Duration) {
    let opts = StoreOptions {
        max_bytes: 64 << 30,
        min_free: 1 << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.join("store"), opts).expect("open store");
    let body = vec![b'x'; 1000];
    let took = crate::sys::fill(&store, n, 8, |i| {
        let mut b = body.clone();
        b.extend_from_slice(format!("{i:024}").as_bytes());
        NewMessage {
            channel: format!("ch{}", i % CHANNELS),
            protocol: labagent::store::Protocol::Astm,
            received_at: SystemTime::now(),
            clock_synced: Some(true),
            bytes: b,
            meta: serde_json::Value::Null.into(),
        }
    });
    (store, took)
}

fn case(base: &Path, n: u64, name: &str, format: Format, rows: &mut Vec<Row>) {
    let d = tempfile::tempdir_in(base).unwrap();
    let (store, fill) = prefill(d.path(), n);
    if rows.is_empty() {
        rows.push(Row::new(
            format!("prefill {n} × 1 KiB, 4 channels (8 writers)"),
            format!("{:.1} s", fill.as_secs_f64()),
            format!("{:.0} appends/s", n as f64 / fill.as_secs_f64()),
        ));
    }
    let (addr, counts) = upstream();
    let mut s = UplinkSettings::new(format!("http://{addr}/ingest"), "bench");
    s.format = format;
    s.batch_max = 100;
    s.allow_plain_http = true;
    let q = Arc::new(Timed {
        inner: StoreQueue::new(store.clone()),
        next_ns: AtomicU64::new(0),
        confirm_ns: AtomicU64::new(0),
    });
    let mut u = Uplink::new(
        s,
        AuthSettings::none(),
        q.clone(),
        Arc::new(MemoryTokenCache::new()),
        SystemClock::new(),
    )
    .expect("uplink");
    // Linux ≥ 4.0: writing 5 resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = crate::sys::status_kib("self", "VmRSS:");
    let t = Instant::now();
    assert!(
        u.drain(),
        "{name}: the uplink stopped before the queue was empty"
    );
    let el = t.elapsed();
    let peak = crate::sys::status_kib("self", "VmHWM:");
    let st = store.stats().expect("stats");
    let received = counts.messages.load(Ordering::Relaxed);
    assert_eq!(st.totals.pending, 0, "{name}: messages left pending");
    assert_eq!(st.totals.delivered, n, "{name}: not all confirmed");
    assert_eq!(received, n, "{name}: upstream received {received} of {n}");
    let rate = n as f64 / el.as_secs_f64();
    rows.push(Row::new(
        format!("{name}: drain {n} stored messages"),
        format!("{rate:.0} msgs/s"),
        format!(
            "{:.1} s; target ≥ {}; {} requests on {} connection(s); all {n} confirmed in the store",
            el.as_secs_f64(),
            if format == Format::Raw {
                "1 500"
            } else {
                "10 000"
            },
            counts.requests.load(Ordering::Relaxed),
            counts.connections.load(Ordering::Relaxed),
        ),
    ));
    rows.push(Row::new(
        format!("{name}: peak RSS during the drain (VmHWM)"),
        mib(peak),
        format!(
            "bench process incl. upstream and sled cache; RSS before {}",
            mib(before)
        ),
    ));
    let (next, confirm) = (Timed::secs(&q.next_ns), Timed::secs(&q.confirm_ns));
    rows.push(Row::new(
        format!("{name}: drain time in the store"),
        format!("{:.0} %", (next + confirm) / el.as_secs_f64() * 100.0),
        format!(
            "StoreQueue::next_batch {next:.1} s ({:.0} µs/msg), confirm {confirm:.1} s ({:.0} µs/msg)",
            next / n as f64 * 1e6,
            confirm / n as f64 * 1e6
        ),
    ));
    drop(u);
    drop(store);
}

pub fn run() -> Vec<Row> {
    let base = PathBuf::from(
        std::env::var("LABAGENT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/labagent-bench".into()),
    );
    std::fs::create_dir_all(&base).unwrap();
    let n = std::env::var("LABAGENT_BENCH_UPLINK_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rows = Vec::new();
    case(&base, n, "raw, one POST each", Format::Raw, &mut rows);
    case(&base, n, "json, batches of 100", Format::Json, &mut rows);
    rows
}
