//! Orders over HTTPS (`[uplink] orders_url`) against the real binary: the feed's cursor
//! survives a SIGKILL part way through a multi-page feed (every order stored once, the
//! restart asks after the saved cursor), and a fed order reaches an instrument on a pty
//! (push mode) with its `delivered` report posted upstream.

use std::path::Path;
use std::time::{Duration, Instant};

use labagent::simulate::wire::PtyWire;
use labagent::simulate::AstmInstrument;
use labagent::store::{OrderState, Store, StoreOptions};
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::{Page, Upstream};

const T: Duration = Duration::from_secs(30);

/// The config with the feed at `up`'s `/orders` (polled every 200 ms when it answers at
/// once with nothing).
fn write_config(dir: &Path, up: &Upstream, channels: &str) -> std::path::PathBuf {
    let cfg = config::write(dir, "feed", &up.url("/ingest"), "", channels);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "allow_plain_http = true\n",
        &format!(
            "allow_plain_http = true\norders_url = \"{}\"\norders_poll = \"200ms\"\n",
            up.url("/orders")
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn page(n: usize) -> Page {
    let orders: Vec<serde_json::Value> = (0..2)
        .map(|k| {
            serde_json::json!({
                "id": format!("ord-{n}-{k}"),
                "channel": "chem",
                "text": format!("H|\\^&\rO|1|S{n}{k}||^^^GLU\rL|1|N\r"),
            })
        })
        .collect();
    Page::Json(serde_json::json!({"orders": orders, "next": format!("C{n}")}).to_string())
}

fn feed_paths(up: &Upstream) -> Vec<String> {
    up.requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path)
        .collect()
}

#[test]
fn the_cursor_survives_sigkill_and_every_order_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    // Two pages, then a poll held until the agent is killed.
    up.push_page(page(1));
    up.push_page(page(2));
    up.push_page(Page::Hold);
    // A query-mode channel: the orders stay in the cache (nothing to push them to).
    let channels = format!(
        "{}orders = \"query\"\n",
        config::listen_channel("chem", "astm", config::free_port())
    );
    let cfg = write_config(dir.path(), &up, &channels);
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    up.wait_requests(T, "the third poll", |r| {
        r.iter().filter(|x| x.method == "GET").count() >= 3
    });
    agent.kill();
    assert_eq!(
        feed_paths(&up),
        [
            "/orders?wait=25s",
            "/orders?after=C1&wait=25s",
            "/orders?after=C2&wait=25s"
        ]
    );
    // After the restart: the saved cursor, then the rest of the feed.
    up.push_page(page(3));
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    up.wait_requests(T, "the polls after page 3", |r| {
        r.iter()
            .any(|x| x.method == "GET" && x.path == "/orders?after=C3&wait=25s")
    });
    let after_restart: Vec<String> = feed_paths(&up).into_iter().skip(3).collect();
    assert_eq!(after_restart[0], "/orders?after=C2&wait=25s");
    // `labagent queue orders` through the running agent.
    let out = labagent_tests::labagent()
        .arg("--config")
        .arg(&cfg)
        .args(["queue", "orders", "--specimen", "S21"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("ord-2-1  chem  pending (cached)"),
        "{text}"
    );
    assert!(agent.terminate(T).success());
    up.release();
    let store = Store::open(dir.path().join("state/store"), StoreOptions::default()).unwrap();
    let orders = store.list_orders(Some("chem"), None, 100).unwrap();
    let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        ids,
        ["ord-1-0", "ord-1-1", "ord-2-0", "ord-2-1", "ord-3-0", "ord-3-1"]
    );
    assert!(orders.iter().all(|o| o.state == OrderState::Pending));
    assert_eq!(store.cursor("orders").unwrap().as_deref(), Some("C3"));
    assert_eq!(
        store
            .orders_for_specimens("chem", &["S21".to_string()])
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_fed_order_reaches_the_instrument_and_delivered_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let link = dir.path().join("usb-Analyzer_Feed-if00-port0");
    let channels = config::serial_channel("chem", "astm", &link, 115_200);
    let cfg = write_config(dir.path(), &up, &channels);
    let mut pty = PtyWire::create(Some(&link)).unwrap();
    let mut agent = AgentProcess::start(&cfg);
    pty.wait_open(T).unwrap();
    let text = "H|\\^&|||LIS\nP|1||PID-7\nO|1|S-7||^^^GLU|R\nL|1|N\n";
    up.push_page(Page::Json(
        serde_json::json!({"orders": [{"id": "ord-77", "channel": "chem", "text": text}], "next": "C1"})
            .to_string(),
    ));
    let mut inst = AstmInstrument::new(Some(115_200));
    let n = inst
        .receive(&mut pty, 1, Instant::now() + T)
        .expect("instrument side");
    assert_eq!(n, 1, "one order received; log:\n{}", agent.log());
    assert_eq!(
        String::from_utf8_lossy(&inst.received.messages[0]),
        text.replace('\n', "\r"),
        "the order's records, CR-terminated"
    );
    let reqs = up.wait_requests(T, "the delivered report", |r| {
        r.iter()
            .any(|x| x.header("x-labagent-kind") == Some("order-report"))
    });
    let rep = reqs
        .iter()
        .find(|x| x.header("x-labagent-kind") == Some("order-report"))
        .unwrap();
    assert_eq!(rep.method, "POST");
    assert_eq!(rep.path, "/ingest");
    assert_eq!(rep.header("x-labagent-channel"), Some("chem"));
    let body: serde_json::Value = serde_json::from_slice(&rep.body).unwrap();
    assert_eq!(body["id"], "ord-77");
    assert_eq!(body["status"], "delivered", "{body}");
    assert!(
        body["at"].as_str().is_some_and(|a| a.ends_with('Z')),
        "{body}"
    );
    assert!(agent.terminate(T).success());
}
