//! The HTTPS order feed (`uplink::feed` with `service::orders::OrderPages`) against a local
//! TLS upstream, its pacing on a virtual clock: the cursor moves only after a page is
//! durable, a page that cannot be taken is asked again from the same cursor with backoff,
//! a quick "nothing" waits `orders_poll` and a held poll does not, `Retry-After` is
//! honoured, a refused token is renewed once; orders the agent cannot take are kept as
//! failed and reported; stored orders wake their channel.

mod common_upstream;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common_upstream::{clock, Fault, Upstream};
use labagent::channel::{ChannelCtx, Hooks};
use labagent::service::orders::{ChannelMap, OrderPages};
use labagent::store::{OrderState, Store, StoreOptions, ORDER_REPORTS};
use labagent::uplink::feed::{Feed, FeedSettings, Outcome};
use labagent::uplink::http::HttpClient;
use labagent::uplink::{MemoryQueue, MemoryTokenCache, VirtualClock};
use labagent_config::{Channel, Encoding, ProtocolSettings, Transport};

const POLL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(25);

struct Rig {
    up: Upstream,
    store: Store,
    clock: Arc<VirtualClock>,
    feed: Feed,
    astm: Arc<ChannelCtx>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn channel(name: &str, protocol: &str) -> Channel {
    let settings = match protocol {
        "astm" => ProtocolSettings::Astm(labagent_config::Astm {
            receive_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(15),
            max_retries: 6,
            max_frame: 64 << 10,
            max_message: 4 << 20,
            query_id_component: None,
        }),
        _ => ProtocolSettings::Raw(labagent_config::Raw {
            start: vec![2],
            end: vec![3],
            reply: None,
            max_message: 1 << 20,
        }),
    };
    Channel {
        name: name.into(),
        transport: Transport::Listen("127.0.0.1:1".parse().unwrap()),
        encoding: Encoding::Auto,
        settings,
        orders: labagent_config::OrderMode::Query,
        query_timeout: Duration::from_secs(5),
    }
}

fn rig() -> Rig {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            min_free: 0,
            order_reports: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let astm = ChannelCtx::new(
        channel("cobas", "astm"),
        store.clone(),
        Hooks::default(),
        stopping.clone(),
    );
    let raw = ChannelCtx::new(
        channel("au480", "raw"),
        store.clone(),
        Hooks::default(),
        stopping,
    );
    let map: ChannelMap = Arc::new(RwLock::new(BTreeMap::from([
        ("cobas".to_string(), astm.clone()),
        ("au480".to_string(), raw),
    ])));
    let c = clock(1000);
    let queue = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let uplink = common_upstream::uplink(up.settings(), up.auth(), &queue, &cache, &c);
    let handler = Arc::new(OrderPages {
        store: store.clone(),
        channels: map,
        wake_uplink: Arc::new(|| {}),
    });
    let feed = Feed::new(
        FeedSettings {
            name: "orders".into(),
            url: up.url("/orders"),
            cursor: "orders".into(),
            wait: WAIT,
            poll: POLL,
            timeout: Duration::from_secs(5),
            agent_id: "chem-lab-1".into(),
        },
        HttpClient::new(uplink.settings()).unwrap(),
        uplink.authenticator(),
        handler,
        c.clone(),
    );
    Rig {
        up,
        store,
        clock: c,
        feed,
        astm,
        _dir: dir,
        _stop: stop,
    }
}

fn page(status: u16, body: &str) -> Fault {
    Fault::json(status, body)
}

fn paths(up: &Upstream) -> Vec<String> {
    up.state()
        .requests
        .iter()
        .filter(|r| r.path.starts_with("/orders"))
        .map(|r| r.path.clone())
        .collect()
}

#[test]
fn pages_are_stored_before_the_cursor_moves_and_the_next_poll_asks_after_it() {
    let mut r = rig();
    r.up.state().orders_pages.push_back(page(
        200,
        r#"{"orders":[
            {"id":"o1","channel":"cobas","text":"H|\\^&\rO|1|S1||^^^GLU\rL|1|N\r"},
            {"id":"o2","channel":"cobas","text":"H|\\^&\rO|1|X||^^^NA\rL|1|N\r","specimens":["S2","S3"]}
        ],"next":"C 1"}"#,
    ));
    assert_eq!(r.feed.poll_once(), Outcome::Took(2));
    // The handler wakes the channel with `notify_one`: the permit waits for its driver.
    // (`timeout` polls the future once before it looks at the clock.)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let woken =
        rt.block_on(async { tokio::time::timeout(Duration::ZERO, r.astm.orders.notified()).await });
    assert!(woken.is_ok(), "the channel was not woken");
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C 1"));
    let o1 = r.store.order("o1").unwrap().unwrap();
    assert_eq!(o1.specimens, ["S1"], "read from O-3");
    assert_eq!(
        r.store.order("o2").unwrap().unwrap().specimens,
        ["S2", "S3"]
    );
    assert_eq!(
        r.store
            .orders_for_specimens("cobas", &["S3".to_string()])
            .unwrap()
            .len(),
        1
    );
    // A page with items: the next poll goes at once.
    assert!(r.feed.pace(&Outcome::Took(2)));
    assert!(r.clock.sleeps().is_empty());
    assert_eq!(r.feed.poll_once(), Outcome::Nothing { held: false });
    assert_eq!(
        paths(&r.up),
        ["/orders?wait=25s", "/orders?after=C%201&wait=25s"]
    );
    let req = &r.up.requests("/orders?wait=25s")[0];
    assert!(req
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ")));
    assert_eq!(req.header("x-labagent-agent"), Some("chem-lab-1"));
}

