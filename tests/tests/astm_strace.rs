//! The product's promise, checked on the real binary at the syscall level: every ACK the
//! agent writes to an instrument after a frame comes after an fsync/fdatasync of the store
//! that *started after* that frame was read (ARCHITECTURE.md, "Durability"). A SIGKILL
//! test cannot show this (the page cache survives the process); `strace -f` can.
//!
//! The uplink points at a closed port, so no confirmation writes interleave (they are
//! deliberately not synced) and every store write comes from an append.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::strace::{check, has_stx, traced_agent};

/// An ASTM ACK written to the instrument: the single byte 0x06.
fn is_ack(args: &str) -> bool {
    args.contains(", \"\\6\"")
}

#[test]
fn checker_catches_an_ack_before_the_sync() {
    let base = "1 openat(AT_FDCWD, \"/s/store/sled/db\", O_RDWR) = 7\n\
                1 accept4(9, NULL, NULL, SOCK_CLOEXEC) = 10\n\
                1 recvfrom(10, \"\\0021H|\\\\^&\\r\\3A1\\r\\n\", 64, 0, NULL, NULL) = 12\n";
    let good = format!(
        "{base}2 pwrite64(7, \"x\", 1, 0) = 1\n3 fdatasync(7 <unfinished ...>\n3 <... fdatasync resumed>) = 0\n1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n"
    );
    let v = check(&good, Path::new("/s/store"), has_stx, is_ack);
    assert_eq!((v.frames, v.acks_after_frames, v.syncs), (1, 1, 1), "{v:?}");
    assert!(v.violation.is_none(), "{v:?}");
    let no_sync = format!("{base}1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n");
    assert!(check(&no_sync, Path::new("/s/store"), has_stx, is_ack)
        .violation
        .is_some());
    // A sync that started before the frame was read does not cover it.
    let early = "1 openat(AT_FDCWD, \"/s/store/sled/db\", O_RDWR) = 7\n\
                 1 accept4(9, NULL, NULL, SOCK_CLOEXEC) = 10\n\
                 3 fdatasync(7 <unfinished ...>\n\
                 1 recvfrom(10, \"\\0021H|\\r\\3A1\\r\\n\", 64, 0, NULL, NULL) = 12\n\
                 3 <... fdatasync resumed>) = 0\n\
                 1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0) = 1\n";
    assert!(check(early, Path::new("/s/store"), has_stx, is_ack)
        .violation
        .is_some());
    // An ACK write that strace shows split over two lines still counts.
    let split = format!(
        "{base}2 pwrite64(7, \"x\", 1, 0) = 1\n3 fdatasync(7) = 0\n1 sendto(10, \"\\6\", 1, MSG_NOSIGNAL, NULL, 0 <unfinished ...>\n1 <... sendto resumed>) = 1\n"
    );
    let v = check(&split, Path::new("/s/store"), has_stx, is_ack);
    assert_eq!((v.frames, v.acks_after_frames), (1, 1), "{v:?}");
}

#[test]
fn every_ack_to_the_instrument_follows_a_store_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, port, trace, store_dir) = traced_agent(dir.path(), "astm");

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let mut m = format!("H|\\^&|||STRACE^1|||||LIS||P|1\rP|1||S{i}\r");
            for r in 0..(i % 4 + 1) {
                m.push_str(&format!(
                    "R|{}|^^^T{r}|{i}.{r}|U||||F|{}\r",
                    r + 1,
                    "n".repeat(150)
                ));
            }
            m.push_str("L|1|N\r");
            m.into_bytes()
        })
        .collect();
    let sent = AstmInstrument::new(None)
        .send_all(&mut s, &messages)
        .unwrap();
    assert!(sent.iter().all(|x| x.delivered), "{sent:?}");
    drop(s);
    let st = agent.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", agent.log());

    let text = std::fs::read_to_string(&trace).unwrap();
    let v = check(&text, &store_dir, has_stx, is_ack);
    eprintln!("{v:?}");
    assert!(
        v.frames >= 20,
        "expected at least one frame read per message: {v:?}"
    );
    assert_eq!(
        v.acks_after_frames, v.frames,
        "every frame was ACKed: {v:?}"
    );
    assert!(v.syncs >= 20, "{v:?}");
    assert!(v.violation.is_none(), "{}", v.violation.unwrap());
}
