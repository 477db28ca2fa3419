//! Uplink throughput: drain N in-memory messages to the local TLS test upstream.
//!
//! `cargo bench -p labagent --bench uplink` (N from `LABAGENT_BENCH_N`, default 100 000).
//! Raw: one POST per message over one kept-alive TLS connection. JSON: batches of 100.
//! Peak RSS is the whole process (the test server and the queued messages included);
//! the baseline after filling the queue is printed so the uplink's share can be read off.
//! Results and the machine are recorded in docs/perf/uplink.md.

#[path = "../tests/common_upstream/mod.rs"]
mod common_upstream;

use std::sync::Arc;
use std::time::Instant;

use common_upstream::{msg, Upstream};
use labagent::uplink::{
    Format, MemoryQueue, MemoryTokenCache, Protocol, Queue, SystemClock, Uplink,
};

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn reset_peak() {
    // Linux ≥ 4.0: writing 5 resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let n: usize = std::env::var("LABAGENT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for (name, format) in [("raw", Format::Raw), ("json100", Format::Json)] {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let up = Upstream::start();
        up.state().record = false;
        let q = MemoryQueue::new();
        for i in 0..n {
            q.push(msg(["a", "b", "c", "d"][i % 4], i, Protocol::Hl7));
        }
        let bytes: usize = q.next_batch("a", 1).expect("memory queue")[0].text.len();
        reset_peak();
        let base = status_kib("VmRSS:");
        let mut s = up.settings();
        s.format = format;
        s.batch_max = 100;
        let mut u = Uplink::new(
            s,
            up.auth(),
            Arc::new(q.clone()),
            Arc::new(MemoryTokenCache::new()),
            SystemClock::new(),
        )
        .expect("uplink");
        let t = Instant::now();
        assert!(u.drain());
        let el = t.elapsed();
        let accepted = up.state().accepted_count;
        assert_eq!(accepted, n as u64, "every message accepted once");
        assert_eq!(q.pending(), 0);
        println!(
            "{name}: {n} messages ({bytes} B each) in {:.2} s = {:.0} msgs/s; \
             connections {}; RSS before {} KiB, peak during {} KiB",
            el.as_secs_f64(),
            n as f64 / el.as_secs_f64(),
            up.connections(),
            base,
            status_kib("VmHWM:"),
        );
    }
}
