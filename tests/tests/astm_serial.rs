//! End to end over a virtual serial line: the real `labagent run` opens a pty slave through
//! a by-id style symlink, an E1381 instrument (the hal sender, paced at 115200 baud) plays
//! on the master, and an HTTP upstream on loopback records what arrives. The line is
//! unplugged in the middle of a message (pty closed, symlink removed) and replugged (a new
//! pty behind the same symlink): every message the instrument saw acknowledged arrives
//! upstream exactly once, the cut message is not forwarded, and SIGTERM stops the agent
//! with exit 0.
//!
//! A pty has no UART: baud, parity and stop bits cannot be tested here (see
//! `agent/tests/transport_serial.rs`, which checks they reach termios).

use std::path::Path;
use std::time::Duration;

use labagent::simulate::wire::{PtyWire, Wire};
use labagent::simulate::AstmInstrument;
use labagent_hal::astm::frame::encode_frame;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(20);

/// A message of `results` R records (a few hundred bytes each: several frames).
fn message(sample: &str, results: usize) -> Vec<u8> {
    let mut m = format!(
        "H|\\^&|||E2E-Analyzer^1.0|||||LIS||P|1|20261128120000\rP|1||PID-{sample}\rO|1|{sample}||^^^PANEL|R\r"
    );
    for i in 0..results {
        m.push_str(&format!(
            "R|{}|^^^TEST{i}|{}.{i}|mmol/L|1 to 9|N||F||||20261128120000|note {}\r",
            i + 1,
            i + 3,
            "x".repeat(120)
        ));
    }
    m.push_str("L|1|N\r");
    m.into_bytes()
}

pub fn write_config(dir: &Path, upstream: &Upstream, channel: &str) -> std::path::PathBuf {
    labagent_tests::config::write(dir, "e2e", &upstream.url("/ingest"), "", channel)
}

fn read_byte(w: &mut PtyWire) -> u8 {
    let mut b = [0u8; 1];
    let n = w.read_timeout(&mut b, T).unwrap();
    assert_eq!(n, 1, "no reply from the agent");
    b[0]
}

#[test]
fn astm_over_a_pty_survives_unplug_and_replug() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let link = dir.path().join("usb-Analyzer_E2E-if00-port0");
    let cfg = write_config(
        dir.path(),
        &up,
        &format!(
            "[[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nserial = \"{}\"\nbaud = 115200\n",
            link.display()
        ),
    );

    let mut pty = PtyWire::create(Some(&link)).unwrap();
    let mut agent = AgentProcess::start(&cfg);
    pty.wait_open(T).unwrap();

    let first: Vec<Vec<u8>> = (1..=3).map(|i| message(&format!("A{i}"), i * 2)).collect();
    let mut inst = AstmInstrument::new(Some(115_200));
    let sent = inst.send_all(&mut pty, &first).unwrap();
    assert!(sent.iter().all(|s| s.delivered), "{sent:?}");
    up.wait_for(T, "the first 3 messages", |r| r.len() >= 3);

    // Unplug mid-message: ENQ, one ETB frame (ACKed: it is durable), then the line dies.
    let cut = message("CUT", 3);
    assert_eq!(
        pty.write_all(&[0x05]).map(|_| read_byte(&mut pty)).unwrap(),
        0x06
    );
    let mut frame = vec![0u8; 300];
    let n = encode_frame(1, &cut[..200], false, &mut frame).unwrap();
    pty.write_all(&frame[..n]).unwrap();
    assert_eq!(
        read_byte(&mut pty),
        0x06,
        "frame 1 must be ACKed once durable"
    );
    let mark = agent.mark();
    drop(pty);
    std::fs::remove_file(&link).unwrap();
    agent.wait_line(mark, &["device not present"], T);

    // Replug: a new pty behind the same name.
    let mut pty = PtyWire::create(Some(&link)).unwrap();
    pty.wait_open(T).unwrap();
    let second: Vec<Vec<u8>> = (4..=6).map(|i| message(&format!("B{i}"), 1)).collect();
    let mut inst = AstmInstrument::new(Some(115_200));
    let sent = inst.send_all(&mut pty, &second).unwrap();
    assert!(sent.iter().all(|s| s.delivered), "{sent:?}");
    up.wait_for(T, "all 6 messages", |r| r.len() >= 6);

    let got = up.accepted();
    let bodies: Vec<&[u8]> = got.iter().map(|r| r.body.as_slice()).collect();
    for m in first.iter().chain(&second) {
        let n = bodies.iter().filter(|b| **b == m.as_slice()).count();
        assert_eq!(n, 1, "each acknowledged message arrives once");
    }
    assert!(
        !bodies.iter().any(|b| b.windows(7).any(|w| w == b"PID-CUT")),
        "the cut message is kept as incomplete, not forwarded"
    );
    let mut ids: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("Idempotency-Key"))
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 6, "one id per message");
    assert!(
        agent.log().contains("kept as incomplete"),
        "{}",
        agent.log()
    );

    let st = agent.terminate(T);
    assert!(st.success(), "exit after SIGTERM: {st:?}\n{}", agent.log());
}
