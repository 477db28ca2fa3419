//! Host queries against the real agent (issue 17): an analyzer on a pty at 9600 baud asks
//! for one specimen at a time; the agent answers from its order cache (10 000 orders kept,
//! `orders = "query"`). The figure is the time from the query's EOT to the first byte of
//! the answer (its ENQ), p50 / p99: what the instrument waits, without the answer's own
//! line time.
//!
//! The agent binary is the optimised one next to this bench binary (see astm.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use labagent::simulate::wire::{PtyWire, Wire};
use labagent::simulate::{astm_query, AstmInstrument};
use labagent::store::{NewOrder, Protocol, Store, StoreOptions};
use labagent_hal::astm::{ENQ, EOT};
use labagent_tests::upstream::Upstream;

use crate::astm::Timed;
use crate::table::{percentile, Row};

const T: Duration = Duration::from_secs(60);
const CACHED: usize = 10_000;
const QUERIES: usize = 200;
const BAUD: u32 = 9600;

fn fill_cache(state: &Path) {
    let store = Store::open(state.join("store"), StoreOptions::default()).expect("store");
    for i in 0..CACHED {
        let text = format!(
            "H|\\^&|||LIS^1.0\rP|1||PID-{i:05}\rO|1|Q{i:05}||^^^GLU\\^^^NA\\^^^K|R||20261204080000||||A||||SERUM\rL|1|N\r"
        );
        let o = NewOrder {
            id: format!("order-{i:05}"),
            channel: "chem".into(),
            text,
            specimens: Vec::new(),
        };
        store.put_order_for(o, Protocol::Astm).expect("put order");
    }
}

pub fn run() -> Vec<Row> {
    let mut rows = measure(false);
    rows.extend(measure(true));
    rows
}

/// One run of QUERIES queries: answered from the cache, or (`upstream`) from a local HTTP
/// upstream at `[uplink] query_url` (the cache empty).
fn measure(upstream: bool) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start();
    up.answer_queries();
    let link = dir.path().join("usb-Query_Analyzer-if00-port0");
    let channel = format!(
        "{}orders = \"query\"\nquery_timeout = \"5s\"\n",
        labagent_tests::config::serial_channel("chem", "astm", &link, BAUD)
    );
    let cfg = labagent_tests::config::write(dir.path(), "bench", &up.url("/ingest"), "", &channel);
    let mut fill = Duration::ZERO;
    if upstream {
        let text = std::fs::read_to_string(&cfg).expect("config");
        let text = text.replace(
            "[uplink.auth]",
            &format!("query_url = \"{}\"\n[uplink.auth]", up.url("/query")),
        );
        std::fs::write(&cfg, text).expect("config");
    } else {
        let t = Instant::now();
        fill_cache(&dir.path().join("state"));
        fill = t.elapsed();
    }
    let mut pty = PtyWire::create(Some(&link)).expect("pty");
    let mut agent = crate::astm::start_agent(&cfg);
    pty.wait_open(T).expect("the agent opens the port");
    // From the instrument's EOT to the host's next ENQ.
    let mut timed = Timed::new(&mut pty, EOT, ENQ);
    let mut inst = AstmInstrument::new(Some(BAUD));
    let mut answered = 0;
    for i in 0..QUERIES {
        let sid = format!("Q{:05}", (i * 37) % CACHED);
        let sent = inst
            .send_all(&mut timed, &[astm_query(&[&sid])])
            .expect("send");
        assert!(
            sent[0].delivered,
            "query {i} acknowledged: {}\n{}",
            sent[0].detail,
            agent.log()
        );
        let before = inst.received.messages.len();
        inst.receive(&mut timed, 1, Instant::now() + T)
            .expect("answer");
        let answer = inst.received.messages.get(before).expect("an answer");
        // The answer's EOT may still be on its way: take it before the next ENQ, as an
        // instrument's receiver would (else the next frame would read it as an interrupt).
        let mut b = [0u8; 64];
        let until = Instant::now() + T;
        while Instant::now() < until {
            let n = timed
                .read_timeout(&mut b, Duration::from_millis(200))
                .expect("read");
            if b[..n].contains(&EOT) {
                break;
            }
        }
        assert!(
            String::from_utf8_lossy(answer).contains(&format!("O|1|{sid}|")),
            "query {i} answered with its order"
        );
        answered += 1;
    }
    let mut lat = std::mem::take(&mut timed.latencies);
    let st = agent.terminate(T);
    assert!(st.success(), "agent exit: {st:?}\n{}", agent.log());
    lat.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let (what, note) = if upstream {
        (
            "ASTM query at 9600 baud, from a local HTTP upstream (query_url): EOT → first answer byte p50 / p99",
            format!("{answered} queries; each a POST to loopback, answered 200 with the order"),
        )
    } else {
        (
            "ASTM query at 9600 baud, from the cache: EOT → first answer byte p50 / p99",
            format!(
                "target p99 <= 100 ms; {answered} queries, {CACHED} orders cached (filled in {:.1} s)",
                fill.as_secs_f64()
            ),
        )
    };
    vec![Row::new(
        what,
        format!(
            "{} / {}",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0))
        ),
        format!(
            "{note}; max {}",
            ms(lat.last().copied().unwrap_or_default())
        ),
    )]
}
