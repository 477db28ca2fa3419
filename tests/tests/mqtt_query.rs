//! Host queries over MQTT (library) against a real mosquitto on loopback: the query is
//! published to `{prefix}/{agent}/{channel}/queries` as `{"id","specimens","text"}`, a test
//! LIS answers on `.../answers/{id}`; an empty answer is "nothing known", an answer that
//! does not parse too; no answer by the deadline and no broker are `None` in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use labagent::mqtt::{self, Login, MqttHandle, MqttSettings, MqttStatus};
use labagent::query::{QueryHook, QueryRequest};
use labagent::store::Protocol;
use labagent::uplink::MemoryQueue;
use labagent_tests::mosquitto::{free_port, Broker, Received, TestClient};

const T: Duration = Duration::from_secs(30);

fn settings(url: String) -> MqttSettings {
    let mut s = MqttSettings::new(url, "lab-1", vec!["chem".into(), "cl2000".into()]);
    s.allow_plain = true;
    s.client_id = "agent-lab-1".into();
    s
}

fn wait_status(
    rt: &tokio::runtime::Runtime,
    h: &MqttHandle,
    what: &str,
    f: impl Fn(&MqttStatus) -> bool,
) {
    let mut rx = h.status();
    let ok = rt.block_on(async {
        tokio::time::timeout(T, rx.wait_for(|s| f(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    });
    assert!(ok, "timed out waiting for {what}: {:?}", *rx.borrow());
}

fn query(id: &str, channel: &str, protocol: Protocol, text: &str) -> QueryRequest {
    QueryRequest {
        id: id.into(),
        channel: channel.into(),
        protocol,
        text: text.into(),
        specimens: vec!["1068687".into(), "S,2".into()],
    }
}

/// Asks, then waits for the answer (at most `T`); the answer and how long it took.
fn ask(
    rt: &tokio::runtime::Runtime,
    hook: &QueryHook,
    q: QueryRequest,
    within: Duration,
) -> (Option<String>, Duration) {
    let t0 = Instant::now();
    let rx = hook(q, t0 + within);
    let a = rt
        .block_on(tokio::time::timeout(T, rx))
        .expect("an answer in time")
        .expect("the hook always answers");
    (a, t0.elapsed())
}

/// The query `id` as the LIS received it.
fn received(lis: &TestClient, id: &str) -> Received {
    let got = lis.wait_for(T, "the query", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/queries") && r.json()["id"] == id)
    });
    got.into_iter()
        .find(|r| r.topic.ends_with("/queries") && r.json()["id"] == id)
        .unwrap()
}

const ASTM_Q: &str = "H|\\^&|||3600796\rQ|1|^1068687||ALL||||||||O\rL|1|N\r";

#[test]
fn queries_are_published_and_answers_taken_from_their_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let lis = TestClient::connect(broker.port(), "lis", None, "labagent/+/+/queries");
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    let h = mqtt::spawn(
        settings(format!("mqtt://127.0.0.1:{}", broker.port())),
        Login::None,
        Arc::new(MemoryQueue::new()),
        None,
    )
    .unwrap();
    wait_status(&rt, &h, "connected", |s| s.connected);
    broker.wait_log(0, &["agent-lab-1", "labagent/lab-1/chem/answers/+"], T);
    broker.wait_log(0, &["agent-lab-1", "labagent/lab-1/cl2000/answers/+"], T);
    let hook = h.hooks().query;

    // An ASTM answer, LF line ends made CR.
    let rx = {
        let t0 = Instant::now();
        hook(query("chem-q1", "chem", Protocol::Astm, ASTM_Q), t0 + T)
    };
    let q = received(&lis, "chem-q1");
    assert_eq!(q.topic, "labagent/lab-1/chem/queries");
    let body = q.json();
    assert_eq!(body["text"], ASTM_Q);
    assert_eq!(body["specimens"], serde_json::json!(["1068687", "S,2"]));
    lis.publish(
        "labagent/lab-1/chem/answers/chem-q1",
        b"H|\\^&|||LIS\nO|1|1068687||^^^1.0000+002+1.0|R\nL|1|N\n",
    );
    let a = rt.block_on(tokio::time::timeout(T, rx)).unwrap().unwrap();
    assert_eq!(
        a.as_deref(),
        Some("H|\\^&|||LIS\rO|1|1068687||^^^1.0000+002+1.0|R\rL|1|N\r")
    );

    // HL7: two messages kept in order.
    let qry = "MSH|^~\\&|CL-2000i||LIS||20240101||QRY^Q02|Q1|P|2.3.1\rQRD|x|R|D|1|||RD|S1|OTH\r";
    let rx = hook(
        query("cl2000-q2", "cl2000", Protocol::Hl7, qry),
        Instant::now() + T,
    );
    received(&lis, "cl2000-q2");
    let answer = "MSH|^~\\&|LIS||CL||20240101||QCK^Q02|A1|P|2.3.1\rMSA|AA|Q1\r\
                  MSH|^~\\&|LIS||CL||20240101||DSR^Q03|A2|P|2.3.1\rQRD|x\r";
    lis.publish("labagent/lab-1/cl2000/answers/cl2000-q2", answer.as_bytes());
    let a = rt.block_on(tokio::time::timeout(T, rx)).unwrap().unwrap();
    assert_eq!(a.as_deref(), Some(answer));

    // Empty: nothing known. Not parseable: nothing known too.
    for (id, payload) in [("chem-q3", &b""[..]), ("chem-q4", &b"<html>no</html>"[..])] {
        let rx = hook(
            query(id, "chem", Protocol::Astm, ASTM_Q),
            Instant::now() + T,
        );
        received(&lis, id);
        lis.publish(&format!("labagent/lab-1/chem/answers/{id}"), payload);
        let t0 = Instant::now();
        let a = rt.block_on(tokio::time::timeout(T, rx)).unwrap().unwrap();
        assert_eq!(a, None, "{id}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{id}: at the answer, not the deadline"
        );
    }

    // Nobody answers: None at the deadline.
    let within = Duration::from_millis(500);
    let (a, took) = ask(
        &rt,
        &hook,
        query("chem-q5", "chem", Protocol::Astm, ASTM_Q),
        within,
    );
    assert_eq!(a, None);
    assert!(
        took >= within && took < within + Duration::from_secs(3),
        "{took:?}"
    );
    received(&lis, "chem-q5");
    // Its late answer is dropped without harm: the next query gets its own answer.
    lis.publish(
        "labagent/lab-1/chem/answers/chem-q5",
        b"H|\\^&|||LATE\rL|1|N\r",
    );
    let rx = hook(
        query("chem-q5b", "chem", Protocol::Astm, ASTM_Q),
        Instant::now() + T,
    );
    received(&lis, "chem-q5b");
    lis.publish(
        "labagent/lab-1/chem/answers/chem-q5b",
        b"H|\\^&|||OWN\rL|1|N\r",
    );
    let a = rt.block_on(tokio::time::timeout(T, rx)).unwrap().unwrap();
    assert_eq!(a.as_deref(), Some("H|\\^&|||OWN\rL|1|N\r"));

    // Stopping answers a waiting query at once.
    let rx = hook(
        query("chem-q6", "chem", Protocol::Astm, ASTM_Q),
        Instant::now() + T,
    );
    received(&lis, "chem-q6");
    let t0 = Instant::now();
    rt.block_on(h.shutdown());
    let a = rt.block_on(tokio::time::timeout(T, rx)).unwrap().unwrap();
    assert_eq!(a, None);
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn without_a_broker_a_query_is_nothing_known_at_once() {
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    let h = mqtt::spawn(
        settings(format!("mqtt://127.0.0.1:{}", free_port())),
        Login::None,
        Arc::new(MemoryQueue::new()),
        None,
    )
    .unwrap();
    let hook = h.hooks().query;
    let (a, took) = ask(
        &rt,
        &hook,
        query("chem-q1", "chem", Protocol::Astm, ASTM_Q),
        Duration::from_secs(20),
    );
    assert_eq!(a, None);
    assert!(took < Duration::from_secs(5), "{took:?}");
    rt.block_on(h.shutdown());
}

/// The real binary with an MQTT uplink: the analyzer's query goes to the queries topic, a
/// LIS answers on answers/{id}, and the analyzer gets that answer.
#[test]
fn the_agent_answers_an_analyzer_from_the_mqtt_lis() {
    use labagent_tests::process::AgentProcess;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let lis = TestClient::connect(broker.port(), "lis", None, "labagent/+/+/queries");
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"e2e\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n\
             [uplink]\nkind = \"mqtt\"\n[uplink.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nallow_plain_mqtt = true\n\
             [uplink.auth]\nmethod = \"none\"\n\
             [[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("state").display(),
            dir.path().join("status.sock").display(),
            broker.port()
        ),
    )
    .unwrap();
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    broker.wait_log(0, &["e2e", "labagent/e2e/chem/answers/+"], T);
    let sim = std::thread::spawn(move || {
        labagent_tests::run(
            labagent_tests::labagent()
                .args(["simulate", "--protocol", "astm", "--no-pacing"])
                .args(["--connect", &format!("127.0.0.1:{port}")])
                .args(["--query", "S1", "--query-wait", "20"]),
        )
    });
    let got = lis.wait_for(T, "the query", |m| {
        m.iter().any(|r| r.topic == "labagent/e2e/chem/queries")
    });
    let q = got
        .iter()
        .find(|r| r.topic == "labagent/e2e/chem/queries")
        .unwrap()
        .json();
    assert_eq!(q["specimens"], serde_json::json!(["S1"]));
    let id = q["id"].as_str().unwrap();
    lis.publish(
        &format!("labagent/e2e/chem/answers/{id}"),
        b"H|\\^&|||LIS\rP|1||PID-1\rO|1|S1||^^^MQTT\rL|1|N\r",
    );
    let r = sim.join().unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("O|1|S1||^^^MQTT"), "{r:?}");
    agent.wait_line(0, &["host query answered", "from=\"upstream\""], T);
    assert!(agent.terminate(T).success());
}
