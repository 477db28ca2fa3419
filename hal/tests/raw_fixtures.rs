//! The raw framer on real captures (Snibe MAGLUMI) and re-creations of the mini VIDAS and
//! Spotchem framings (the originals are GPL: read from the shared corpus when present).

mod common;

use labagent_hal::raw::{RawConfig, RawEvent as Borrowed};
use std::path::Path;

type RawFramer = labagent_hal::raw::RawFramer<common::Buf>;

/// The framer's events, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawEvent {
    Message(Vec<u8>),
    Error(RawError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RawError {
    TooLarge { len: usize },
    Restarted { fragment: Vec<u8> },
}

fn owned(e: Borrowed<'_>) -> RawEvent {
    match e {
        Borrowed::Message(m) => RawEvent::Message(m.to_vec()),
        Borrowed::TooLarge { len } => RawEvent::Error(RawError::TooLarge { len }),
        Borrowed::Restarted { fragment } => RawEvent::Error(RawError::Restarted {
            fragment: fragment.to_vec(),
        }),
    }
}

fn local(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/raw")
            .join(name),
    )
    .unwrap()
}

fn shared(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures")
            .join(rel),
    )
    .ok()
}

fn run(cfg: &RawConfig, chunks: &[&[u8]]) -> Vec<RawEvent> {
    let mut f = RawFramer::new(cfg.clone());
    let mut v = Vec::new();
    for c in chunks {
        f.feed(c, |e| v.push(owned(e)));
    }
    v
}

/// One message expected; also at every split point.
fn one_message(cfg: &RawConfig, input: &[u8]) -> Vec<u8> {
    let whole = run(cfg, &[input]);
    assert_eq!(whole.len(), 1, "{whole:?}");
    for cut in 0..=input.len() {
        assert_eq!(
            run(cfg, &[&input[..cut], &input[cut..]]),
            whole,
            "cut {cut}"
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(cfg, &bytes), whole);
    match &whole[0] {
        RawEvent::Message(m) => m.clone(),
        e => panic!("{e:?}"),
    }
}

#[test]
fn snibe_maglumi_enq_stx_records_etx_eot() {
    let cfg = RawConfig::new(&[0x02], &[0x03], Some(&[0x06]), 64 * 1024).unwrap();
    let cap = local("snibe_maglumi_1.bin");
    let m = one_message(&cfg, &cap);
    assert!(m.starts_with(b"H|\\^&||PSWD|Maglumi User|"));
    assert!(m.ends_with(b"L|1|N\r"));
    assert_eq!(m.iter().filter(|b| **b == b'\r').count(), 7); // H P O R R R L
    let mut f = RawFramer::new(cfg);
    f.feed(&cap, |_| {});
    assert_eq!(f.stats().junk_bytes, 2); // ENQ and EOT
    assert_eq!(f.reply(), Some(&[0x06][..]));
    // two sessions back to back
    let two = [cap.clone(), cap.clone()].concat();
    let cfg2 = RawConfig::new(&[0x02], &[0x03], None, 64 * 1024).unwrap();
    assert_eq!(
        run(&cfg2, &[&two]),
        vec![RawEvent::Message(m.clone()), RawEvent::Message(m)]
    );
    // a limit below the message size is a typed error, then the framer carries on
    let small = RawConfig::new(&[0x02], &[0x03], None, 100).unwrap();
    let ev = run(&small, &[&two]);
    assert!(matches!(ev[0], RawEvent::Error(RawError::TooLarge { len }) if len == cap.len() - 4));
    assert_eq!(ev.len(), 2);
}

#[test]
fn vidas_style_stx_to_lf() {
    let cfg = RawConfig::new(&[0x02], b"\n", None, 4096).unwrap();
    let mut inputs = vec![local("own_vidas_style.bin")];
    inputs.extend(shared("other/senaite_mini_vidas_native.bin"));
    for input in inputs {
        let m = one_message(&cfg, &input);
        assert!(m.starts_with(b"\x1emtrsl|"));
        assert_eq!(m[m.len() - 3], 0x1d); // GS + 2-char checksum kept in the message
    }
}

#[test]
fn spotchem_style_stx_etx() {
    let cfg = RawConfig::new(&[0x02], &[0x03], None, 4096).unwrap();
    let mut inputs = vec![local("own_spotchem_style.bin")];
    inputs.extend(shared("other/senaite_spotchem_el_native.bin"));
    for input in inputs {
        let m = one_message(&cfg, &input);
        assert!(m.windows(7).any(|w| w == b"mmol/L "));
    }
}

#[test]
fn restart_reports_the_fragment() {
    let cfg = RawConfig::new(&[0x02], &[0x03], None, 4096).unwrap();
    let ev = run(&cfg, &[b"\x02partial\x02whole\x03"]);
    assert_eq!(
        ev,
        vec![
            RawEvent::Error(RawError::Restarted {
                fragment: b"partial".to_vec()
            }),
            RawEvent::Message(b"whole".to_vec()),
        ]
    );
}

#[test]
fn through_the_session_the_reply_follows_each_commit() {
    use labagent_hal::session::Event;
    use labagent_hal::time::Instant;
    let cfg = RawConfig::new(&[0x02], &[0x03], Some(&[0x06]), 64 * 1024).unwrap();
    let cap = local("snibe_maglumi_1.bin");
    let mut s = labagent_hal::raw::RawSession::<common::Buf>::new(cfg);
    let mut model = common::Model::default();
    let mut refuse = true;
    let (tx, ev) = common::feed(
        &mut s,
        &[cap.clone(), cap.clone()].concat(),
        Instant::ZERO,
        &mut |c| {
            // The first is refused (no reply), the second stored (ACK).
            let ok = !std::mem::replace(&mut refuse, false);
            if ok {
                model.apply(c);
            }
            ok
        },
    );
    assert_eq!(tx, [0x06]);
    assert!(ev.contains(&Event::Refused) && ev.contains(&Event::Accepted { messages: 1 }));
    assert_eq!(model.messages.len(), 1);
    assert!(model.messages[0].0.ends_with(b"L|1|N\r"));
}
