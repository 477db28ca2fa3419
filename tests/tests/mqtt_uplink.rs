//! The MQTT uplink (library) against a real mosquitto on loopback: password file, TLS with
//! a test CA and a client certificate, the broker killed mid-stream with and without
//! persistence, orders in.
//!
//! The queue is the in-memory [`MemoryQueue`], which logs every confirmation: a message
//! leaves it only on PUBACK, so "nothing lost" is checked against both the subscriber and
//! the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use labagent::channel::OrderReport;
use labagent::mqtt::{self, Login, MqttHandle, MqttSettings, MqttStatus, OrderSink};
use labagent::store::NewOrder;
use labagent::uplink::{MemoryQueue, Outgoing, Protocol, Secret, UplinkState};
use labagent_tests::mosquitto::{free_port, password_file, Broker, Received, TestClient};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

const T: Duration = Duration::from_secs(30);

fn msg(i: usize) -> Outgoing {
    Outgoing {
        id: format!("m{i:06}"),
        channel: "chem".into(),
        protocol: Protocol::Astm,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_877_987),
        clock_synced: Some(true),
        text: format!("H|\\^&\rP|1||PID-{i}\rR|1|^^^GLU|{i}|mg/dL\rL|1|N\r"),
        meta: serde_json::json!({"frames": 1}),
    }
}

fn settings(url: String) -> MqttSettings {
    let mut s = MqttSettings::new(url, "lab-1", vec!["chem".into()]);
    s.allow_plain = true;
    s.client_id = "agent-lab-1".into();
    s
}

fn wait_status(
    rt: &tokio::runtime::Runtime,
    h: &MqttHandle,
    what: &str,
    f: impl Fn(&MqttStatus) -> bool,
) -> MqttStatus {
    let mut rx = h.status();
    let got = rt.block_on(async {
        match tokio::time::timeout(T, rx.wait_for(|s| f(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        }
    });
    got.unwrap_or_else(|| panic!("timed out waiting for {what}: {:?}", *rx.borrow()))
}

fn ids(msgs: &[Received]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut m: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in msgs.iter().filter(|r| r.topic.ends_with("/messages")) {
        let id = r.json()["id"].as_str().unwrap().to_string();
        m.entry(id).or_default().push(r.payload.clone());
    }
    m
}

fn shutdown(rt: &tokio::runtime::Runtime, h: MqttHandle) {
    rt.block_on(h.shutdown());
}

#[test]
fn password_file_envelope_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    password_file(&pw, &[("sub", "subpw"), ("agent", "agentpw")]);
    let port = free_port();
    let broker = Broker::start_with(
        &dir.path().join("broker"),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
        vec![port],
    );
    let sub = TestClient::connect(port, "sub", Some(("sub", "subpw")), "labagent/#");
    let rt = labagent_tests::runtime();
    let _g = rt.enter();

    // A wrong password: refused, paused, nothing leaves the queue.
    let q = MemoryQueue::new();
    for i in 0..20 {
        q.push(msg(i));
    }
    let bad = mqtt::spawn(
        settings(format!("mqtt://127.0.0.1:{port}")),
        Login::Basic {
            user: "agent".into(),
            secret: Secret::new("wrong"),
        },
        Arc::new(q.clone()),
        None,
    )
    .unwrap();
    let st = wait_status(&rt, &bad, "a refused login", |s| {
        matches!(s.state, UplinkState::Paused { .. })
    });
    assert!(!st.connected);
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("refused"),
        "{st:?}"
    );
    assert!(
        !format!("{st:?}").contains("wrong"),
        "no secret in the status"
    );
    shutdown(&rt, bad);
    assert_eq!(q.pending(), 20);

    // The right one: every message, in order, as the JSON envelope.
    let mut s = settings(format!("mqtt://127.0.0.1:{port}"));
    s.orders = true;
    let stored: Arc<Mutex<Vec<NewOrder>>> = Arc::default();
    let notified: Arc<Mutex<Vec<String>>> = Arc::default();
    struct Sink(Arc<Mutex<Vec<NewOrder>>>, Arc<Mutex<Vec<String>>>);
    impl OrderSink for Sink {
        fn put(&self, o: NewOrder) -> Result<bool, String> {
            let mut v = self.0.lock().unwrap();
            if v.iter().any(|x| x.id == o.id) {
                return Ok(false);
            }
            v.push(o);
            Ok(true)
        }
        fn notify(&self, channel: &str) {
            self.1.lock().unwrap().push(channel.to_string());
        }
    }
    let h = mqtt::spawn(
        s,
        Login::Basic {
            user: "agent".into(),
            secret: Secret::new("agentpw"),
        },
        Arc::new(q.clone()),
        Some(Arc::new(Sink(stored.clone(), notified.clone()))),
    )
    .unwrap();
    let got = sub.wait_for(T, "20 messages", |m| ids(m).len() >= 20);
    let st = wait_status(&rt, &h, "20 confirmed", |s| s.delivered >= 20);
    assert!(st.connected && st.state == UplinkState::Ok, "{st:?}");
    assert_eq!(st.session_present, Some(false));
    let first = got
        .iter()
        .find(|r| r.topic == "labagent/lab-1/chem/messages")
        .expect("topic {prefix}/{agent}/{channel}/messages");
    let env = first.json();
    assert_eq!(env["id"], "m000000");
    assert_eq!(env["agent"], "lab-1");
    assert_eq!(env["channel"], "chem");
    assert_eq!(env["protocol"], "astm");
    assert_eq!(env["received_at"], "2026-11-28T14:59:47.000Z");
    assert_eq!(env["clock_synced"], true);
    assert_eq!(env["text"], msg(0).text);
    assert_eq!(env["meta"]["frames"], 1);
    let order: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "order kept per channel");
    wait_until(|| q.pending() == 0, "queue drained");
    assert_eq!(q.confirmed().len(), 20);

    // Orders: stored before their PUBACK, a repeated id stored once, a bad one reported.
    sub.wait_subscribed(1, T);
    wait_log(&broker, "agent-lab-1", "labagent/lab-1/chem/orders");
    let order = br#"{"id":"ord-1","text":"H|\\^&\rO|1|S1||^^^GLU\rL|1|N\r"}"#;
    sub.publish("labagent/lab-1/chem/orders", order);
    sub.publish("labagent/lab-1/chem/orders", order);
    sub.publish("labagent/lab-1/chem/orders", br#"{"id":"ord-bad"}"#);
    let got = sub.wait_for(T, "the bad order's status", |m| {
        m.iter().any(|r| r.topic.ends_with("/orders/status"))
    });
    let report = got
        .iter()
        .find(|r| r.topic == "labagent/lab-1/chem/orders/status")
        .unwrap()
        .json();
    assert_eq!(report["id"], "ord-bad");
    assert_eq!(report["state"], "failed");
    assert_eq!(stored.lock().unwrap().len(), 1, "one order, stored once");
    assert_eq!(stored.lock().unwrap()[0].channel, "chem");
    assert_eq!(*notified.lock().unwrap(), vec!["chem".to_string()]);
    // The channel's report goes out on the status topic.
    h.report(OrderReport {
        channel: "chem".into(),
        id: "ord-1".into(),
        state: "delivered".into(),
        detail: "delivered".into(),
    });
    let got = sub.wait_for(T, "the delivered status", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/orders/status") && r.json()["id"] == "ord-1")
    });
    let r = got
        .iter()
        .find(|r| r.topic.ends_with("/orders/status") && r.json()["id"] == "ord-1")
        .unwrap()
        .json();
    assert_eq!(r["state"], "delivered");
    let st = wait_status(&rt, &h, "order counted", |s| s.orders_received == 1);
    assert_eq!(st.orders_received, 1);
    shutdown(&rt, h);
}

