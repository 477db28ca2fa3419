//! Fleet management over MQTT, the real binary against a real mosquitto: presence
//! (retained `online`, the Will's `offline` on SIGKILL, `offline` on a clean stop), each
//! command's result, a repeated id answered without running again, refusals (not allowed,
//! another agent, expired, unsigned, tampered), and a pushed config: one that adds a
//! channel (uploads go on), one with a typo (refused with line and column), one whose
//! broker cannot be reached (rolled back), one interrupted by SIGKILL (restored at start).

use std::path::Path;
use std::time::Duration;

use labagent_tests::fleet::{command, in_secs, mqtt_config_text, public_key_file, signed};
use labagent_tests::mosquitto::{free_port, Broker, Received, TestClient};
use labagent_tests::process::AgentProcess;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, port: u16, remote: &str, channels: &str) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, mqtt_config_text(dir, port, remote, channels)).unwrap();
    cfg
}

fn listen(name: &str, port: u16) -> String {
    format!("[[channel]]\nname = \"{name}\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:{port}\"\n")
}

fn result_for(msgs: &[Received], id: &str) -> Option<Value> {
    let topic = format!("labagent/e2e/commands/{id}/result");
    msgs.iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(Received::json)
}

/// Publishes `cmd` and waits for its result.
fn call(sub: &TestClient, cmd: &Value) -> Value {
    let id = cmd["id"].as_str().unwrap().to_string();
    sub.publish("labagent/e2e/commands", cmd.to_string().as_bytes());
    let msgs = sub.wait_for(T, &format!("result of {id}"), |m| {
        result_for(m, &id).is_some()
    });
    result_for(&msgs, &id).unwrap()
}

fn results_count(sub: &TestClient, id: &str) -> usize {
    let topic = format!("labagent/e2e/commands/{id}/result");
    sub.messages().iter().filter(|m| m.topic == topic).count()
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

fn presence(msgs: &[Received]) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m.topic == "labagent/e2e/status")
        .map(Received::json)
        .collect()
}

