//! The durability promise for HL7, at the syscall level on the real binary: every ACK
//! written to a sender comes after an fsync/fdatasync of the store that *started after*
//! the block it answers was read (ARCHITECTURE.md, "Durability"). Same method as
//! `astm_strace.rs`: `strace -f`, the uplink on a closed port so only appends write.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use labagent::simulate::{send_hl7, Pacer};
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::strace::{check, has_vt};

/// An MLLP ACK block written to the sender.
fn is_ack(args: &str) -> bool {
    args.contains("\"\\vMSH")
}

const STRACE: &str = "/usr/bin/strace";

#[test]
fn checker_catches_an_ack_before_the_sync() {
    let base = "1 openat(AT_FDCWD, \"/s/store/sled/db\", O_RDWR) = 7\n\
                1 accept4(9, NULL, NULL, SOCK_CLOEXEC) = 10\n\
                1 read(10, \"\\vMSH|^~\\\\&|A|B\\r\\34\\r\", 16384) = 16\n";
    let ack =
        "1 write(10, \"\\vMSH|^~\\\\&|C|D|A|B|2026||ACK|1|P|2.5\\rMSA|AA|1\\r\\34\\r\", 40) = 40\n";
    let good = format!(
        "{base}2 pwrite64(7, \"x\", 1, 0) = 1\n3 fdatasync(7 <unfinished ...>\n3 <... fdatasync resumed>) = 0\n{ack}"
    );
    let v = check(&good, Path::new("/s/store"), has_vt, is_ack);
    assert_eq!((v.frames, v.acks_after_frames, v.syncs), (1, 1, 1), "{v:?}");
    assert!(v.violation.is_none(), "{v:?}");
    assert!(check(
        &format!("{base}{ack}"),
        Path::new("/s/store"),
        has_vt,
        is_ack
    )
    .violation
    .is_some());
    assert!(!has_vt("\\\\vx") && has_vt("\\vMSH"));
}

#[test]
fn every_hl7_ack_follows_a_store_fsync() {
    assert!(
        Path::new(STRACE).exists(),
        "{STRACE} is missing: apt-get install strace (tests/run.sh does this)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = config::free_port();
    let cfg = config::write(
        dir.path(),
        "strace",
        &config::dead_url(),
        "",
        &config::listen_channel("hema", "hl7", port),
    );
    let trace = dir.path().join("trace");
    let mut cmd = Command::new(STRACE);
    cmd.args(["-f", "-s", "64", "-e"])
        .arg(
            "trace=openat,close,accept,accept4,read,recvfrom,write,sendto,pwrite64,fsync,fdatasync",
        )
        .arg("-o")
        .arg(&trace)
        .arg(labagent_tests::labagent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1");
    let mut agent = AgentProcess::spawn_wrapped(cmd);
    agent.wait_line(0, &["agent running"], Duration::from_secs(30));

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            format!(
                "MSH|^~\\&|STRACE|LAB|LIS|HOSP|20261130||ORU^R01|S{i}|P|2.5\rPID|1||P{i}\rOBX|1|TX|N||{}\r",
                "n".repeat(100 + 10 * i)
            )
            .into_bytes()
        })
        .collect();
    let sent = send_hl7(
        &mut s,
        &mut Pacer::new(None),
        &messages,
        Duration::from_secs(20),
        |_| {},
    )
    .unwrap();
    assert!(sent.iter().all(|x| x.detail == "AA"), "{sent:?}");
    drop(s);
    let st = agent.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", agent.log());

    let text = std::fs::read_to_string(&trace).unwrap();
    let v = check(
        &text,
        &dir.path().join("state").join("store"),
        has_vt,
        is_ack,
    );
    eprintln!("{v:?}");
    assert!(v.frames >= 20, "expected a block read per message: {v:?}");
    assert_eq!(v.acks_after_frames, 20, "every message was ACKed: {v:?}");
    assert!(v.syncs >= 20, "{v:?}");
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}
