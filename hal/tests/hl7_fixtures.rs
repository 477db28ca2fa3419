//! Every HL7 fixture through framer + MSH view + ACK builder.
//!
//! Fixtures come from `hal/tests/fixtures/hl7` (always) and, when present, the shared
//! corpus `../shared/fixtures/hl7` relative to the repository root. See
//! `fixtures/hl7/EXPECTED.md` for what is expected of each.

#![cfg(feature = "alloc")]

mod common;

use common::{frame_all, Framed};
use labagent_hal::hl7::ack::{build_ack, AckCode, AckError, AckParams};
use labagent_hal::hl7::charset::encoding_label;
use labagent_hal::hl7::mllp::encode;
use labagent_hal::hl7::msh::{AckCondition, MshView};
use std::path::{Path, PathBuf};

fn dirs() -> Vec<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![here.join("tests/fixtures/hl7")];
    let shared = here.join("../../shared/fixtures/hl7");
    if shared.is_dir() {
        v.push(shared);
    }
    v
}

fn files(ext: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for d in dirs() {
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        names.sort();
        for p in names {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no {ext} fixtures");
    out
}

type MllpFramer = labagent_hal::hl7::mllp::MllpFramer<labagent_hal::buf::VecBuf>;

const PARAMS: AckParams<'static> = AckParams {
    timestamp: b"20240101120000",
    control_id: b"LA-1",
    text: Some(b"stored"),
    error: None,
};

/// The checks every message must pass.
fn check_message(name: &str, msg: &[u8]) {
    let v = MshView::new_checked(msg).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(v.segments().next().unwrap().starts_with(b"MSH"), "{name}");
    for code in [AckCode::AA, AckCode::AR, AckCode::CE, AckCode::CR] {
        let p = AckParams {
            error: (!code.is_positive()).then_some(AckError::STORE_REFUSED),
            ..PARAMS
        };
        let ack = build_ack(&v, code, &p);
        let a = MshView::new_checked(&ack).unwrap_or_else(|e| panic!("{name}: ack {e}"));
        assert_eq!(a.delimiters(), v.delimiters(), "{name}: separators");
        assert_eq!(a.sending_application(), v.receiving_application(), "{name}");
        assert_eq!(a.sending_facility(), v.receiving_facility(), "{name}");
        assert_eq!(a.receiving_application(), v.sending_application(), "{name}");
        assert_eq!(a.receiving_facility(), v.sending_facility(), "{name}");
        assert_eq!(a.control_id(), b"LA-1");
        assert_eq!(a.timestamp(), b"20240101120000");
        assert_eq!(a.processing_id(), v.processing_id(), "{name}");
        assert_eq!(a.version(), v.version(), "{name}");
        assert_eq!(a.message_type().code, b"ACK", "{name}");
        assert_eq!(a.message_type().trigger, v.message_type().trigger, "{name}");
        let segs: Vec<&[u8]> = a.segments().collect();
        let f = v.delimiters().field;
        let msa: Vec<&[u8]> = segs[1].split(|b| *b == f).collect();
        assert_eq!(msa[0], b"MSA");
        assert_eq!(msa[1], code.as_bytes());
        assert_eq!(msa[2], v.control_id(), "{name}: MSA-2");
        assert_eq!(segs.len(), if code.is_positive() { 2 } else { 3 }, "{name}");
        assert!(ack.ends_with(b"\r"));
    }
}

#[test]
fn every_hl7_fixture_frames_parses_and_acks() {
    for (name, msg) in files(".hl7") {
        let block = encode(&msg);
        let mut f = MllpFramer::new(64 * 1024);
        assert_eq!(
            frame_all(&mut f, &block),
            vec![Framed::Message(msg.clone())],
            "{name}"
        );
        check_message(&name, &msg);
    }
}

#[test]
fn every_split_point_gives_the_same_message() {
    for (name, msg) in files(".hl7") {
        let block = encode(&msg);
        for cut in 0..=block.len() {
            let mut f = MllpFramer::new(64 * 1024);
            let mut ev = frame_all(&mut f, &block[..cut]);
            ev.extend(frame_all(&mut f, &block[cut..]));
            assert_eq!(ev, vec![Framed::Message(msg.clone())], "{name} cut {cut}");
        }
    }
}

#[test]
fn all_fixtures_in_one_read_and_byte_by_byte() {
    let all = files(".hl7");
    let mut stream = Vec::new();
    for (_, m) in &all {
        stream.extend_from_slice(&encode(m));
        stream.extend_from_slice(b"\r\n"); // junk between blocks
    }
    let want: Vec<_> = all
        .iter()
        .map(|(_, m)| Framed::Message(m.clone()))
        .collect();
    let mut f = MllpFramer::new(64 * 1024);
    assert_eq!(frame_all(&mut f, &stream), want);
    assert_eq!(f.stats().junk_bytes, 2 * all.len() as u64);
    let mut f = MllpFramer::new(64 * 1024);
    let mut ev = Vec::new();
    for b in &stream {
        ev.extend(frame_all(&mut f, std::slice::from_ref(b)));
    }
    assert_eq!(ev, want);
}

#[test]
fn mllp_captures_match_their_hl7_twin() {
    for (name, bytes) in files(".mllp.bin") {
        let mut f = MllpFramer::new(64 * 1024);
        let ev = frame_all(&mut f, &bytes);
        assert_eq!(ev.len(), 1, "{name}");
        let Framed::Message(msg) = &ev[0] else {
            panic!("{name}: {ev:?}")
        };
        let twin = PathBuf::from(name.replace(".mllp.bin", ".hl7"));
        if twin.exists() {
            assert_eq!(msg, &std::fs::read(&twin).unwrap(), "{name}");
        }
        assert_eq!(f.stats().junk_bytes, 0, "{name}");
        check_message(&name, msg);
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hl7")
        .join(name);
    std::fs::read(p).unwrap()
}

#[test]
fn custom_separators() {
    let m = fixture("hl7apy_custom_separators_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    let d = v.delimiters();
    assert_eq!(
        (d.field, d.component, d.repetition, d.escape, d.subcomponent),
        (b'!', b'$', b'r', b'?', b'@')
    );
    // `^` is not a separator here: MSH-9 is one component.
    assert_eq!(v.message_type().code, b"RSP^SLI^RSP_K11");
    assert_eq!(v.message_type().trigger, b"");
    assert_eq!(v.control_id(), b"430102");
    let ack = build_ack(&v, AckCode::AA, &PARAMS);
    assert!(ack.starts_with(b"MSH!$r?@!LB!LB!LIP!LIP!20240101120000!!ACK!LA-1!D!2.5\r"));
    // `r` is the repetition character here, so the text is escaped.
    assert!(ack.ends_with(b"MSA!AA!430102!sto?R?ed\r"));
}

#[test]
fn five_encoding_characters() {
    let m = fixture("hl7apy_v27_truncation_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    assert_eq!(v.delimiters().truncation, Some(b'#'));
    assert_eq!(v.field(2), b"^~\\&#");
    assert_eq!(v.version(), b"2.7");
    let ack = build_ack(
        &v,
        AckCode::CE,
        &AckParams {
            error: Some(AckError::STORE_REFUSED),
            ..PARAMS
        },
    );
    assert!(ack.starts_with(b"MSH|^~\\&#|REC APP|REC FAC|SEND APP|SEND FAC|"));
    assert!(ack.ends_with(b"ERR|||207^Application internal error^HL70357|E\r"));
}

#[test]
fn charsets_and_ack_modes_of_fixtures() {
    let cases: &[(&str, &[u8], Option<&str>, bool)] = &[
        ("erba_elite580_1.hl7", b"UNICODE", Some("utf-8"), false),
        ("roche_citm_1.hl7", b"UNICODE UTF-8", Some("utf-8"), true),
        ("roche_citm_2.hl7", b"8859/1", Some("iso-8859-1"), true),
        ("swisslab_orm_1.hl7", b"", None, false),
        (
            "own_mindray_style_oru.hl7",
            b"ASCII",
            Some("us-ascii"),
            false,
        ),
        (
            "own_mindray_style_qc.hl7",
            b"ASCII",
            Some("us-ascii"),
            false,
        ),
        ("own_lf_segments.hl7", b"UNICODE UTF-8", Some("utf-8"), true),
    ];
    for (name, cs, label, enhanced) in cases {
        let m = fixture(name);
        let v = MshView::new_checked(&m).unwrap();
        assert_eq!(v.charset(), *cs, "{name}");
        assert_eq!(encoding_label(v.charset()), *label, "{name}");
        assert_eq!(v.is_enhanced_mode(), *enhanced, "{name}");
    }
    let m = fixture("roche_citm_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    assert_eq!(v.accept_ack_type(), AckCondition::Never);
}

#[test]
fn lf_only_segments_are_segments() {
    let m = fixture("own_lf_segments.hl7");
    let v = MshView::new_checked(&m).unwrap();
    let ids: Vec<&[u8]> = v.segments().map(|s| &s[..3]).collect();
    assert_eq!(ids, [&b"MSH"[..], b"PID", b"OBX"]);
    assert_eq!(v.charset(), b"UNICODE UTF-8");
}

#[test]
fn highlight_escapes_and_no_commit_ack_wanted() {
    use labagent_hal::hl7::ack::{decide_ack, AckMode, Outcome};
    use labagent_hal::hl7::escape::unescape;
    let m = fixture("hl7apy_escape_highlight_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    assert_eq!(
        unescape(v.field(8), &v.delimiters()),
        b"HIGHLIGHTEDTEXTIMPORTANT"
    );
    let m = fixture("roche_citm_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    for o in [
        Outcome::Accepted,
        Outcome::StoreRefused,
        Outcome::Unparseable,
    ] {
        assert_eq!(decide_ack(Some(&v), AckMode::Original, o), None);
    }
    let m = fixture("own_mindray_style_qc.hl7");
    let v = MshView::new_checked(&m).unwrap();
    assert_eq!(
        decide_ack(Some(&v), AckMode::Original, Outcome::Accepted),
        Some(AckCode::AA)
    );
    let m = fixture("roche_citm_1.hl7");
    let v = MshView::new_checked(&m).unwrap();
    let obx5 = v
        .segments()
        .find(|s| s.starts_with(b"OBX"))
        .and_then(|s| s.split(|b| *b == b'|').nth(5))
        .unwrap();
    assert!(unescape(obx5, &v.delimiters()).contains(&b'^') || !obx5.contains(&b'\\'));
}