#[test]
fn presence_commands_repeats_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "ops", None, "labagent/e2e/#");
    let cfg = write_config(
        dir.path(),
        broker.port(),
        "enabled = true\nallow = [\"status\", \"ping\", \"logs\", \"queue\", \"reload\"]\nstatus_every = \"1s\"",
        &listen("xn", free_port()),
    );
    let mut agent = AgentProcess::start(&cfg);
    let msgs = sub.wait_for(T, "online", |m| {
        presence(m).iter().any(|p| p["state"] == "online")
    });
    let online = presence(&msgs)
        .into_iter()
        .find(|p| p["state"] == "online")
        .unwrap();
    assert_eq!(online["agent"], "e2e", "{online}");
    assert!(online["channels"].is_array(), "the status JSON: {online}");
    // Retained: a client that arrives later gets it at once.
    let late = TestClient::connect(broker.port(), "late", None, "labagent/e2e/status");
    late.wait_for(T, "retained online", |m| {
        presence(m).iter().any(|p| p["state"] == "online")
    });

    let r = call(&sub, &command("p1", "e2e", "ping", json!({})));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["pong"], true, "{r}");
    assert!(r["at"].as_str().unwrap().ends_with('Z'), "{r}");

    let r = call(&sub, &command("s1", "e2e", "status", json!({})));
    assert_eq!(r["result"]["agent"], "e2e", "{r}");
    assert_eq!(r["result"]["channels"][0]["name"], "xn", "{r}");

    let r = call(&sub, &command("l1", "e2e", "logs", json!({"lines": 5})));
    let lines = r["result"]["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 5, "{r}");
    let all = call(&sub, &command("l2", "e2e", "logs", json!({"lines": 5000})));
    let all: Vec<&str> = all["result"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(all.len() <= 1000);
    assert!(
        all.iter().all(|l| !l.contains("DEBUG")),
        "the ring holds info and above only (RUST_LOG is debug here): {all:?}"
    );
    assert!(
        all.iter()
            .any(|l| l.contains("remote command") && l.contains("id=p1")),
        "{all:?}"
    );

    let r = call(&sub, &command("q1", "e2e", "queue", json!({"op": "list"})));
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["result"]["text"]
            .as_str()
            .unwrap()
            .contains("no messages"),
        "{r}"
    );
    let r = call(&sub, &command("q2", "e2e", "queue", json!({"op": "show"})));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("args.id"), "{r}");

    let r = call(&sub, &command("r1", "e2e", "reload", json!({})));
    assert_eq!(r["result"]["reloaded"], true, "{r}");

    // The same id again: answered from the stored result, not run again.
    let mark = agent.mark();
    sub.publish(
        "labagent/e2e/commands",
        command("p1", "e2e", "ping", json!({}))
            .to_string()
            .as_bytes(),
    );
    agent.wait_line(
        mark,
        &["remote command", "id=\"p1\"", "outcome=\"repeated\""],
        T,
    );
    sub.wait_for(T, "p1 answered twice", |m| {
        m.iter()
            .filter(|x| x.topic == "labagent/e2e/commands/p1/result")
            .count()
            >= 2
    });
    let ran = agent
        .log()
        .lines()
        .filter(|l| {
            l.contains("remote command") && l.contains("id=\"p1\"") && l.contains("outcome=\"ok\"")
        })
        .count();
    assert_eq!(ran, 1, "p1 ran once:\n{}", agent.log());

    // Refusals, each reported on its id's result topic.
    let cases = [
        (
            command("n1", "e2e", "config", json!({"text": ""})),
            "not allowed",
        ),
        (
            command("n2", "other-box", "ping", json!({})),
            "for agent \"other-box\"",
        ),
        (
            json!({"id": "n3", "agent": "e2e", "command": "ping", "args": {}, "not_after": in_secs(-60)}),
            "expired",
        ),
        (
            json!({"id": "n4", "agent": "e2e", "command": "ping", "args": {}, "not_after": in_secs(48 * 3600)}),
            "24 h",
        ),
        (
            json!({"id": "n5", "agent": "e2e", "command": "ping"}),
            "not_after",
        ),
        (command("n6", "e2e", "reboot", json!({})), "unknown command"),
    ];
    for (cmd, want) in cases {
        let r = call(&sub, &cmd);
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(want), "{want}: {r}");
    }
    // Without a usable id there is no topic to answer on: logged and counted only.
    let mark = agent.mark();
    sub.publish("labagent/e2e/commands", b"{not json");
    agent.wait_line(mark, &["remote command", "outcome=\"refused\""], T);

    // `labagent status` shows the last command and the file in force.
    let st = labagent_tests::run(
        labagent_tests::labagent()
            .arg("status")
            .arg("--config")
            .arg(&cfg),
    );
    assert!(st.stdout.contains("config in force: "), "{st:?}");
    assert!(st.stdout.contains("last: "), "{st:?}");

    // The presence follows the status (at most every status_every).
    sub.wait_for(T, "presence with the last command", |m| {
        presence(m)
            .iter()
            .any(|p| p["remote"]["last"]["outcome"] == "refused")
    });

    // SIGKILL: the socket closes, the broker publishes the Will at once.
    agent.kill();
    sub.wait_for(T, "the Will", |m| {
        presence(m).last().is_some_and(|p| p["state"] == "offline")
    });
    assert_eq!(results_count(&sub, "n1"), 1);
}

#[test]
fn a_clean_stop_says_offline_and_commands_must_be_signed_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "ops", None, "labagent/e2e/#");
    let key = public_key_file(dir.path());
    let mport = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        mqtt_config_text(
            dir.path(),
            broker.port(),
            &format!("enabled = true\nsigning_key = \"{}\"", key.display()),
            "",
        )
        .replace(
            "[uplink]\n",
            &format!("metrics = \"127.0.0.1:{mport}\"\n[uplink]\n"),
        ),
    )
    .unwrap();
    let mut agent = AgentProcess::start(&cfg);
    sub.wait_for(T, "online", |m| {
        presence(m).iter().any(|p| p["state"] == "online")
    });

    let r = call(&sub, &command("u1", "e2e", "ping", json!({})));
    assert!(r["error"].as_str().unwrap().contains("unsigned"), "{r}");

    let r = call(&sub, &signed(&command("s1", "e2e", "ping", json!({}))));
    assert_eq!(r["ok"], true, "{r}");

    let mut t = signed(&command("t1", "e2e", "ping", json!({})));
    t["command"] = json!("status");
    let r = call(&sub, &t);
    assert!(
        r["error"].as_str().unwrap().contains("bad signature"),
        "{r}"
    );

    let expired = signed(
        &json!({"id": "e1", "agent": "e2e", "command": "ping", "args": {},
                                 "not_after": in_secs(-5)}),
    );
    let r = call(&sub, &expired);
    assert!(r["error"].as_str().unwrap().contains("expired"), "{r}");

    // Signed for another box: refused here.
    let other = signed(&command("o1", "lab-7", "ping", json!({})));
    let r = call(&sub, &other);
    assert!(r["error"].as_str().unwrap().contains("for agent"), "{r}");

    // One counter per command and outcome; which config is in force.
    let metrics = scrape(mport);
    for want in [
        "labagent_remote_commands_total{command=\"ping\",outcome=\"ok\"} 1",
        "labagent_remote_commands_total{command=\"ping\",outcome=\"refused\"} 3",
        "labagent_remote_commands_total{command=\"status\",outcome=\"refused\"} 1",
        "labagent_remote_config_pushed 0",
        "labagent_remote_config_trial 0",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}");
    let msgs = sub.wait_for(T, "offline", |m| {
        presence(m).last().is_some_and(|p| p["state"] == "offline")
    });
    assert!(presence(&msgs).len() >= 2);
}