fn wait_log(broker: &Broker, a: &str, b: &str) {
    broker.wait_log(0, &[a, b], T);
}

fn wait_until(f: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + T;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(dir: &Path) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "labagent mqtt test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { cert, key }
    }

    fn leaf(&self, dir: &Path, name: &str, sans: &[&str]) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn tls_with_a_test_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d);
    ca.leaf(d, "server", &["127.0.0.1"]);
    ca.leaf(d, "client", &["labagent-client"]);
    let other = tempfile::tempdir().unwrap();
    Ca::new(other.path());
    let (plain, tls) = (free_port(), free_port());
    let _broker = Broker::start_with(
        &d.join("broker"),
        &format!(
            "per_listener_settings false\nallow_anonymous true\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\n",
            d = d.display()
        ),
        vec![plain, tls],
    );
    let sub = TestClient::connect(plain, "sub-tls", None, "labagent/#");
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    let url = format!("mqtts://127.0.0.1:{tls}");

    // Without the client certificate: the broker refuses the handshake; paused, kept.
    let q = MemoryQueue::new();
    for i in 0..5 {
        q.push(msg(i));
    }
    let mut s = settings(url.clone());
    s.allow_plain = false;
    s.ca_file = Some(d.join("ca.pem"));
    let h = mqtt::spawn(s.clone(), Login::None, Arc::new(q.clone()), None).unwrap();
    let st = wait_status(&rt, &h, "a TLS failure", |s| s.last_error.is_some());
    assert!(!st.connected, "{st:?}");
    shutdown(&rt, h);

    // A server from another CA is not trusted.
    let mut s2 = s.clone();
    s2.ca_file = Some(other.path().join("ca.pem"));
    s2.client_cert = Some(d.join("client.pem"));
    s2.client_key = Some(d.join("client.key"));
    let h = mqtt::spawn(s2, Login::None, Arc::new(q.clone()), None).unwrap();
    let st = wait_status(&rt, &h, "an untrusted server", |s| s.last_error.is_some());
    assert!(
        matches!(st.state, UplinkState::Paused { .. }),
        "TLS problems pause: {st:?}"
    );
    shutdown(&rt, h);
    assert_eq!(q.pending(), 5);

    // With the test CA and the client certificate: delivered.
    s.client_cert = Some(d.join("client.pem"));
    s.client_key = Some(d.join("client.key"));
    let h = mqtt::spawn(s, Login::None, Arc::new(q.clone()), None).unwrap();
    sub.wait_for(T, "5 messages over TLS", |m| ids(m).len() >= 5);
    wait_until(|| q.pending() == 0, "queue drained over TLS");
    shutdown(&rt, h);

    // A plain URL is refused unless allowed.
    let mut p = settings(format!("mqtt://127.0.0.1:{plain}"));
    p.allow_plain = false;
    assert!(matches!(
        mqtt::spawn(p, Login::None, Arc::new(q.clone()), None),
        Err(mqtt::MqttError::PlainMqtt(_))
    ));
}

