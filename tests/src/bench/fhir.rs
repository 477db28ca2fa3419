//! `format = "fhir"` next to `raw` (issue 18): a real on-disk store prefilled with N ASTM
//! chemistry messages (H, P, O, 8 R, L; ~560 bytes, every one different) over 4 channels,
//! drained by the real `Uplink` through the service's `StoreQueue`, in the same run:
//!
//! * `raw`: one POST per message to a lean upstream that answers 200;
//! * `fhir`, lean server: one transaction Bundle per message (mapping included) to a
//!   server that only counts the entries and answers a transaction-response of that size
//!   — the agent's own cost;
//! * `fhir`, FHIR test server: the same to `tests/src/fhir_server.rs`, which parses every
//!   Bundle, honours `ifNoneExist` and stores the resources in memory — closer to what a
//!   real server makes the agent wait for (still far faster than Medplum).
//!
//! Every message must be confirmed in the store and every resource created exactly once.
//! Env: `LABAGENT_BENCH_FHIR_N` (default 10 000), `LABAGENT_BENCH_DIR`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use labagent::service::adapters::StoreQueue;
use labagent::store::{NewMessage, Store, StoreOptions};
use labagent::uplink::{
    AuthSettings, Format, MemoryTokenCache, SystemClock, Uplink, UplinkSettings,
};
use labagent_tests::fhir_server::FhirServer;

use crate::table::Row;

const CHANNELS: u64 = 4;
const RESULTS: u64 = 8;

/// One realistic chemistry message, different for every `i`.
pub fn astm_message(i: u64) -> Vec<u8> {
    let mut m = format!(
        "H|\\^&|||cobas-c311^2.1^SN{}|||||host|RSUPL^BATCH|P|1|20250115{:02}{:02}00\rP|1||PID{i:08}\rO|1|S{i:010}||^^^CHEM|R|20250115080000|||||N||||SER\r",
        i % 4,
        8 + i % 10,
        i % 60
    );
    for (k, (code, unit, range)) in [
        ("GLU", "mg/dL", "70-110"),
        ("CREA", "mg/dL", "0.7-1.3"),
        ("NA", "mmol/L", "135-145"),
        ("K", "mmol/L", "3.5-5.1"),
        ("ALT", "U/L", "<41"),
        ("AST", "U/L", "<40"),
        ("CHOL", "mg/dL", "<200"),
        ("TRIG", "mg/dL", "<150"),
    ]
    .iter()
    .enumerate()
    {
        m.push_str(&format!(
            "R|{}|^^^{code}|{}.{}|{unit}|{range}|{}||F||||20250115090{k}00\r",
            k + 1,
            50 + (i + k as u64) % 90,
            i % 10,
            if (i + k as u64) % 7 == 0 { "H" } else { "N" }
        ));
    }
    m.push_str("L|1|N\r");
    m.into_bytes()
}

/// The lean FHIR answer: count the entries (`"request":{` occurrences), answer that many
/// `201 Created`.
fn lean(fhir: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || serve(s, &c, fhir));
        }
    });
    (addr, count)
}

fn serve(s: TcpStream, c: &AtomicU64, fhir: bool) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = String::new();
    let mut body = Vec::new();
    let entry = br#"{"response":{"status":"201 Created"}}"#;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
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
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() {
            return;
        }
        c.fetch_add(1, Ordering::Relaxed);
        let reply = if fhir {
            let n = body.windows(11).filter(|w| w == b"\"request\":{").count();
            let mut b =
                br#"{"resourceType":"Bundle","type":"transaction-response","entry":["#.to_vec();
            for k in 0..n {
                if k > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(entry);
            }
            b.extend_from_slice(b"]}");
            b
        } else {
            b"{}".to_vec()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&reply))
            .is_err()
        {
            return;
        }
    }
}