#[test]
fn a_quick_nothing_waits_orders_poll_and_a_held_poll_does_not() {
    let mut r = rig();
    // 204 at once.
    let o = r.feed.poll_once();
    assert_eq!(o, Outcome::Nothing { held: false });
    assert!(r.feed.pace(&o));
    assert_eq!(r.clock.sleeps(), [POLL]);
    // An empty page at once is the same.
    r.up.state()
        .orders_pages
        .push_back(page(200, r#"{"orders":[],"next":"C0"}"#));
    let o = r.feed.poll_once();
    assert_eq!(o, Outcome::Nothing { held: false });
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C0"));
    // The server holds the poll for the whole wait: poll again at once.
    let c = r.clock.clone();
    r.up.state().on_request = Some(Arc::new(move |req| {
        if req.path.starts_with("/orders") {
            c.advance(WAIT);
        }
    }));
    let o = r.feed.poll_once();
    assert_eq!(o, Outcome::Nothing { held: true });
    assert!(r.feed.pace(&o));
    assert_eq!(r.clock.sleeps(), [POLL], "no wait after a held poll");
}

#[test]
fn a_page_that_cannot_be_taken_is_asked_again_from_the_same_cursor() {
    let mut r = rig();
    r.store.save_cursor("orders", "C5").unwrap();
    {
        let mut st = r.up.state();
        st.orders_pages
            .push_back(page(200, "<html>not json</html>"));
        st.orders_pages.push_back(page(500, "{}"));
        st.orders_pages.push_back(page(
            200,
            r#"{"orders":[{"id":"o9","channel":"cobas","text":"O|1|S9"}],"next":"C6"}"#,
        ));
    }
    let o = r.feed.poll_once();
    assert!(
        matches!(&o, Outcome::Failed(None, why) if why.contains("not an order page")),
        "{o:?}"
    );
    assert!(r.feed.pace(&o));
    let o = r.feed.poll_once();
    assert!(
        matches!(&o, Outcome::Failed(None, why) if why == "HTTP 500"),
        "{o:?}"
    );
    assert!(r.feed.pace(&o));
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C5"));
    let sleeps = r.clock.sleeps();
    assert_eq!(sleeps.len(), 2);
    assert!(sleeps[1] > sleeps[0], "backoff grows: {sleeps:?}");
    assert_eq!(r.feed.poll_once(), Outcome::Took(1));
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C6"));
    assert_eq!(
        paths(&r.up),
        [
            "/orders?after=C5&wait=25s",
            "/orders?after=C5&wait=25s",
            "/orders?after=C5&wait=25s"
        ]
    );
}

#[test]
fn retry_after_is_honoured() {
    let mut r = rig();
    r.up.state()
        .orders_pages
        .push_back(Fault::with_header(429, "Retry-After", "7"));
    let o = r.feed.poll_once();
    assert_eq!(
        o,
        Outcome::Failed(Some(Duration::from_secs(7)), "HTTP 429".into())
    );
    assert!(r.feed.pace(&o));
    assert_eq!(r.clock.sleeps(), [Duration::from_secs(7)]);
}

#[test]
fn a_refused_token_is_renewed_once() {
    let mut r = rig();
    assert_eq!(r.feed.poll_once(), Outcome::Nothing { held: false });
    r.up.state().valid_tokens.clear();
    r.up.state().orders_pages.push_back(page(
        200,
        r#"{"orders":[{"id":"o1","channel":"cobas","text":"O|1|S1"}]}"#,
    ));
    assert_eq!(r.feed.poll_once(), Outcome::Took(1));
    assert_eq!(r.up.state().tokens_issued, 2);
}

#[test]
fn orders_that_cannot_be_taken_are_kept_failed_and_reported_and_ids_are_taken_once() {
    let mut r = rig();
    r.up.state().orders_pages.push_back(page(
        200,
        r#"{"orders":[
            {"id":"n1","channel":"nowhere","text":"O|1|S1"},
            {"id":"r1","channel":"au480","text":"x"},
            {"id":"e1","channel":"cobas","text":""},
            {"channel":"cobas","text":"O|1|S1"},
            {"id":"ok","channel":"cobas","text":"O|1|S1"}
        ],"next":"C1"}"#,
    ));
    r.up.state().orders_pages.push_back(page(
        200,
        r#"{"orders":[{"id":"ok","channel":"cobas","text":"O|1|S1 changed"}],"next":"C2"}"#,
    ));
    assert_eq!(r.feed.poll_once(), Outcome::Took(5));
    assert_eq!(r.feed.poll_once(), Outcome::Took(1));
    for (id, why) in [
        ("n1", "no channel"),
        ("r1", "speaks raw"),
        ("e1", "empty order text"),
    ] {
        let o = r.store.order(id).unwrap().unwrap();
        assert_eq!(o.state, OrderState::Failed, "{id}");
        assert!(o.detail.as_deref().unwrap().contains(why), "{id}: {o:?}");
    }
    let ok = r.store.order("ok").unwrap().unwrap();
    assert_eq!(ok.state, OrderState::Pending);
    assert_eq!(ok.text, "O|1|S1", "an id seen before is not stored again");
    let reports: Vec<serde_json::Value> = r
        .store
        .next_pending(ORDER_REPORTS, 100)
        .unwrap()
        .iter()
        .map(|m| serde_json::from_slice(&m.bytes).unwrap())
        .collect();
    let ids: Vec<&str> = reports.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n1", "r1", "e1"]);
    assert!(reports.iter().all(|v| v["status"] == "failed"));
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C2"));
}