/// Streams `n` messages, kills (or stops) the broker in the middle, restarts it and checks
/// that every message arrives and leaves the queue.
fn broker_restart(persistence: bool) {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    password_file(&pw, &[("sub", "subpw"), ("agent", "agentpw")]);
    let port = free_port();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    let mut broker = Broker::start_with(
        &dir.path().join("broker"),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence {persistence}\npersistence_location {}/\nmax_queued_messages 0\n",
            pw.display(),
            db.display()
        ),
        vec![port],
    );
    let sub = TestClient::connect(port, "sub-restart", Some(("sub", "subpw")), "labagent/#");
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    let q = MemoryQueue::new();
    for i in 0..N {
        q.push(msg(i));
    }
    let mut s = settings(format!("mqtt://127.0.0.1:{port}"));
    s.window = 20;
    let h = mqtt::spawn(
        s,
        Login::Basic {
            user: "agent".into(),
            secret: Secret::new("agentpw"),
        },
        Arc::new(q.clone()),
        None,
    )
    .unwrap();
    sub.wait_for(T, "a third of the stream", |m| m.len() >= N / 3);
    if persistence {
        broker.terminate(); // saves sessions and queued messages
    } else {
        broker.kill();
    }
    let st = wait_status(&rt, &h, "the connection loss", |s| !s.connected);
    assert_eq!(st.in_flight, 0);
    wait_until(
        || q.confirmed().len() as u64 == st.delivered,
        "confirmations flushed",
    );
    let confirmed_before: BTreeSet<String> = q.confirmed().into_iter().collect();
    assert!(q.pending() > 0, "the kill must come mid-stream");

    if persistence {
        broker.restart();
    } else {
        // No session survives: let the subscriber back in first, then the agent, so the
        // subscriber cannot miss what the agent resends.
        password_file(&pw, &[("sub", "subpw")]);
        broker.restart();
        sub.wait_subscribed(2, T);
        password_file(&pw, &[("sub", "subpw"), ("agent", "agentpw")]);
        broker.reload();
    }
    let st = wait_status(&rt, &h, "reconnected", |s| s.connected);
    assert_eq!(st.session_present, Some(persistence), "{st:?}");
    wait_until(|| q.pending() == 0, "queue drained after the restart");
    let all: BTreeSet<String> = (0..N).map(|i| msg(i).id).collect();
    let got = sub.wait_for(T, "the stream", |m| {
        let seen = ids(m);
        all.iter()
            .all(|id| seen.contains_key(id) || (!persistence && confirmed_before.contains(id)))
    });
    let seen = ids(&got);
    for (id, copies) in &seen {
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "duplicates of {id} differ"
        );
    }
    let missing: Vec<&String> = all.iter().filter(|id| !seen.contains_key(*id)).collect();
    if persistence {
        assert!(missing.is_empty(), "lost with persistence: {missing:?}");
    } else {
        // Only a message the broker had acknowledged before it was killed can be missing
        // (the broker's loss, not the agent's); the agent resent everything else. How many
        // that is depends on how far the subscriber lagged behind the broker at the kill.
        let lost_by_agent: Vec<&&String> = missing
            .iter()
            .filter(|id| !confirmed_before.contains(**id))
            .collect();
        assert!(
            lost_by_agent.is_empty(),
            "not acknowledged by the broker, never resent: {lost_by_agent:?}"
        );
    }
    assert_eq!(q.confirmed().iter().collect::<BTreeSet<_>>().len(), N);
    shutdown(&rt, h);
}

