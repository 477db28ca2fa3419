//! The aarch64 (static musl) build of labagent, run under qemu-user: an instrument on the
//! host sends ASTM over a TCP listen channel, the emulated agent stores and acknowledges
//! each message and delivers it to the test upstream on loopback.
//!
//! tests/run.sh builds the binary first (`cargo build -p labagent --bin labagent --target
//! aarch64-unknown-linux-musl`, the dev profile: no LTO); `LABAGENT_AARCH64_BIN` may point
//! elsewhere. A missing binary or qemu fails the test, it never passes silently.
//!
//! Serial is not tested here: Debian 12's qemu-user 7.2 answers the `TCGETS2` ioctl with
//! ENOSYS, so serialport cannot open a tty under it. Serial is tested natively (astm_serial).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

/// Generous: the emulated debug build is slow to start (store open, first fsyncs).
const T: Duration = Duration::from_secs(60);
const QEMU: &str = "qemu-aarch64";

fn aarch64_bin() -> PathBuf {
    let p = std::env::var_os("LABAGENT_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            labagent_tests::repo_path("target/aarch64-unknown-linux-musl/debug/labagent")
        });
    assert!(
        p.is_file(),
        "{} not found: build it first with\n  cargo build -p labagent --bin labagent --target aarch64-unknown-linux-musl\n(tests/run.sh does this), or set LABAGENT_AARCH64_BIN",
        p.display()
    );
    let head = std::fs::read(&p).unwrap();
    // ELF, 64-bit, e_machine = EM_AARCH64 (183): not a host binary by mistake.
    assert!(
        head.len() > 20 && &head[..4] == b"\x7fELF" && head[4] == 2 && head[18] == 183,
        "{} is not an aarch64 ELF executable",
        p.display()
    );
    p
}

fn qemu() -> Command {
    let ok = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{QEMU} is missing: apt-get install qemu-user (tests/run.sh does this)"
    );
    Command::new(QEMU)
}

fn message(i: usize) -> Vec<u8> {
    let mut m = format!("H|\\^&|||QEMU-Analyzer^1.0|||||LIS||P|1\rP|1||PID-Q{i}\r");
    for r in 0..(i % 3 + 1) {
        // A few hundred bytes per record: the larger messages span several frames.
        m.push_str(&format!(
            "R|{}|^^^T{r}|{i}.{r}|mmol/L||N||F|{}\r",
            r + 1,
            "q".repeat(200)
        ));
    }
    m.push_str("L|1|N\r");
    m.into_bytes()
}

#[test]
fn aarch64_build_under_qemu_delivers_astm_from_a_tcp_instrument() {
    let bin = aarch64_bin();
    let mut cmd = qemu();
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let port = config::free_port();
    let cfg = config::write(
        dir.path(),
        "qemu",
        &up.url("/ingest"),
        "",
        &config::listen_channel("chem", "astm", port),
    );
    cmd.arg(&bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "labagent=debug,warn")
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LABAGENT_CLIENT_SECRET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null());
    // qemu-user is the guest process: signals sent to its pid reach the agent's handlers.
    let mut agent = AgentProcess::spawn(cmd);
    agent.wait_line(0, &["listening"], T);

    let messages: Vec<Vec<u8>> = (0..5).map(message).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let sent = AstmInstrument::new(None)
        .send_all(&mut s, &messages)
        .unwrap();
    assert!(
        sent.iter().all(|x| x.delivered),
        "{sent:?}\n{}",
        agent.log()
    );
    drop(s);

    up.wait_for(T, "all 5 messages", |r| r.len() >= 5);
    let got = up.accepted();
    for m in &messages {
        let n = got.iter().filter(|r| r.body == *m).count();
        assert_eq!(
            n, 1,
            "each acknowledged message arrives once, byte for byte"
        );
    }
    let st = agent.terminate(T);
    assert!(st.success(), "exit after SIGTERM: {st:?}\n{}", agent.log());
}
