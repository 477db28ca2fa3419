//! The bare-metal firmware (cross/firmware: the hal's ASTM link on a Cortex-M3, no
//! allocator) under qemu-system-arm: `labagent simulate` plays the instrument on UART0,
//! and every message must come out of UART1 exactly once, as one line of hex.
//!
//! `cross/qemu-firmware PORT0 PORT1` builds the firmware (release, `opt-level = "z"`; the
//! first test to get cargo's lock builds it, the other finds it built) and runs QEMU, which
//! says on stderr when it waits for the UART1 reader: that line is the event the test waits
//! for, then it connects to UART1 and QEMU starts the board.
//!
//! The fixtures are every `../shared/fixtures/astm/*.astm` (63 messages from real
//! instruments and the CLSI examples, 134 KB, the largest 32 KB), sent twice: once with a
//! record per frame (records over 240 bytes split across ETB frames), once packed (several
//! records per frame, records split anywhere). Each run corrupts one frame (it must be
//! NAKed, then arrive once) and duplicates another (ACKed, dropped: the message arrives
//! once). A second test cuts a message off and waits for the firmware's 30 s receive
//! timer to end its line with `-\n`.
//!
//! QEMU is ended by its pid when the guard drops, on failure too. A missing
//! `qemu-system-arm` or thumbv7m target fails the test: tests/run.sh installs both.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use labagent_hal::astm::frame::encode_frame;
use labagent_hal::astm::{ACK, ENQ, EOT};
use labagent_tests::config::free_port;
use labagent_tests::process::AgentProcess;

/// The first build of the firmware (its dependencies included) on a busy 2-core machine.
const BUILD: Duration = Duration::from_secs(900);
/// One simulate run of all fixtures (about 7 s when the machine is idle).
const RUN: Duration = Duration::from_secs(300);

/// QEMU running the firmware, and what came out of UART1 so far.
struct Board {
    qemu: AgentProcess,
    port0: u16,
    uart1: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Board {
    fn start() -> Board {
        let ok = Command::new("qemu-system-arm")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "qemu-system-arm is missing: apt-get install qemu-system-arm (tests/run.sh does this)"
        );
        let port0 = free_port();
        let port1 = std::iter::repeat_with(free_port)
            .find(|&p| p != port0)
            .unwrap();
        let mut cmd = Command::new(labagent_tests::repo_path("cross/qemu-firmware"));
        cmd.arg(port0.to_string())
            .arg(port1.to_string())
            .stdout(Stdio::null());
        // The script execs QEMU: the child's pid is QEMU's.
        let qemu = AgentProcess::spawn(cmd);
        qemu.wait_line(
            0,
            &["QEMU waiting for connection", &format!(":{port1}")],
            BUILD,
        );
        let mut out = TcpStream::connect(("127.0.0.1", port1)).expect("connect to UART1");
        let uart1: Arc<(Mutex<Vec<u8>>, Condvar)> = Arc::default();
        let u = uart1.clone();
        // Read all along: QEMU blocks the board's UART1 when the socket is full.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                u.0.lock().unwrap().extend_from_slice(&buf[..n]);
                u.1.notify_all();
            }
        });
        Board { qemu, port0, uart1 }
    }

    /// Waits until UART1 has carried `n` lines; returns everything so far.
    fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.uart1;
        let mut got = m.lock().unwrap();
        loop {
            if got.iter().filter(|&&b| b == b'\n').count() >= n {
                return got.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "UART1 did not carry {n} lines within {timeout:?}; it carried:\n{}\nQEMU's stderr:\n{}",
                String::from_utf8_lossy(&got),
                self.qemu.log()
            );
            got = cv.wait_timeout(got, left).unwrap().0;
        }
    }

    fn uart1(&self) -> Vec<u8> {
        self.uart1.0.lock().unwrap().clone()
    }
}

fn fixtures() -> Vec<PathBuf> {
    let dir = [
        labagent_tests::repo_path("../shared/fixtures/astm"),
        PathBuf::from("/work/shared/fixtures/astm"),
    ]
    .into_iter()
    .find(|d| d.is_dir())
    .expect("../shared/fixtures/astm beside the repository");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "astm"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "fixtures missing in {}", dir.display());
    files
}

/// UART1's output as messages: each line decoded from hex; `Err` for a line that ends `-`.
fn decode(out: &[u8]) -> Vec<Result<Vec<u8>, Vec<u8>>> {
    let text = std::str::from_utf8(out).expect("UART1 carries ASCII");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial line: {text}"
    );
    text.lines()
        .map(|l| {
            let (hex, abandoned) = match l.strip_suffix('-') {
                Some(h) => (h, true),
                None => (l, false),
            };
            assert!(
                !hex.is_empty() && hex.len() % 2 == 0,
                "not a line of hex: {l:?}"
            );
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "not lowercase hex: {l:?}"
            );
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            if abandoned {
                Err(bytes)
            } else {
                Ok(bytes)
            }
        })
        .collect()
}