#[test]
fn broker_killed_mid_stream_without_persistence_loses_nothing() {
    broker_restart(false);
}

#[test]
fn broker_restarted_mid_stream_with_persistence_loses_nothing() {
    broker_restart(true);
}

/// A token endpoint on loopback: the first answer is a token the broker does not know,
/// then always `tok-good`, each valid for `life` seconds. Counts requests.
fn token_server(life: u64) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/oauth2/token", l.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tok = if n == 0 { "tok-bad" } else { "tok-good" };
                let json = format!(
                    r#"{{"access_token":"{tok}","token_type":"Bearer","expires_in":{life}}}"#
                );
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                    json.len()
                );
                if w.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (url, count)
}

#[test]
fn client_credentials_token_as_password_renewed_by_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    password_file(&pw, &[("sub", "subpw"), ("lab-client", "tok-good")]);
    let port = free_port();
    let broker = Broker::start_with(
        &dir.path().join("broker"),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
        vec![port],
    );
    let sub = TestClient::connect(port, "sub-cc", Some(("sub", "subpw")), "labagent/#");
    let (token_url, requests) = token_server(5);
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    let q = MemoryQueue::new();
    for i in 0..3 {
        q.push(msg(i));
    }
    let mut s = settings(format!("mqtt://127.0.0.1:{port}"));
    s.allow_plain_http = true;
    let auth = labagent::uplink::AuthSettings::client_credentials(
        token_url,
        "lab-client",
        Secret::new("client-secret"),
    );
    let cache = Arc::new(labagent::uplink::MemoryTokenCache::new());
    let login = mqtt::login(&s, auth, cache).unwrap();
    let h = mqtt::spawn(s, login, Arc::new(q.clone()), None).unwrap();
    // tok-bad is refused, forgotten, and a new token gets the agent in.
    sub.wait_for(T, "3 messages", |m| ids(m).len() >= 3);
    let st = wait_status(&rt, &h, "connected", |s| s.connected);
    assert!(st.token_expires_at.is_some(), "{st:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let from = broker.log_len();
    // Before the token expires the agent reconnects with a new one.
    broker.wait_log(
        from,
        &["New client connected", "agent-lab-1", "lab-client"],
        T,
    );
    assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    q.push(msg(3));
    h.wake();
    sub.wait_for(T, "the message after the renewal", |m| ids(m).len() >= 4);
    assert!(
        !broker.log().contains("tok-"),
        "mosquitto never logs passwords"
    );
    shutdown(&rt, h);
}

/// An order that cannot be stored is not acknowledged: the agent reconnects and the broker
/// sends it again (persistent session), and it is stored then, once.
#[test]
fn an_order_that_cannot_be_stored_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "sub-fail", None, "labagent/#");
    let rt = labagent_tests::runtime();
    let _g = rt.enter();
    struct Flaky(Mutex<Vec<String>>, std::sync::atomic::AtomicUsize);
    impl OrderSink for Flaky {
        fn put(&self, o: NewOrder) -> Result<bool, String> {
            if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err("disk full".into());
            }
            let mut v = self.0.lock().unwrap();
            if v.contains(&o.id) {
                return Ok(false);
            }
            v.push(o.id);
            Ok(true)
        }
        fn notify(&self, _: &str) {}
    }
    let sink = Arc::new(Flaky(Mutex::default(), Default::default()));
    let mut s = settings(format!("mqtt://127.0.0.1:{}", broker.port()));
    s.orders = true;
    let h = mqtt::spawn(
        s,
        Login::None,
        Arc::new(MemoryQueue::new()),
        Some(sink.clone()),
    )
    .unwrap();
    wait_status(&rt, &h, "connected", |s| s.connected);
    wait_log(&broker, "agent-lab-1", "labagent/lab-1/chem/orders");
    sub.publish(
        "labagent/lab-1/chem/orders",
        br#"{"id":"ord-9","text":"H|\\^&\rL|1|N\r"}"#,
    );
    let st = wait_status(&rt, &h, "the order stored after a reconnect", |s| {
        s.orders_received == 1
    });
    assert!(st.connected);
    assert_eq!(*sink.0.lock().unwrap(), vec!["ord-9".to_string()]);
    assert!(
        sink.1.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "tried twice"
    );
    let log = broker.log();
    assert!(
        log.matches("New client connected").count() >= 3,
        "sub + agent + agent again:\n{log}"
    );
    shutdown(&rt, h);
}