fn prefill(dir: &Path, n: u64) -> Store {
    let opts = StoreOptions {
        max_bytes: 64 << 30,
        min_free: 1 << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.join("store"), opts).expect("open store");
    crate::sys::fill(&store, n, 8, |i| NewMessage {
        channel: format!("ch{}", i % CHANNELS),
        protocol: labagent::store::Protocol::Astm,
        received_at: SystemTime::now(),
        clock_synced: Some(true),
        bytes: astm_message(i),
        meta: serde_json::json!({"encoding": "utf-8"}).into(),
    });
    store
}

enum Target {
    Raw,
    FhirLean,
    FhirServer,
}

fn case(base: &Path, n: u64, target: Target, rows: &mut Vec<Row>) -> f64 {
    let d = tempfile::tempdir_in(base).unwrap();
    let store = prefill(d.path(), n);
    let server = matches!(target, Target::FhirServer).then(FhirServer::start);
    let (url, counter, name, format) = match target {
        Target::Raw => {
            let (a, c) = lean(false);
            (
                format!("http://{a}/ingest"),
                Some(c),
                "raw, one POST each",
                Format::Raw,
            )
        }
        Target::FhirLean => {
            let (a, c) = lean(true);
            (
                format!("http://{a}/fhir/R4"),
                Some(c),
                "fhir, lean server (agent cost)",
                Format::Fhir,
            )
        }
        Target::FhirServer => (
            server.as_ref().unwrap().base(),
            None,
            "fhir, FHIR test server (ifNoneExist, in memory)",
            Format::Fhir,
        ),
    };
    let mut s = UplinkSettings::new(url, "bench");
    s.format = format;
    s.allow_plain_http = true;
    let mut u = Uplink::new(
        s,
        AuthSettings::none(),
        Arc::new(StoreQueue::new(store.clone())),
        Arc::new(MemoryTokenCache::new()),
        SystemClock::new(),
    )
    .expect("uplink");
    let t = Instant::now();
    assert!(
        u.drain(),
        "{name}: the uplink stopped before the queue was empty"
    );
    let el = t.elapsed();
    let st = store.stats().expect("stats");
    assert_eq!(st.totals.pending, 0, "{name}: messages left pending");
    assert_eq!(st.totals.delivered, n, "{name}: not all confirmed");
    let detail = match (&counter, &server) {
        (Some(c), _) => {
            assert_eq!(c.load(Ordering::Relaxed), n, "{name}: requests");
            format!("{n} requests; all {n} confirmed in the store")
        }
        (None, Some(srv)) => {
            let obs = srv.count("Observation") as u64;
            assert_eq!(obs, n * RESULTS, "{name}: Observations created");
            assert_eq!(srv.count("DiagnosticReport") as u64, n);
            assert_eq!(srv.count("Device") as u64, CHANNELS);
            format!(
                "{} resources created once each ({obs} Observations, {CHANNELS} Devices); all confirmed",
                srv.creates()
            )
        }
        _ => unreachable!(),
    };
    let rate = n as f64 / el.as_secs_f64();
    rows.push(Row::new(
        format!("{name}: drain {n} stored messages"),
        format!("{rate:.0} msgs/s"),
        format!("{:.1} s; {detail}", el.as_secs_f64()),
    ));
    rate
}

pub fn run() -> Vec<Row> {
    let base = PathBuf::from(
        std::env::var("LABAGENT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/labagent-bench".into()),
    );
    std::fs::create_dir_all(&base).unwrap();
    let n = std::env::var("LABAGENT_BENCH_FHIR_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut rows = Vec::new();
    let raw = case(&base, n, Target::Raw, &mut rows);
    let lean = case(&base, n, Target::FhirLean, &mut rows);
    let full = case(&base, n, Target::FhirServer, &mut rows);
    rows.push(Row::new(
        "fhir ÷ raw (same run)".to_string(),
        format!("{:.2} / {:.2}", lean / raw, full / raw),
        "lean server / FHIR test server; each message is a Bundle of 11 entries (~12 KiB of JSON)"
            .to_string(),
    ));
    rows
}
