//! `encoding = "auto"` end to end: an HL7 message that declares `8859/1` in MSH-18 but is
//! UTF-8 (the Roche cITm's `·`, `roche_citm_2.hl7`: the hal's copy of the shared corpus
//! file, PID-5 replaced) arrives upstream as the same characters, not as mojibake (`Â·`);
//! the store keeps the bytes as they came.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use labagent_tests::config::{self, free_port};
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(30);

/// Modelled on the fixture, acknowledged (MSH-15 empty).
const CITM: &[u8] = b"MSH|^~\\&|cobas8000|LAB|Host||20020607||ORU^R01|77|P|2.3|||||\
|8859/1\rNTE|1|L|1st\xc2\xb7comment\xc2\xb7on\xc2\xb7patient\r";

fn fixture() -> Vec<u8> {
    std::fs::read(labagent_tests::repo_path(
        "hal/tests/fixtures/hl7/roche_citm_2.hl7",
    ))
    .expect("the hal's copy of roche_citm_2.hl7")
}

/// One MLLP block, and the ACK's MSA-1 (`None`: the message asks for no acknowledgement,
/// MSH-15 `NE`, as the fixture does).
fn send_mllp(port: u16, msg: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut block = vec![0x0b];
    block.extend_from_slice(msg);
    block.extend_from_slice(b"\x1c\r");
    s.write_all(&block).unwrap();
    if msg.split(|b| *b == b'|').nth(14) == Some(b"NE") {
        return None;
    }
    let mut ack = Vec::new();
    let mut b = [0u8; 1];
    while !ack.ends_with(b"\x1c\r") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "connection closed before the ACK"
        );
        ack.push(b[0]);
    }
    let text = String::from_utf8_lossy(&ack).into_owned();
    Some(
        text.split('\r')
            .find(|seg| seg.starts_with("MSA"))
            .and_then(|seg| seg.split('|').nth(1))
            .unwrap_or("")
            .to_string(),
    )
}

#[test]
fn utf8_behind_a_latin1_declaration_arrives_as_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let port = free_port();
    let cfg = config::write(
        dir.path(),
        "enc",
        &up.url("/ingest"),
        "",
        &config::listen_channel("citm", "hl7", port),
    );
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);

    let messages = [CITM.to_vec(), fixture()];
    assert_eq!(send_mllp(port, &messages[0]).as_deref(), Some("AA"));
    assert_eq!(
        send_mllp(port, &messages[1]),
        None,
        "the fixture asks for no ACK (MSH-15 NE)"
    );
    up.wait_for(T, "every message upstream", |r| r.len() == messages.len());
    let mut got = up.accepted();
    got.sort_by_key(|r| r.body.len());
    for (sent, got) in messages.iter().zip(got) {
        let body = String::from_utf8(got.body.clone()).expect("UTF-8 upstream");
        assert!(body.contains('·'), "{body}");
        assert!(!body.contains("Â·"), "mojibake: {body}");
        // Nothing else changed: the body is the message's own (UTF-8) text.
        assert_eq!(body.as_bytes(), &sent[..]);
    }
    let st = agent.terminate(T);
    assert!(st.success(), "{}", agent.log());
}
