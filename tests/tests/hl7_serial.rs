//! HL7 over a serial line, end to end: the real `labagent run` with an HL7 channel on a
//! pty (behind a by-id style symlink), the simulator's MLLP sender on the master, a
//! loopback HTTP upstream. Every message is acknowledged after it is stored and arrives
//! upstream once, the latin-1 sample as correct UTF-8; a message the sender retransmits
//! (same bytes) is acknowledged again and uploaded once.

use std::time::Duration;

use labagent::simulate::wire::PtyWire;
use labagent::simulate::{hl7_messages, send_hl7, Pacer, HL7_SAMPLES};
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(20);

#[test]
fn hl7_over_a_pty_is_acknowledged_and_uploaded_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let link = dir.path().join("usb-Hematology_E2E-if00-port0");
    let cfg = config::write(
        dir.path(),
        "e2e",
        &up.url("/ingest"),
        "",
        &config::serial_channel("hema", "hl7", &link, 115_200),
    );

    let mut pty = PtyWire::create(Some(&link)).unwrap();
    let mut agent = AgentProcess::start(&cfg);
    pty.wait_open(T).unwrap();

    let mut messages: Vec<Vec<u8>> = HL7_SAMPLES
        .iter()
        .flat_map(|(_, b)| hl7_messages(b))
        .collect();
    assert_eq!(messages.len(), 2);
    // The first sample asks for no accept ACK (MSH-15 NE); the simulator waits for one.
    messages[0] = String::from_utf8(messages[0].clone())
        .unwrap()
        .replace("|NE|NE|", "|AL|NE|")
        .into_bytes();
    // A retransmission: the same bytes again.
    messages.push(messages[1].clone());
    let mut pacer = Pacer::new(Some(115_200));
    let sent = send_hl7(&mut pty, &mut pacer, &messages, T, |_| {}).unwrap();
    let codes: Vec<&str> = sent.iter().map(|s| s.detail.as_str()).collect();
    assert_eq!(codes, ["CA", "CA", "CA"], "{sent:?}");

    // A last new message: the uplink sends in order, so once it is there nothing else is
    // still coming.
    let last = b"MSH|^~\\&|E2E|LAB|LIS|HOSP|20261130||ORU^R01|SER-LAST|P|2.5\rOBX|1|NM|X||1\r";
    let sent = send_hl7(&mut pty, &mut pacer, &[last.to_vec()], T, |_| {}).unwrap();
    assert_eq!(sent[0].detail, "AA");
    up.wait_for(T, "the last message", |r| {
        r.iter()
            .any(|q| q.body.windows(8).any(|w| w == b"SER-LAST"))
    });
    let bodies: Vec<String> = up
        .accepted()
        .into_iter()
        .map(|r| String::from_utf8(r.body).expect("UTF-8 upstream"))
        .collect();
    assert_eq!(
        bodies.len(),
        3,
        "the retransmission is uploaded once: {bodies:?}"
    );
    assert!(
        bodies[1].contains("M\u{fc}ller^J\u{fc}rgen"),
        "{}",
        bodies[1]
    );
    assert!(agent.terminate(T).success());
}