#[test]
fn the_loop_runs_until_stopped_and_takes_every_page_once() {
    let mut r = rig();
    for i in 0..5 {
        r.up.state().orders_pages.push_back(page(
            200,
            &format!(
                r#"{{"orders":[{{"id":"o{i}","channel":"cobas","text":"O|1|S{i}"}}],"next":"C{i}"}}"#
            ),
        ));
    }
    // After the five pages: quick "nothing" answers, each followed by a poll wait,
    // until the clock's budget ends the loop.
    r.clock.refill(3);
    r.feed.run();
    for i in 0..5 {
        assert!(r.store.order(&format!("o{i}")).unwrap().is_some());
    }
    assert_eq!(r.store.cursor("orders").unwrap().as_deref(), Some("C4"));
    assert_eq!(r.clock.sleeps(), [POLL, POLL, POLL]);
    assert_eq!(paths(&r.up).len(), 5 + 3 + 1);
}

fn report(n: usize, order: &str, status: &str) -> labagent::uplink::Outgoing {
    let mut m = common_upstream::msg(ORDER_REPORTS, n, labagent::uplink::Protocol::Raw);
    m.text = serde_json::json!({
        "id": order, "status": status, "detail": "why", "at": "2026-12-05T07:00:00.000Z",
        "channel": "cobas"
    })
    .to_string();
    m
}

/// Reports travel the upload path one at a time, whatever the format, as
/// `{"id","status","detail","at"}` with `X-Labagent-Kind: order-report`.
#[test]
fn order_reports_are_posted_one_at_a_time_as_json() {
    let up = Upstream::start();
    let queue = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(100);
    queue.push(report(1, "o1", "delivered"));
    queue.push(report(2, "o2", "answered-query"));
    queue.push(common_upstream::msg(
        "cobas",
        3,
        labagent::uplink::Protocol::Astm,
    ));
    let mut settings = up.settings();
    settings.format = labagent::uplink::Format::Json;
    let mut u = common_upstream::uplink(settings, up.auth(), &queue, &cache, &c);
    assert!(u.drain());
    let reqs = up.requests("/ingest");
    let kinds: Vec<Option<&str>> = reqs.iter().map(|r| r.header("x-labagent-kind")).collect();
    // One round per channel: a report, the message batch, the other report.
    assert_eq!(kinds, [Some("order-report"), None, Some("order-report")]);
    let first = &reqs[0];
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("x-labagent-channel"), Some("cobas"));
    assert_eq!(
        first.header("idempotency-key"),
        Some("#order-reports-000001")
    );
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id":"o1","status":"delivered","detail":"why","at":"2026-12-05T07:00:00.000Z"})
    );
    assert_eq!(queue.pending(), 0);
}

/// `format = "fhir"`: to `orders_url`, or delivered by policy without one.
#[test]
fn with_fhir_reports_go_to_orders_url_or_are_delivered_by_policy() {
    let up = Upstream::start();
    let cache = MemoryTokenCache::new();
    let c = clock(100);
    let mut settings = up.settings();
    settings.format = labagent::uplink::Format::Fhir;
    // Without orders_url: delivered by policy, nothing posted.
    let queue = MemoryQueue::new();
    queue.push(report(1, "o1", "failed"));
    let mut u = common_upstream::uplink(settings.clone(), up.auth(), &queue, &cache, &c);
    assert!(u.drain());
    assert_eq!(queue.pending(), 0);
    assert!(up.state().requests.iter().all(|r| r.path != "/ingest"));
    // With one: posted there.
    settings.orders_url = Some(up.url("/ingest"));
    let queue = MemoryQueue::new();
    queue.push(report(1, "o1", "failed"));
    let mut u = common_upstream::uplink(settings, up.auth(), &queue, &cache, &c);
    assert!(u.drain());
    let reqs = up.requests("/ingest");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("x-labagent-kind"), Some("order-report"));
}
