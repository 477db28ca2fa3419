//! The real `labagent run` with `uplink.kind = "mqtt"` against a real mosquitto:
//! SIGKILLed in the middle of draining its inbox, it loses nothing once restarted (a
//! message may arrive twice, always with the same id); an order published to the broker
//! reaches the instrument on a pty as valid ASTM frames, and `delivered` is published; one
//! for a raw channel (which cannot carry orders) is reported `failed` at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use labagent::simulate::wire::PtyWire;
use labagent::simulate::AstmInstrument;
use labagent::store::{NewMessage, Store, StoreOptions};
use labagent_tests::mosquitto::{free_port, Broker, Received, TestClient};
use labagent_tests::process::AgentProcess;

const T: Duration = Duration::from_secs(60);

fn config(dir: &Path, port: u16, channel: &str, orders: bool) -> PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[agent]
id = "e2e"
state_dir = "{state}"
status_socket = "{sock}"
[uplink]
kind = "mqtt"
[uplink.mqtt]
url = "mqtt://127.0.0.1:{port}"
allow_plain_mqtt = true
orders = {orders}
[uplink.auth]
method = "none"
{channel}
"#,
            state = dir.join("state").display(),
            sock = dir.join("status.sock").display(),
        ),
    )
    .unwrap();
    cfg
}

fn ids(msgs: &[Received]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut m: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in msgs.iter().filter(|r| r.topic.ends_with("/messages")) {
        let id = r.json()["id"].as_str().unwrap().to_string();
        m.entry(id).or_default().push(r.payload.clone());
    }
    m
}

/// Fills the agent's store with `n` messages (concurrent writers share the fsyncs).
fn prefill(state: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(state).unwrap();
    let store = Store::open(state.join("store"), StoreOptions::default()).unwrap();
    let threads = 8;
    let mut handles = Vec::new();
    for t in 0..threads {
        let s = store.clone();
        handles.push(std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in (t..n).step_by(threads) {
                let text = format!(
                    "H|\\^&\rP|1||PID-{i}\rR|1|^^^GLU|{i}|mg/dL||N||F|{}\rL|1|N\r",
                    "x".repeat(1500)
                );
                let a = s
                    .append(NewMessage {
                        channel: "chem".into(),
                        protocol: labagent::store::Protocol::Astm,
                        received_at: SystemTime::now(),
                        clock_synced: Some(true),
                        bytes: text.into_bytes(),
                        meta: serde_json::json!({}).into(),
                    })
                    .unwrap();
                ids.push(a.id.to_string());
            }
            ids
        }));
    }
    let mut ids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    ids.sort();
    store.sync().unwrap();
    ids
}

fn pending(state: &Path) -> u64 {
    let store = Store::open(state.join("store"), StoreOptions::default()).unwrap();
    store.stats().unwrap().totals.pending
}

#[test]
fn sigkill_mid_stream_loses_nothing_and_duplicates_keep_their_id() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "max_queued_messages 0\n");
    let sub = TestClient::connect(broker.port(), "sub-e2e", None, "labagent/#");
    let state = dir.path().join("state");
    let all = prefill(&state, N);
    let cfg = config(
        dir.path(),
        broker.port(),
        &format!(
            "[[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
        false,
    );

    let mut agent = AgentProcess::start(&cfg);
    sub.wait_for(T, "a part of the stream", |m| m.len() >= N / 5);
    agent.kill();
    let left = pending(&state);
    assert!(left > 0, "the kill must come mid-stream");

    let mut agent = AgentProcess::start(&cfg);
    // A debug build on a loaded 2-core CI machine drains slowly: wait on the event with a
    // generous bound.
    let got = sub.wait_for(3 * T, "every message", |m| ids(m).len() >= N);
    let seen = ids(&got);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        all,
        "every id, nothing else"
    );
    let dups = seen.values().filter(|c| c.len() > 1).count();
    for (id, copies) in &seen {
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "copies of {id} differ"
        );
    }
    eprintln!("{N} messages, {left} pending at the kill, {dups} sent twice");
    // `labagent status` reports the MQTT uplink like the HTTP one.
    let out = labagent_tests::labagent()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uplink"]["kind"], "mqtt", "{v}");
    assert_eq!(v["uplink"]["state"], "ok", "{v}");
    assert!(v["uplink"]["delivered"].as_u64().unwrap() >= 1, "{v}");
    let st = agent.terminate(T);
    assert!(st.success(), "exit after SIGTERM: {st:?}\n{}", agent.log());
    assert_eq!(pending(&state), 0, "the inbox is drained");
}

