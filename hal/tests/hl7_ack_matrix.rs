//! The whole acknowledgement decision matrix: MSH-15 × MSH-16 × outcome × channel mode.
#![cfg(feature = "alloc")]

use labagent_hal::hl7::ack::{
    build_ack, build_minimal_ack, decide_ack, AckCode, AckMode, AckParams, Outcome,
};
use labagent_hal::hl7::msh::MshView;
use AckCode::*;

const OUTCOMES: [Outcome; 3] = [
    Outcome::Accepted,
    Outcome::StoreRefused,
    Outcome::Unparseable,
];

/// (MSH-15, MSH-16, expected with channel `original` [stored, refused, unparseable],
///  expected with channel `enhanced` [stored, refused, unparseable])
/// Expected codes for [stored, refused, unparseable].
type Row = [Option<AckCode>; 3];

#[rustfmt::skip]
const TABLE: &[(&str, &str, Row, Row)] = &[
    // both empty: the channel decides
    ("",   "",   [Some(AA), Some(AR), Some(AE)], [Some(CA), Some(CE), Some(CR)]),
    // MSH-16 alone switches to enhanced mode; empty MSH-15 then means "always"
    ("",   "AL", [Some(CA), Some(CE), Some(CR)], [Some(CA), Some(CE), Some(CR)]),
    ("AL", "",   [Some(CA), Some(CE), Some(CR)], [Some(CA), Some(CE), Some(CR)]),
    ("AL", "AL", [Some(CA), Some(CE), Some(CR)], [Some(CA), Some(CE), Some(CR)]),
    ("NE", "",   [None,     None,     None],     [None,     None,     None]),
    ("NE", "AL", [None,     None,     None],     [None,     None,     None]),
    ("ER", "",   [None,     Some(CE), Some(CR)], [None,     Some(CE), Some(CR)]),
    ("ER", "AL", [None,     Some(CE), Some(CR)], [None,     Some(CE), Some(CR)]),
    ("SU", "",   [Some(CA), None,     None],     [Some(CA), None,     None]),
    ("SU", "AL", [Some(CA), None,     None],     [Some(CA), None,     None]),
    // not table 0155 (Mindray's MSH-16 "0"/"2"): treated as empty
    ("",   "2",  [Some(AA), Some(AR), Some(AE)], [Some(CA), Some(CE), Some(CR)]),
    // lower case and padding are tolerated
    ("er ", "",  [None,     Some(CE), Some(CR)], [None,     Some(CE), Some(CR)]),
];

fn msg(msh15: &str, msh16: &str) -> Vec<u8> {
    format!("MSH|^~\\&|INST|LAB|LIS|HOSP|20240101||ORU^R01|CID7|P|2.5|||{msh15}|{msh16}\rPID|1\r")
        .into_bytes()
}

#[test]
fn decision_matrix() {
    for (msh15, msh16, orig, enh) in TABLE {
        let m = msg(msh15, msh16);
        let v = MshView::new_checked(&m).unwrap();
        for (mode, row) in [(AckMode::Original, orig), (AckMode::Enhanced, enh)] {
            for (outcome, want) in OUTCOMES.iter().zip(row) {
                let got = decide_ack(Some(&v), mode, *outcome);
                assert_eq!(
                    got, *want,
                    "MSH-15={msh15:?} MSH-16={msh16:?} {mode:?} {outcome:?}"
                );
                if let Some(code) = got {
                    let p = AckParams {
                        timestamp: b"1",
                        control_id: b"2",
                        text: None,
                        error: None,
                    };
                    let ack = build_ack(&v, code, &p);
                    let a = MshView::new_checked(&ack).unwrap();
                    assert_eq!(a.message_type().trigger, b"R01");
                    let msa = a.segments().nth(1).unwrap();
                    assert_eq!(msa, [b"MSA|", code.as_bytes(), b"|CID7"].concat());
                }
            }
        }
    }
}

#[test]
fn not_hl7_gets_a_minimal_negative_ack() {
    assert_eq!(
        decide_ack(None, AckMode::Original, Outcome::Unparseable),
        Some(AE)
    );
    assert_eq!(
        decide_ack(None, AckMode::Enhanced, Outcome::Unparseable),
        Some(CR)
    );
    assert!(MshView::new_checked(b"H|\\^&|||x\r").is_err());
    let p = AckParams {
        timestamp: b"20240101",
        control_id: b"9",
        text: Some(b"not HL7"),
        error: None,
    };
    let ack = build_minimal_ack(CR, &p);
    assert_eq!(
        ack,
        b"MSH|^~\\&|||||20240101||ACK|9|P|2.5\rMSA|CR||not HL7\r"
    );
    let a = MshView::new_checked(&ack).unwrap();
    assert_eq!(a.control_id(), b"9");
}
