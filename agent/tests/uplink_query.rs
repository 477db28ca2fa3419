//! Host queries over HTTP (`[uplink] query_url`, `uplink::query`) against a local TLS
//! upstream: answers in both protocols, every way of "nothing" (204, 404, a body that
//! does not parse, 5xx, a server past the deadline, no server), token renewal, and a
//! shutdown — also the agent's reload and stop — that never waits for a stuck worker.
//!
//! The hook's deadline is a `std::time::Instant` (the instruments' wait is real time), so
//! the deadline tests measure real time, with bounds far from the values asserted.

mod common_upstream;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common_upstream::{clock, Fault, Upstream};
use labagent::query::{QueryHook, QueryRequest};
use labagent::store::Protocol;
use labagent::uplink::{MemoryQueue, MemoryTokenCache, QueryUpstream};

/// Every log line of this test binary (worker threads log too, so a global subscriber).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        #[derive(Clone)]
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = W(buf.clone());
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// A query upstream for `up`'s `/query`, with the uploader's authenticator.
fn start(up: &Upstream) -> QueryUpstream {
    logs();
    let queue = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(100);
    let uplink = common_upstream::uplink(up.settings(), up.auth(), &queue, &cache, &c);
    QueryUpstream::start(&up.url("/query"), uplink.settings(), uplink.authenticator()).unwrap()
}

/// Signals each query request as the upstream receives it (an event to wait on).
fn on_query(up: &Upstream) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    up.state().on_request = Some(Arc::new(move |req| {
        if req.path.starts_with("/query") {
            let _ = tx.lock().unwrap().send(());
        }
    }));
    rx
}

fn query(protocol: Protocol, text: &str, specimens: &[&str]) -> QueryRequest {
    QueryRequest {
        id: "lab-00000042".into(),
        channel: "lab".into(),
        protocol,
        text: text.into(),
        specimens: specimens.iter().map(|s| s.to_string()).collect(),
    }
}

const ASTM_Q: &str = "H|\\^&|||3600796\rQ|1|^1068687||ALL||||||||O\rL|1|N\r";

/// Asks and waits (blocking) for the answer; the time it took.
fn ask(hook: &QueryHook, q: QueryRequest, within: Duration) -> (Option<String>, Duration) {
    let t0 = Instant::now();
    let rx = hook(q, t0 + within);
    let a = rx.blocking_recv().expect("the hook always answers");
    (a, t0.elapsed())
}

fn answer(status: u16, body: &str) -> Fault {
    Fault::Status {
        status,
        headers: vec![],
        body: body.into(),
    }
}

#[test]
fn an_astm_answer_comes_back_with_cr_line_ends_and_the_request_says_what_it_is() {
    let up = Upstream::start();
    up.state().query_answers.push_back(answer(
        200,
        "H|\\^&|||LIS\nP|1\nO|1|1068687||^^^1.0000+002+1.0|R\nL|1|N\n",
    ));
    let q = start(&up);
    let (a, _) = ask(
        &q.hook(),
        query(Protocol::Astm, ASTM_Q, &["1068687", "a,b c"]),
        Duration::from_secs(5),
    );
    assert_eq!(
        a.as_deref(),
        Some("H|\\^&|||LIS\rP|1\rO|1|1068687||^^^1.0000+002+1.0|R\rL|1|N\r")
    );
    let reqs = up.requests("/query");
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.text(), ASTM_Q, "the query as received");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-labagent-kind"), Some("query"));
    assert_eq!(r.header("x-labagent-channel"), Some("lab"));
    assert_eq!(r.header("x-labagent-protocol"), Some("astm"));
    assert_eq!(r.header("x-labagent-agent"), Some("chem-lab-1"));
    assert_eq!(r.header("x-labagent-query-id"), Some("lab-00000042"));
    assert_eq!(r.header("x-labagent-specimens"), Some("1068687,a%2Cb%20c"));
    assert_eq!(r.header("idempotency-key"), None);
    assert!(r
        .header("authorization")
        .is_some_and(|v| v.starts_with("Bearer ")));
}