#[test]
fn an_order_reaches_the_instrument_and_delivered_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "sub-orders", None, "labagent/#");
    let link = dir.path().join("usb-Analyzer_MQTT-if00-port0");
    let cfg = config(
        dir.path(),
        broker.port(),
        &format!(
            "[[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nserial = \"{}\"\nbaud = 115200\n\
             [[channel]]\nname = \"meter\"\nprotocol = \"raw\"\nlisten = \"127.0.0.1:{}\"\n\
             [channel.raw]\nstart = [0x02]\nend = [0x03]\n",
            link.display(),
            free_port()
        ),
        true,
    );
    let mut pty = PtyWire::create(Some(&link)).unwrap();
    let mut agent = AgentProcess::start(&cfg);
    pty.wait_open(T).unwrap();
    broker.wait_log(0, &["e2e", "labagent/e2e/chem/orders"], T);

    let text = "H|\\^&|||LIS\nP|1||PID-7\nO|1|S-7||^^^GLU\\^^^NA|R\nL|1|N\n";
    let order = serde_json::json!({"id": "ord-77", "text": text});
    sub.publish(
        "labagent/e2e/chem/orders",
        serde_json::to_vec(&order).unwrap().as_slice(),
    );
    let mut inst = AstmInstrument::new(Some(115_200));
    let n = inst
        .receive(&mut pty, 1, Instant::now() + T)
        .expect("instrument side");
    assert_eq!(n, 1, "one order received; log:\n{}", agent.log());
    let want: Vec<u8> = text.replace('\n', "\r").into_bytes();
    assert_eq!(
        String::from_utf8_lossy(&inst.received.messages[0]),
        String::from_utf8_lossy(&want),
        "the order's records, CR-terminated"
    );
    let got = sub.wait_for(T, "the order status", |m| {
        m.iter().any(|r| r.topic.ends_with("/orders/status"))
    });
    let r = got
        .iter()
        .find(|r| r.topic == "labagent/e2e/chem/orders/status")
        .unwrap()
        .json();
    assert_eq!(r["id"], "ord-77");
    assert_eq!(r["state"], "delivered", "{r}");

    // The same id again is not sent twice.
    let mark = agent.mark();
    sub.publish(
        "labagent/e2e/chem/orders",
        serde_json::to_vec(&order).unwrap().as_slice(),
    );
    agent.wait_line(mark, &["order seen before"], T);

    // A raw channel has no way to send an order: reported failed at once, not kept.
    broker.wait_log(0, &["e2e", "labagent/e2e/meter/orders"], T);
    let raw = serde_json::json!({"id": "ord-78", "text": "anything"});
    sub.publish(
        "labagent/e2e/meter/orders",
        serde_json::to_vec(&raw).unwrap().as_slice(),
    );
    let got = sub.wait_for(T, "the raw channel's order status", |m| {
        m.iter()
            .any(|r| r.topic == "labagent/e2e/meter/orders/status")
    });
    let r = got
        .iter()
        .find(|r| r.topic == "labagent/e2e/meter/orders/status")
        .unwrap()
        .json();
    assert_eq!(
        (&r["id"], &r["state"]),
        (&"ord-78".into(), &"failed".into()),
        "{r}"
    );
    assert!(r["detail"].as_str().unwrap().contains("raw"), "{r}");
    let st = agent.terminate(T);
    assert!(st.success(), "exit after SIGTERM: {st:?}\n{}", agent.log());
}
