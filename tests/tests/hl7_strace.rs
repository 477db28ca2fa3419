//! The durability promise for HL7, at the syscall level on the real binary: every ACK
//! written to a sender comes after an fsync/fdatasync of the store that *started after*
//! the block it answers was read (ARCHITECTURE.md, "Durability"). Same method as
//! `astm_strace.rs`: `strace -f`, the uplink on a closed port so only appends write.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use labagent::simulate::{send_hl7, Pacer};
use labagent_tests::strace::{check, has_vt, traced_agent};

/// An MLLP ACK block written to the sender.
fn is_ack(args: &str) -> bool {
    args.contains("\"\\vMSH")
}

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
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, port, trace, store_dir) = traced_agent(dir.path(), "hl7");

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
    let v = check(&text, &store_dir, has_vt, is_ack);
    eprintln!("{v:?}");
    assert!(v.frames >= 20, "expected a block read per message: {v:?}");
    assert_eq!(v.acks_after_frames, 20, "every message was ACKed: {v:?}");
    assert!(v.syncs >= 20, "{v:?}");
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}
