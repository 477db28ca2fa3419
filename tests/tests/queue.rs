//! `labagent queue` against the real binary: through the running agent's status socket
//! (sled allows one process per database), and directly on the store once it stopped.

use std::net::TcpStream;
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(30);

fn queue(cfg: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = labagent_tests::labagent()
        .arg("--config")
        .arg(cfg)
        .arg("queue")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_show_retry_export_live_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    // The first message is refused as malformed (400): parked as rejected.
    up.script(400, 1);
    let port = config::free_port();
    let cfg = config::write(
        dir.path(),
        "q",
        &up.url("/ingest"),
        "",
        &config::listen_channel("chem", "astm", port),
    );
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    let msgs: Vec<Vec<u8>> = (0..2)
        .map(|i| format!("H|\\^&|||Q^1\rP|1||S{i}\rR|1|^^^K|4.{i}|mmol/L\rL|1|N\r").into_bytes())
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sent = AstmInstrument::new(None).send_all(&mut s, &msgs).unwrap();
    assert!(sent.iter().all(|x| x.delivered));
    up.wait_for(T, "one accepted", |r| {
        r.iter().filter(|x| x.status == 200).count() >= 1
    });
    agent.wait_line(0, &["rejected"], T);
    // The upstream has answered 200; the agent marks the message delivered once it has
    // read that answer.
    agent.wait_line(0, &["delivered and confirmed"], T);

    // Live, through the socket.
    let (ok, out, err) = queue(&cfg, &["list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("chem") && lines[0].contains("rejected"),
        "{out}"
    );
    assert!(lines[0].contains("reason:"), "{out}");
    assert!(lines[1].contains("delivered"), "{out}");
    let id = lines[0].split_whitespace().next().unwrap().to_string();

    let (ok, out, _) = queue(&cfg, &["show", &id]);
    assert!(ok);
    assert!(
        out.contains("---\nH|\\^&|||Q^1<CR>\nP|1||S0<CR>\n"),
        "{out}"
    );

    let (ok, out, _) = queue(&cfg, &["list", "--state", "rejected"]);
    assert!(ok && out.lines().count() == 1, "{out}");

    // Retry: the upstream accepts it this time.
    let (ok, out, err) = queue(&cfg, &["retry", "--rejected"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 rejected message(s) queued"), "{out}");
    up.wait_for(T, "both accepted", |r| {
        r.iter().filter(|x| x.status == 200).count() >= 2
    });

    let (ok, _, err) = queue(&cfg, &["show", "00000000-000000000999"]);
    assert!(!ok && err.contains("no message"), "{err}");

    let st = agent.terminate(T);
    assert!(st.success());

    // Stopped: the CLI opens the store itself.
    let (ok, out, err) = queue(&cfg, &["export"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let (ok, out, _) = queue(&cfg, &["purge", "--delivered"]);
    assert!(
        ok && out.contains("2 delivered message(s) removed"),
        "{out}"
    );
    let (ok, out, _) = queue(&cfg, &["list"]);
    assert!(ok && out.contains("(no messages)"), "{out}");
}
