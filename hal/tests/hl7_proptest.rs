//! Property tests: no input panics; framing is lossless; ACKs always re-parse.

#![cfg(feature = "alloc")]

mod common;

use common::{frame_all, Framed};
use labagent_hal::hl7::ack::{build_ack, AckCode, AckParams};
use labagent_hal::hl7::escape::{escape, unescape};
use labagent_hal::hl7::mllp::{encode, MllpEvent, FS, VT};

type MllpFramer = labagent_hal::hl7::mllp::MllpFramer<labagent_hal::buf::VecBuf>;
use labagent_hal::hl7::msh::{Delimiters, MshView};
use proptest::prelude::*;

fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no VT/FS", |b| *b != VT && *b != FS),
        0..200,
    )
}

fn junk() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no VT", |b| *b != VT), 0..8)
}

proptest! {
    #[test]
    fn framer_never_panics_and_stays_bounded(data in proptest::collection::vec(any::<u8>(), 0..2000),
                                            max in 1usize..300, chunk in 1usize..64) {
        let mut f = MllpFramer::new(max);
        for c in data.chunks(chunk) {
            f.feed(c, |ev| match ev {
                MllpEvent::Message(m) => assert!(m.len() <= max),
                MllpEvent::TooLarge { head, .. } => assert!(head.len() <= max),
                MllpEvent::Interrupted { .. } => {}
            });
        }
    }

    #[test]
    fn framed_messages_come_back_exactly(msgs in proptest::collection::vec((body(), junk()), 0..8),
                                        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut stream = Vec::new();
        for (m, j) in &msgs {
            stream.extend_from_slice(j);
            stream.extend_from_slice(&encode(m));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort();
        let mut f = MllpFramer::new(1024);
        let mut got = Vec::new();
        for w in points.windows(2) {
            got.extend(frame_all(&mut f, &stream[w[0]..w[1]]));
        }
        let want: Vec<_> = msgs.iter().map(|(m, _)| Framed::Message(m.clone())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn msh_view_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut m = b"MSH".to_vec();
        m.extend_from_slice(&data);
        for input in [&data[..], &m[..]] {
            if let Ok(v) = MshView::new_checked(input) {
                for n in 0..30 { let _ = v.field(n); let _ = v.component(n, n % 4); }
                let _ = (v.message_type(), v.charset(), v.is_enhanced_mode(), v.segments().count());
                let p = AckParams { timestamp: b"1", control_id: b"c|^", text: Some(b"t\r"), error: None };
                let ack = build_ack(&v, AckCode::CA, &p);
                let a = MshView::new_checked(&ack).unwrap();
                prop_assert_eq!(a.delimiters(), v.delimiters());
                let want = escape(b"c|^", &v.delimiters());
                prop_assert_eq!(a.control_id(), want.as_slice());
            }
        }
    }

    #[test]
    fn escape_round_trips_and_unescape_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let d = Delimiters::default();
        let _ = unescape(&data, &d);
        prop_assert_eq!(unescape(&escape(&data, &d), &d), data.clone());
        let d5 = Delimiters { truncation: Some(b'#'), ..d };
        prop_assert_eq!(unescape(&escape(&data, &d5), &d5), data);
    }
}

/// Distinct non-alphanumeric printable separators: field + 4 or 5 encoding characters.
fn separators() -> impl Strategy<Value = Vec<u8>> {
    let pool: Vec<u8> = b"|^~\\&#!$?@%*+/:;=<>{}".to_vec();
    (Just(pool), 5usize..=6)
        .prop_flat_map(|(pool, n)| proptest::sample::subsequence(pool, n).prop_shuffle())
}

fn field() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(b"ABCxyz019 .-_".to_vec()), 0..6)
}

proptest! {
    #[test]
    fn acks_keep_any_separators(seps in separators(), fields in proptest::collection::vec(field(), 0..18)) {
        let f = seps[0];
        let mut m = b"MSH".to_vec();
        m.extend_from_slice(&seps);
        for x in &fields {
            m.push(f);
            m.extend_from_slice(x);
        }
        m.extend_from_slice(b"\rPID|1\r");
        let v = MshView::new_checked(&m).unwrap();
        prop_assert_eq!(v.field(2), &seps[1..]);
        for (i, x) in fields.iter().enumerate() {
            prop_assert_eq!(v.field(i + 3), x.as_slice());
        }
        let p = AckParams { timestamp: b"20240101", control_id: b"id", text: Some(&seps), error: None };
        let ack = build_ack(&v, AckCode::AA, &p);
        let a = MshView::new_checked(&ack).unwrap();
        prop_assert_eq!(a.delimiters(), v.delimiters());
        prop_assert_eq!(a.sending_application(), v.receiving_application());
        prop_assert_eq!(a.receiving_application(), v.sending_application());
        let msa: Vec<&[u8]> = a.segments().nth(1).unwrap().split(|b| *b == f).collect();
        prop_assert_eq!(msa[2], v.control_id());
        prop_assert_eq!(unescape(msa[3], &v.delimiters()), seps);
    }
}