#[test]
fn an_hl7_answer_of_two_messages_is_kept_in_order() {
    let up = Upstream::start();
    let qck = "MSH|^~\\&|LIS||CL-2000i||20240101||QCK^Q02|A1|P|2.3.1\r\nMSA|AA|Q1\r\nQAK|SR|OK\r\n";
    let dsr = "MSH|^~\\&|LIS||CL-2000i||20240101||DSR^Q03|A2|P|2.3.1\r\nQRD|x\r\n";
    up.state()
        .query_answers
        .push_back(answer(200, &format!("{qck}{dsr}")));
    let q = start(&up);
    let qry =
        "MSH|^~\\&|CL-2000i||LIS||20240101||QRY^Q02|Q1|P|2.3.1\rQRD|20240101|R|D|1|||RD|S1|OTH\r";
    let (a, _) = ask(
        &q.hook(),
        query(Protocol::Hl7, qry, &["S1"]),
        Duration::from_secs(5),
    );
    assert_eq!(
        a.unwrap(),
        format!("{qck}{dsr}").replace("\r\n", "\r"),
        "both messages, CR line ends"
    );
    let r = &up.requests("/query")[0];
    assert_eq!(r.header("content-type"), Some("x-application/hl7-v2+er7"));
    assert_eq!(r.header("x-labagent-protocol"), Some("hl7"));
}

#[test]
fn nothing_known_bad_bodies_and_errors_are_none() {
    let up = Upstream::start();
    let secret_body = "H|\\^&|||LIS\rO|1|PATIENT-SECRET-77\r"; // no L record
    {
        let mut st = up.state();
        st.query_answers.push_back(answer(204, ""));
        st.query_answers.push_back(answer(404, "unknown specimen"));
        st.query_answers.push_back(answer(200, secret_body));
        st.query_answers
            .push_back(answer(200, "<html>login</html>"));
        st.query_answers.push_back(answer(500, "boom"));
        st.query_answers.push_back(answer(503, ""));
        st.query_answers.push_back(answer(302, ""));
    }
    let q = start(&up);
    for i in 0..7 {
        let (a, took) = ask(
            &q.hook(),
            query(Protocol::Astm, ASTM_Q, &["1068687"]),
            Duration::from_secs(5),
        );
        assert_eq!(a, None, "answer {i}");
        assert!(took < Duration::from_secs(4), "answer {i} took {took:?}");
    }
    assert_eq!(up.requests("/query").len(), 7);
    let logs = log_text();
    assert!(logs.contains("does not parse"), "{logs}");
    assert!(!logs.contains("PATIENT-SECRET-77"), "answer content logged");
}

#[test]
fn an_upstream_past_the_deadline_gives_none_at_the_deadline() {
    let up = Upstream::start();
    // More stuck requests than workers: the deadline holds for each.
    for _ in 0..6 {
        up.state().query_answers.push_back(Fault::Hang);
    }
    let q = start(&up);
    let hook = q.hook();
    let t0 = Instant::now();
    let within = Duration::from_millis(400);
    let rxs: Vec<_> = (0..6)
        .map(|_| hook(query(Protocol::Astm, ASTM_Q, &["1"]), t0 + within))
        .collect();
    for rx in rxs {
        assert_eq!(rx.blocking_recv().unwrap(), None);
    }
    let took = t0.elapsed();
    assert!(took >= within, "before the deadline: {took:?}");
    assert!(took < within + Duration::from_secs(2), "late: {took:?}");
    // A deadline already past: None at once.
    let (a, took) = ask(&hook, query(Protocol::Astm, ASTM_Q, &["1"]), Duration::ZERO);
    assert_eq!(a, None);
    assert!(took < Duration::from_millis(500));
}