fn raw_listen(name: &str, port: u16) -> String {
    format!(
        "[[channel]]\nname = \"{name}\"\nprotocol = \"raw\"\nlisten = \"127.0.0.1:{port}\"\n\
         [channel.raw]\nstart = [0x02]\nend = [0x03]\n"
    )
}

/// Sends one raw message to a listen port (retrying the connect while it comes up is not
/// needed: the trial confirmed the port is bound).
fn send_raw(port: u16, text: &str) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("\x02{text}\x03").as_bytes()).unwrap();
}

fn uploaded(msgs: &[Received], channel: &str, text: &str) -> bool {
    msgs.iter()
        .any(|m| m.topic == format!("labagent/e2e/{channel}/messages") && m.json()["text"] == text)
}

const REMOTE: &str =
    "enabled = true\nallow = [\"status\", \"ping\", \"config\", \"reload\"]\nrollback_after = \"4s\"";

#[test]
fn a_pushed_config_that_works_a_typo_and_a_broker_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "ops", None, "labagent/e2e/#");
    let (p1, p2) = (free_port(), free_port());
    let cfg = write_config(dir.path(), broker.port(), REMOTE, &raw_listen("a", p1));
    let agent = AgentProcess::start(&cfg);
    sub.wait_for(T, "online", |m| {
        presence(m).iter().any(|p| p["state"] == "online")
    });
    send_raw(p1, "one");
    sub.wait_for(T, "upload on a", |m| uploaded(m, "a", "one"));
    let pushed = dir.path().join("state/remote/config.toml");

    // A typo: refused with line and column, nothing changes.
    let typo = mqtt_config_text(dir.path(), broker.port(), REMOTE, &raw_listen("a", p1))
        .replace("protocol = \"raw\"", "protocl = \"raw\"");
    let r = call(
        &sub,
        &command("c-typo", "e2e", "config", json!({"text": typo})),
    );
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains(":19:1:") && e.contains("protocl"),
        "line 19, column 1: {e}"
    );
    assert!(!pushed.exists());

    // A restart key changed: refused, naming the key.
    let moved = mqtt_config_text(dir.path(), broker.port(), REMOTE, &raw_listen("a", p1))
        .replace("[remote]\n", "[remote]\nstatus_every = \"5s\"\n");
    let r = call(
        &sub,
        &command("c-remote", "e2e", "config", json!({"text": moved})),
    );
    assert!(r["error"].as_str().unwrap().contains("[remote]"), "{r}");

    // A push that adds a channel: confirmed once both ports are bound and the uplink is up.
    let two = format!("{}{}", raw_listen("a", p1), raw_listen("b", p2));
    let text = mqtt_config_text(dir.path(), broker.port(), REMOTE, &two);
    let r = call(
        &sub,
        &command("c-add", "e2e", "config", json!({"text": text})),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["outcome"], "applied", "{r}");
    assert!(std::fs::read_to_string(&pushed)
        .unwrap()
        .starts_with("# labagent: pushed by remote command c-add"));
    send_raw(p2, "two");
    send_raw(p1, "three");
    sub.wait_for(T, "uploads on a and b", |m| {
        uploaded(m, "b", "two") && uploaded(m, "a", "three")
    });
    let st = labagent_tests::run(
        labagent_tests::labagent()
            .arg("status")
            .arg("--config")
            .arg(&cfg),
    );
    assert!(st.stdout.contains("pushed remotely"), "{st:?}");
    let check = labagent_tests::run(
        labagent_tests::labagent()
            .arg("check-config")
            .arg("--config")
            .arg(&cfg),
    );
    assert!(
        check.stderr.contains("a pushed config is in force"),
        "{check:?}"
    );

    // A broker that cannot be reached: rolled back within rollback_after, the previous
    // (pushed) config in force again, uploads go on.
    let dead = mqtt_config_text(dir.path(), free_port(), REMOTE, &two);
    let mark = agent.mark();
    let r = call(
        &sub,
        &command("c-dead", "e2e", "config", json!({"text": dead})),
    );
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with("rolled-back") && e.contains("uplink not connected"),
        "{e}"
    );
    agent.wait_line(mark, &["previous config back in force"], T);
    assert!(std::fs::read_to_string(&pushed)
        .unwrap()
        .starts_with("# labagent: pushed by remote command c-add"));
    assert!(!dir.path().join("state/remote/trial").exists());
    send_raw(p2, "four");
    sub.wait_for(T, "uploads after the rollback", |m| {
        uploaded(m, "b", "four")
    });

    // A typo in a device path: the port waits for a device that never comes (it was not
    // waiting before the push): rolled back.
    let serial = format!(
        "{two}[[channel]]\nname = \"c\"\nprotocol = \"astm\"\nserial = \"/dev/ttyLABAGENT-typo\"\n"
    );
    let text = mqtt_config_text(dir.path(), broker.port(), REMOTE, &serial);
    let r = call(
        &sub,
        &command("c-dev", "e2e", "config", json!({"text": text})),
    );
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with("rolled-back") && e.contains("channel c: port waiting for its device"),
        "{e}"
    );

    // `labagent remote reset`: the pushed files go, the running agent reloads the local
    // file (channel b goes away again).
    let mark = agent.mark();
    let out = labagent_tests::run(
        labagent_tests::labagent()
            .args(["remote", "reset", "--config"])
            .arg(&cfg),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("pushed by command c-add") && out.stdout.contains("reloading"),
        "{out:?}"
    );
    agent.wait_line(mark, &["channel removed", "channel=b"], T);
    assert!(!pushed.exists());
    let st = labagent_tests::run(
        labagent_tests::labagent()
            .arg("status")
            .arg("--config")
            .arg(&cfg),
    );
    assert!(!st.stdout.contains("pushed remotely"), "{st:?}");
    let check = labagent_tests::run(
        labagent_tests::labagent()
            .arg("check-config")
            .arg("--config")
            .arg(&cfg),
    );
    assert!(
        !check.stderr.contains("pushed config is in force"),
        "{check:?}"
    );
}

