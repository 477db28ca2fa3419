//! End to end with a real external HL7 client: python-hl7's `mllp_send --loose` (PyPI
//! `hl7`, installed by tests/run.sh) sends sample files to the real `labagent run` with an
//! HL7 `listen` channel; a loopback HTTP upstream records what arrives. Every message
//! arrives upstream exactly once, as UTF-8 text (a latin-1 message included); sending the
//! same files again is acknowledged but uploads nothing new.
//!
//! `mllp_send` waits for a reply after each message, so messages that ask for no accept
//! ACK (MSH-15 `NE`, or `ER` on success) would block it: our copies of those ask for `AL`
//! (the driver's no-ACK cases are covered in `agent/tests/hl7_channel.rs`). `--loose` splits
//! on `MSH|^~\&|`, so only messages with default separators can go this way.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use labagent::text::decode;
use labagent_tests::config::{self, free_port};
use labagent_tests::process::AgentProcess;
use labagent_tests::repo_path;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(30);

fn write_config(dir: &Path, up: &Upstream, port: u16) -> std::path::PathBuf {
    config::write(
        dir,
        "e2e",
        &up.url("/ingest"),
        "",
        &config::listen_channel("hema", "hl7", port),
    )
}

/// The messages `mllp_send --loose` makes of a file (its `read_loose`): LF and CR LF
/// become CR, split before each `MSH|^~\&|`, surrounding CR/LF/space stripped.
fn loose(data: &[u8]) -> Vec<Vec<u8>> {
    let mut d = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            0x0b | 0x1c => {}
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                d.push(b'\r');
                i += 1;
            }
            b'\n' => d.push(b'\r'),
            b => d.push(b),
        }
        i += 1;
    }
    let start: &[u8] = b"MSH|^~\\&|";
    let mut out = Vec::new();
    let mut at: Vec<usize> = (0..d.len())
        .filter(|&i| d[i..].starts_with(start))
        .collect();
    at.push(d.len());
    for w in at.windows(2) {
        let m = &d[w[0]..w[1]];
        let end = m
            .iter()
            .rposition(|b| !matches!(b, b'\r' | b'\n' | b' '))
            .map_or(0, |p| p + 1);
        out.push(m[..end].to_vec());
    }
    out
}

/// Runs python-hl7's `mllp_send --loose -f file -p port 127.0.0.1`; returns its stdout
/// (the ACKs it received). It waits for a reply to every message: if one never comes it
/// is killed (by its pid) after `T` and the test fails.
fn mllp_send(file: &Path, port: u16) -> String {
    let child = Command::new("python3")
        .args([
            "-c",
            "import sys; from hl7.client import mllp_send; sys.argv[0] = 'mllp_send'; mllp_send()",
        ])
        .args(["--loose", "-f"])
        .arg(file)
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with the hl7 package (tests/run.sh installs it)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(T) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
            }
            panic!("mllp_send got no reply within {T:?} (an ACK missing?)");
        }
    };
    assert!(
        out.status.success(),
        "mllp_send failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(repo_path(rel)).unwrap()
}

fn replace(b: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn mllp_send_files_arrive_upstream_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let port = free_port();
    let cfg = write_config(dir.path(), &up, port);
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);

    // File 1: the simulator's samples (one UTF-8 with MSH-15 NE → AL, one latin-1).
    let samples = [
        replace(
            &read("agent/src/simulate/samples/oru_r01.hl7"),
            b"|NE|NE|",
            b"|AL|NE|",
        ),
        read("agent/src/simulate/samples/oru_r01_note.hl7"),
    ]
    .join(&b"\n"[..]);
    // File 2: fixtures (licence-clean copies in hal/tests/fixtures), LF-separated as a
    // user's export would be; two Mindray-style messages reuse MSH-10 "1".
    let mut fx = Vec::new();
    for f in [
        "hl7std_ghh_lab_oru_1.hl7",
        "siemens_clinitek_1.hl7",
        "siemens_clinitek_2_qc.hl7",
        "swisslab_orm_1.hl7",
        "erba_elite580_1.hl7",
        "hl7apy_oml_o33_1.hl7",
        "own_mindray_style_oru.hl7",
        "own_mindray_style_qc.hl7",
        "roche_citm_1.hl7",
    ] {
        let b = read(&format!("hal/tests/fixtures/hl7/{f}"));
        fx.push(replace(&b, b"|NE|NE|", b"|AL|NE|"));
    }
    let fixtures = fx.join(&b"\n"[..]);
    let f1 = dir.path().join("samples.hl7");
    let f2 = dir.path().join("fixtures.hl7");
    std::fs::write(&f1, &samples).unwrap();
    std::fs::write(&f2, &fixtures).unwrap();

    let mut want: Vec<String> = Vec::new();
    for m in loose(&samples).into_iter().chain(loose(&fixtures)) {
        // The sample that declares 8859/1 is latin-1 on the wire.
        let label = if m.windows(6).any(|w| w == b"8859/1") {
            "iso-8859-1"
        } else {
            "utf-8"
        };
        want.push(decode(&m, label));
    }
    assert_eq!(want.len(), 11);
    assert!(want.iter().any(|t| t.contains("M\u{fc}ller^J\u{fc}rgen")));

    let acks = mllp_send(&f1, port) + &mllp_send(&f2, port);
    let positive = acks.matches("MSA|AA|").count() + acks.matches("MSA|CA|").count();
    assert_eq!(
        positive,
        want.len(),
        "one positive ACK per message:\n{acks}"
    );
    up.wait_for(T, "every message", |r| r.len() >= want.len());

    // Again: acknowledged, stored once. A new message after them proves no duplicate was
    // queued (the uplink sends a channel's messages in order).
    let again = mllp_send(&f2, port);
    assert_eq!(again.matches("MSA|").count(), 9, "{again}");
    let last = b"MSH|^~\\&|E2E|LAB|LIS|HOSP|20261130||ORU^R01|LAST-1|P|2.5\rOBX|1|NM|X||1\r";
    let f3 = dir.path().join("last.hl7");
    std::fs::write(&f3, last).unwrap();
    mllp_send(&f3, port);
    want.push(String::from_utf8(last[..last.len() - 1].to_vec()).unwrap());
    up.wait_for(T, "the last message", |r| {
        r.iter().any(|q| q.body.windows(6).any(|w| w == b"LAST-1"))
    });

    let got = up.accepted();
    let mut bodies: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *bodies
            .entry(String::from_utf8(r.body.clone()).expect("UTF-8 upstream"))
            .or_default() += 1;
    }
    assert_eq!(got.len(), want.len(), "every message once, nothing more");
    for w in &want {
        assert_eq!(
            bodies.get(w),
            Some(&1),
            "missing or repeated upstream: {w:?}"
        );
    }
    let mut keys: Vec<&str> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), want.len());
    assert!(agent.terminate(T).success());
}
