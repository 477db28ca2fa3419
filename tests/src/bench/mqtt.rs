//! The MQTT uplink draining a pre-filled store to a local mosquitto at QoS 1: messages per
//! second from the first connection until every message is confirmed in the store (each
//! one released on its PUBACK), and the peak RSS while draining.
//!
//! The store is filled first (concurrent writers, so fsyncs are shared), closed, and the
//! process's peak-RSS mark is reset (`/proc/self/clear_refs` ← 5) before the store is
//! reopened with the agent's defaults and the uplink (the agent's own code, `StoreQueue`
//! and `labagent::mqtt`) runs on a 2-worker runtime like `labagent run`. What the fill left
//! in the allocator still counts, so the RSS figure is an upper bound.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use labagent::mqtt::{self, Login, MqttSettings};
use labagent::service::adapters::StoreQueue;
use labagent::store::{NewMessage, Store, StoreOptions};

use crate::table::Row;
use labagent_tests::mosquitto::Broker;

const N: usize = 100_000;
const TARGET: f64 = 5_000.0;

fn text(i: usize) -> Vec<u8> {
    // A typical chemistry result: header, patient, order, a few results (~600 bytes).
    let mut t = format!(
        "H|\\^&|||BenchAnalyzer^1.0|||||LIS||P|1|20261128120000\rP|1||PID-{i}\rO|1|S{i}||^^^PANEL|R\r"
    );
    for r in 0..5 {
        t.push_str(&format!(
            "R|{}|^^^TEST{r}|{}.{r}|mmol/L|1 to 9|N||F||||20261128120000|comment text\r",
            r + 1,
            i % 97
        ));
    }
    t.push_str("L|1|N\r");
    t.into_bytes()
}

fn fill(store: &Store, n: usize) -> Duration {
    crate::sys::fill(store, n as u64, 32, |i| NewMessage {
        channel: "chem".into(),
        protocol: labagent::store::Protocol::Astm,
        received_at: SystemTime::now(),
        clock_synced: Some(true),
        bytes: text(i as usize),
        meta: serde_json::json!({"frames": 1}).into(),
    })
}

pub fn run() -> Vec<Row> {
    let n: usize = std::env::var("LABAGENT_BENCH_MQTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(N);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::plain(&dir.path().join("broker"), "max_queued_messages 0\n");
    let store_dir = dir.path().join("store");
    let fill_time = {
        let store = Store::open(&store_dir, StoreOptions::default()).expect("store");
        let d = fill(&store, n);
        store.sync().expect("sync");
        d
    };
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_start = crate::sys::status_kib("self", "VmRSS:");

    let rt = labagent_tests::runtime();
    let store = Store::open(&store_dir, StoreOptions::default()).expect("store");
    let mut s = MqttSettings::new(
        format!("mqtt://127.0.0.1:{}", broker.port()),
        "bench",
        vec!["chem".into()],
    );
    s.allow_plain = true;
    if let Some(w) = std::env::var("LABAGENT_BENCH_MQTT_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.window = w;
    }
    let window = s.window;
    let cpu0 = crate::sys::cpu_time("self");
    let (elapsed, drained) = rt.block_on(async {
        let h = mqtt::spawn(
            s,
            Login::None,
            Arc::new(StoreQueue::new(store.clone())),
            None,
        )
        .expect("mqtt");
        let mut st = h.status();
        st.wait_for(|s| s.connected).await.expect("connected");
        let t0 = Instant::now();
        st.wait_for(|s| s.delivered >= n as u64)
            .await
            .expect("delivered");
        // Every PUBACK seen; wait for the last confirmations to reach the store.
        let s2 = store.clone();
        let drained = tokio::task::spawn_blocking(move || loop {
            let p = s2.stats().map(|s| s.totals.pending).unwrap_or(u64::MAX);
            if p == 0 || t0.elapsed() > Duration::from_secs(600) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(5));
        })
        .await
        .unwrap_or(u64::MAX);
        let elapsed = t0.elapsed();
        h.shutdown().await;
        (elapsed, drained)
    });
    let cpu = crate::sys::cpu_time("self").saturating_sub(cpu0);
    let peak = crate::sys::status_kib("self", "VmHWM:");
    let rate = n as f64 / elapsed.as_secs_f64();
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    vec![
        Row::new(
            format!("drain {n} stored messages, QoS 1"),
            format!("{rate:.0} msgs/s"),
            format!(
                "target ≥ {TARGET:.0}: {}; {:.1} s, window {window}, ~{} B ASTM text each",
                if rate >= TARGET { "met" } else { "MISSED" },
                elapsed.as_secs_f64(),
                text(1).len()
            ),
        ),
        Row::new(
            "CPU per message (agent side)",
            format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / n as f64),
            format!(
                "user + system of the whole process over the drain ({:.1} s); independent of other load",
                cpu.as_secs_f64()
            ),
        ),
        Row::new(
            "still pending after the drain",
            drained.to_string(),
            "must be 0: every message confirmed on its PUBACK",
        ),
        Row::new(
            "peak RSS while draining",
            mib(peak),
            if reset {
                format!("VmHWM after reset; RSS at start {}", mib(rss_start))
            } else {
                "VmHWM of the whole run (clear_refs not writable)".into()
            },
        ),
        Row::new(
            "store fill (32 writers, group commit)",
            format!("{:.0} msgs/s", n as f64 / fill_time.as_secs_f64()),
            "setup, for reference",
        ),
    ]
}