#[test]
fn sigkill_during_a_trial_restores_the_previous_config_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::plain(&dir.path().join("broker"), "");
    let sub = TestClient::connect(broker.port(), "ops", None, "labagent/e2e/#");
    let p1 = free_port();
    let remote = REMOTE.replace("\"4s\"", "\"10m\"");
    let cfg = write_config(dir.path(), broker.port(), &remote, &raw_listen("a", p1));
    let mut agent = AgentProcess::start(&cfg);
    sub.wait_for(T, "online", |m| {
        presence(m).iter().any(|p| p["state"] == "online")
    });
    let dead = mqtt_config_text(dir.path(), free_port(), &remote, &raw_listen("a", p1));
    let mark = agent.mark();
    sub.publish(
        "labagent/e2e/commands",
        command("c-kill", "e2e", "config", json!({"text": dead}))
            .to_string()
            .as_bytes(),
    );
    agent.wait_line(mark, &["pushed config in force, on trial"], T);
    assert!(dir.path().join("state/remote/trial").exists());
    agent.kill();

    let agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["previous config is restored"], T);
    let msgs = sub.wait_for(T, "the rolled-back result", |m| {
        result_for(m, "c-kill").is_some()
    });
    let r = result_for(&msgs, "c-kill").unwrap();
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("restarted during the trial"),
        "{r}"
    );
    assert!(!dir.path().join("state/remote/config.toml").exists());
    assert!(!dir.path().join("state/remote/trial").exists());
    // The same command again after the restart: answered from the stored result.
    let mark = agent.mark();
    sub.publish(
        "labagent/e2e/commands",
        command("c-kill", "e2e", "config", json!({"text": dead}))
            .to_string()
            .as_bytes(),
    );
    agent.wait_line(
        mark,
        &["remote command", "id=\"c-kill\"", "outcome=\"repeated\""],
        T,
    );
    assert!(
        !agent.log().contains("pushed config in force, on trial"),
        "not run again"
    );
    send_raw(p1, "after");
    sub.wait_for(T, "uploads after the restart", |m| {
        uploaded(m, "a", "after")
    });
}
