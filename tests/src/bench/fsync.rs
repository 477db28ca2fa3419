//! The machine's own durability cost, measured in the same run as the other sections so
//! their figures can be read as ratios: 1 KiB `write` + `fdatasync` in a loop on the
//! filesystem of the temporary directory.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::table::{percentile, Row};

/// Appends-with-fdatasync per second and the p50/p99 latency of one, over `n` rounds.
pub fn measure(n: usize) -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("f")).expect("create");
    let buf = [b'x'; 1024];
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    lat.sort();
    (rate, percentile(&lat, 50.0), percentile(&lat, 99.0))
}

pub fn run() -> Vec<Row> {
    let (rate, p50, p99) = measure(2000);
    vec![
        Row::new(
            "1 KiB write + fdatasync",
            format!("{rate:.0}/s"),
            "raw disk, reference for the other sections",
        ),
        Row::new(
            "fdatasync latency p50",
            format!("{:.2} ms", p50.as_secs_f64() * 1e3),
            "",
        ),
        Row::new(
            "fdatasync latency p99",
            format!("{:.2} ms", p99.as_secs_f64() * 1e3),
            "",
        ),
    ]
}