/// Runs `labagent simulate` against UART0 and returns its stdout (it must exit 0).
fn simulate(port0: u16, extra: &[&str], files: &[PathBuf]) -> String {
    let mut cmd = labagent_tests::labagent();
    cmd.args(["simulate", "--protocol", "astm", "--connect"])
        .arg(format!("127.0.0.1:{port0}"))
        .args(["--no-pacing", "--enq-timeout", "2"])
        .args(extra)
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start labagent simulate");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN) {
        Ok(out) => out.expect("labagent simulate"),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
            }
            panic!("labagent simulate did not finish within {RUN:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "simulate {extra:?} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn every_fixture_arrives_once_through_the_firmware_with_a_corrupt_and_a_duplicate_frame() {
    let files = fixtures();
    let mut messages = Vec::new();
    for f in &files {
        messages.extend(labagent::simulate::astm_messages(
            &std::fs::read(f).unwrap(),
        ));
    }
    // The conditions the brief asks for are really in the data.
    let longest_record = messages
        .iter()
        .flat_map(|m| m.split(|&b| b == b'\r'))
        .map(<[u8]>::len)
        .max()
        .unwrap();
    assert!(
        longest_record > 240,
        "a record must span ETB frames in the first run"
    );
    assert!(messages.iter().any(|m| m.len() >= 6 * 1024));

    let board = Board::start();
    let runs: [(&[&str], u64, u64); 2] = [
        (&["--corrupt-frame", "2", "--duplicate-frame", "7"], 2, 7),
        (
            &[
                "--pack-records",
                "--corrupt-frame",
                "40",
                "--duplicate-frame",
                "3",
            ],
            40,
            3,
        ),
    ];
    let mut expected = Vec::new();
    for (extra, corrupt, dup) in runs {
        let out = simulate(board.port0, extra, &files);
        let n = messages.len();
        assert!(
            out.contains(&format!("{n} of {n} messages acknowledged")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "frame {corrupt} sent with a corrupted byte: answered NAK"
            )),
            "the corrupt frame is NAKed:\n{out}"
        );
        assert!(
            out.contains(&format!(
                "frame {dup} sent twice: the copy was answered ACK"
            )),
            "the copy is ACKed:\n{out}"
        );
        expected.extend(messages.iter().cloned().map(Ok));
        // Every frame was ACKed only after its text was on UART1, so the lines are there.
        let got = decode(&board.wait_lines(expected.len(), RUN));
        if got != expected {
            let first = got.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "UART1 carried {} messages, {} expected; first difference at {first:?}",
                got.len(),
                expected.len()
            );
        }
    }
    // Nothing more came (no banner, no blank line, no second copy).
    assert_eq!(decode(&board.uart1()).len(), expected.len());
}

fn frame(n: u8, text: &[u8], last: bool) -> Vec<u8> {
    let mut b = vec![0u8; text.len() + 7];
    let l = encode_frame(n, text, last, &mut b).unwrap();
    b.truncate(l);
    b
}

/// One reply byte from the firmware.
fn reply(line: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    line.read_exact(&mut b).expect("a reply from the firmware");
    b[0]
}

#[test]
fn a_message_cut_off_by_the_receive_timer_ends_its_line_with_a_dash() {
    let board = Board::start();
    let mut line = TcpStream::connect(("127.0.0.1", board.port0)).expect("connect to UART0");
    line.set_read_timeout(Some(RUN)).unwrap();
    let head = b"H|\\^&|||FW-TEST\rP|1||PID-T\r";
    line.write_all(&[ENQ]).unwrap();
    assert_eq!(reply(&mut line), ACK, "ENQ accepted");
    line.write_all(&frame(1, head, false)).unwrap();
    assert_eq!(reply(&mut line), ACK, "first frame accepted");
    let cut = Instant::now();
    // The instrument goes quiet: no next frame, no EOT.
    let out = decode(&board.wait_lines(1, Duration::from_secs(120)));
    let waited = cut.elapsed();
    assert_eq!(out, [Err(head.to_vec())], "the committed text, then '-'");
    assert!(
        waited >= Duration::from_secs(25) && waited <= Duration::from_secs(90),
        "the receive timer is 30 s of SysTick time; the line came after {waited:?}"
    );

    // The link is neutral again: the next transmission goes through.
    let m = b"H|\\^&\rR|1|^^^GLU|5.1|mmol/L\rL|1|N\r";
    line.write_all(&[ENQ]).unwrap();
    assert_eq!(reply(&mut line), ACK);
    line.write_all(&frame(1, m, true)).unwrap();
    assert_eq!(reply(&mut line), ACK);
    line.write_all(&[EOT]).unwrap();
    let out = decode(&board.wait_lines(2, RUN));
    assert_eq!(out, [Err(head.to_vec()), Ok(m.to_vec())]);
}