#[test]
fn no_server_is_none() {
    logs();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = Upstream::start();
    let queue = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(100);
    let mut settings = up.settings();
    settings.timeout = Duration::from_secs(2);
    let uplink = common_upstream::uplink(
        settings,
        labagent::uplink::AuthSettings::none(),
        &queue,
        &cache,
        &c,
    );
    let q = QueryUpstream::start(
        &format!("https://127.0.0.1:{port}/query"),
        uplink.settings(),
        uplink.authenticator(),
    )
    .unwrap();
    let (a, took) = ask(
        &q.hook(),
        query(Protocol::Astm, ASTM_Q, &["1"]),
        Duration::from_secs(5),
    );
    assert_eq!(a, None);
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn a_refused_token_is_renewed_once_and_the_query_asked_again() {
    let up = Upstream::start();
    let ok = "H|\\^&\rO|1|S1||^^^GLU\rL|1|N\r";
    up.state().query_answers.push_back(answer(200, ok));
    let q = start(&up);
    let hook = q.hook();
    let within = Duration::from_secs(5);
    assert!(ask(&hook, query(Protocol::Astm, ASTM_Q, &["S1"]), within)
        .0
        .is_some());
    assert_eq!(up.state().tokens_issued, 1);
    // The server forgets its tokens: one 401, a new token, the same query again.
    {
        let mut st = up.state();
        st.valid_tokens.clear();
        st.query_answers.push_back(answer(200, ok));
    }
    let (a, _) = ask(&hook, query(Protocol::Astm, ASTM_Q, &["S1"]), within);
    assert_eq!(a.as_deref(), Some(ok));
    assert_eq!(up.state().tokens_issued, 2);
    let auths: Vec<String> = up
        .requests("/query")
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(auths.len(), 3);
    assert_eq!(auths[0], auths[1], "the stale token was tried first");
    assert_ne!(auths[1], auths[2]);
    // Refused again with a fresh token: None, not a loop.
    {
        let mut st = up.state();
        st.valid_tokens.clear();
        st.expires_in = 3600;
    }
    let before = up.requests("/query").len();
    up.state().token_faults.push_back(Fault::json(
        200,
        r#"{"access_token":"never-valid","token_type":"Bearer","expires_in":3600}"#,
    ));
    let (a, _) = ask(&hook, query(Protocol::Astm, ASTM_Q, &["S1"]), within);
    assert_eq!(a, None);
    assert!(up.requests("/query").len() - before <= 2);
}

#[test]
fn shutdown_never_waits_for_a_stuck_worker_and_later_queries_get_none() {
    let up = Upstream::start();
    up.state().query_answers.push_back(Fault::Hang);
    let q = start(&up);
    let hook = q.hook();
    let sent = on_query(&up);
    let t0 = Instant::now();
    let rx = hook(
        query(Protocol::Astm, ASTM_Q, &["1"]),
        t0 + Duration::from_secs(30),
    );
    // The worker is in the request (the server has it) before we stop.
    sent.recv_timeout(Duration::from_secs(10))
        .expect("query never sent");
    drop(q);
    assert_eq!(rx.blocking_recv().unwrap(), None);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The hook outlives the upstream: None at once.
    let (a, took) = ask(
        &hook,
        query(Protocol::Astm, ASTM_Q, &["1"]),
        Duration::from_secs(30),
    );
    assert_eq!(a, None);
    assert!(took < Duration::from_secs(1));
}

/// The agent with `query_url` set: a reload that rebuilds the uplink and the stop both
/// finish while a query is stuck upstream and a channel still holds its hook.
#[test]
fn the_agent_reloads_and_stops_while_a_query_is_stuck_upstream() {
    logs();
    let up = Upstream::start();
    up.state().accept_basic = true;
    up.state().query_answers.push_back(Fault::Hang);
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = |timeout: &str| {
        format!(
            "[agent]\nid = \"lab\"\nstate_dir = \"{d}\"\nstatus_socket = \"{d}/status.sock\"\n\
             [buffer]\nmin_free = 0\n\
             [uplink]\nkind = \"http\"\nurl = \"{ingest}\"\nquery_url = \"{query}\"\nca_file = \"{ca}\"\ntimeout = \"{timeout}\"\n\
             [uplink.auth]\nmethod = \"basic\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
             [[channel]]\nname = \"lab\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{port}\"\nquery_timeout = \"30s\"\n",
            d = dir.path().display(),
            ingest = up.url("/ingest"),
            query = up.url("/query"),
            ca = up.ca_file().display(),
            id = common_upstream::CLIENT_ID,
            secret = common_upstream::CLIENT_SECRET,
        )
    };
    let load = |text: &str| {
        labagent_config::load_str(
            text,
            std::path::Path::new("t.toml"),
            &labagent_config::LoadOptions::with_env(Vec::<(String, String)>::new()),
        )
        .unwrap()
        .config
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut agent = labagent::service::Agent::start(load(&config("20s")))
            .await
            .unwrap();
        let ch = agent.channels()[0].clone();
        let sent = on_query(&up);
        assert_eq!(ch.config.query_timeout, Duration::from_secs(30));
        let t0 = Instant::now();
        let rx = ch.ask_upstream(
            query(Protocol::Astm, ASTM_Q, &["1"]),
            t0 + ch.config.query_timeout,
        );
        if sent.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!("query never reached the upstream\n{}", log_text());
        }
        // A reload that rebuilds the uplink (timeout changed): done long before 30 s.
        let not_applied =
            tokio::time::timeout(Duration::from_secs(10), agent.reload(load(&config("21s"))))
                .await
                .expect("reload hung on the stuck query");
        assert!(not_applied.is_empty(), "{not_applied:?}");
        // The stuck query was answered "nothing" when its uplink went.
        let a = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("no answer after the reload");
        assert_eq!(a.unwrap(), None);
        // Another stuck query on the new uplink; then stop.
        up.state().query_answers.push_back(Fault::Hang);
        let rx = ch.ask_upstream(
            query(Protocol::Astm, ASTM_Q, &["1"]),
            Instant::now() + ch.config.query_timeout,
        );
        if sent.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!("query never reached the upstream\n{}", log_text());
        }
        tokio::time::timeout(Duration::from_secs(10), agent.stop())
            .await
            .expect("stop hung on the stuck query");
        assert_eq!(rx.await.unwrap(), None);
        assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    });
}
