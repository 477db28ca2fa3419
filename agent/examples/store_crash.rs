//! Crash and ordering test helper: appends to a store in a loop and prints `ACK <id> <sha256>`
//! to stdout (one `write(2)` on fd 1) only after `append` returned — standing in for the
//! ACK to the instrument. Also confirms (`CONFIRM <id>` printed *before* confirming) and
//! prunes, so a kill can land in any of them.
//!
//! Usage: `store_crash <dir> [appends]` (default: run until killed).

use std::io::Write;
use std::time::{Duration, SystemTime};

use labagent::store::{NewMessage, Store, StoreOptions};
use sha2::{Digest, Sha256};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // One write per line: the strace test looks for the ACK write itself.
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: store_crash <dir> [appends]");
    let limit: u64 = args
        .next()
        .map(|a| a.parse().expect("appends: a number"))
        .unwrap_or(u64::MAX);
    let opts = StoreOptions {
        min_free: 0,
        ..StoreOptions::default()
    };
    let store = match Store::open(&dir, opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("store_crash: open failed: {e}");
            std::process::exit(2);
        }
    };
    say("READY");
    let pid = std::process::id();
    let mut i = 0u64;
    while i < limit {
        let size = if i % 17 == 5 { 20_000 } else { 1024 };
        let mut bytes = format!("MSH|{pid}|{i}|").into_bytes();
        bytes.resize(size, b'A' + (i % 26) as u8);
        let sha = Sha256::digest(&bytes);
        let hex = labagent::text::hex(&sha);
        let a = store
            .append(NewMessage {
                channel: format!("ch{}", i % 3),
                protocol: labagent::store::Protocol::Hl7,
                received_at: SystemTime::now(),
                clock_synced: Some(true),
                bytes,
                meta: serde_json::json!({ "i": i }).into(),
            })
            .expect("append");
        say(&format!("ACK {} {hex}", a.id));
        if i % 3 == 2 {
            if let Some(m) = store.peek(&format!("ch{}", i % 3)).expect("peek") {
                say(&format!("CONFIRM {}", m.info.id));
                store.confirm(m.info.id).expect("confirm");
            }
        }
        if i % 10 == 9 {
            say("PRUNE");
            store
                .prune(SystemTime::now() + Duration::from_secs(30 * 86_400))
                .expect("prune");
        }
        i += 1;
    }
    drop(store);
    say("DONE");
}
