//! Property tests: frame encode/decode round trip, decoder robustness, record parsing.

mod common;

use common::Model;
use labagent_hal::astm::frame::{encode_frame, is_forbidden, Decoded, FrameDecoder};
use labagent_hal::astm::receiver::{Receiver, ReceiverConfig};
use labagent_hal::astm::record::{records, split_messages, summary, unescape, Delimiters};
use labagent_hal::astm::{ACK, EOT};
use labagent_hal::buf::Bounded;
use labagent_hal::time::Instant;
use proptest::prelude::*;

type Dec = FrameDecoder<heapless::Vec<u8, 1024>>;

fn text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("allowed", |b| !is_forbidden(*b)),
        0..600,
    )
}

proptest! {
    #[test]
    fn frame_round_trip(fn_digit in 0u8..8, body in text(), last in any::<bool>(), lf in any::<bool>()) {
        let mut out = vec![0u8; body.len() + 7];
        let n = encode_frame(fn_digit, &body, last, &mut out).unwrap();
        out.truncate(if lf { n } else { n - 1 });
        let mut d = Dec::new(1024);
        let mut got = None;
        for &b in &out {
            if let Decoded::Frame(f) = d.push(b) {
                got = Some((f.number, f.text.to_vec(), f.last));
            }
        }
        prop_assert_eq!(got, Some((fn_digit, body, last)));
    }

    #[test]
    fn decoder_bounded_and_total(bytes in proptest::collection::vec(any::<u8>(), 0..4000), max in 2usize..300) {
        let mut d = Dec::new(max);
        for &b in &bytes {
            let _ = d.push(b);
            let _ = d.take_replay();
            prop_assert!(d.buffered() <= max);
        }
    }

    #[test]
    fn receiver_never_acks_uncommitted(bytes in proptest::collection::vec(any::<u8>(), 0..3000), fail in any::<u64>()) {
        let mut r = Receiver::<heapless::Vec<u8, 256>>::new(ReceiverConfig { max_frame: 256, max_message: 1024, ..Default::default() });
        let mut buf = [0u8; 64];
        let mut model = Model::default();
        let mut i = 0u64;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = r.handle_input(&rest[..rest.len().min(7)], Instant::ZERO);
            rest = &rest[n..];
            // While a commit is outstanding nothing may be sent.
            while let Some(n) = r.poll_transmit(&mut buf) {
                prop_assert!(!r.commit_outstanding() || !buf[..n].iter().any(|&b| b == ACK || b == EOT));
            }
            if let Some(c) = r.poll_commit() {
                for p in c.clone() {
                    prop_assert!(p.text.len() <= 256, "a piece is at most one frame");
                }
                i += 1;
                let ok = (fail >> (i % 64)) & 1 == 0;
                if ok {
                    model.apply(c);
                }
                r.commit_done(ok, Instant::ZERO);
            }
            while r.poll_event().is_some() {}
            prop_assert!(r.open_len() <= 1024);
        }
        for (m, _) in &model.messages {
            prop_assert!(m.len() <= 1024);
        }
    }

    #[test]
    fn records_parse_anything(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = summary(&bytes);
        let total: usize = split_messages(&bytes).map(|m| m.len()).sum();
        prop_assert!(total <= bytes.len());
        for r in records(&bytes) {
            for f in r.fields() {
                for rep in f.repeats() {
                    for c in rep.components() {
                        let mut o = heapless::Vec::<u8, 4096>::new();
                        let mut sink = Bounded::new(&mut o);
                        unescape(c, Delimiters::default(), &mut sink);
                        prop_assert!(sink.finish().is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn record_fields_round_trip(fields in proptest::collection::vec("[A-Za-z0-9 .]{0,12}", 1..10)) {
        let rec = format!("R|{}", fields.join("|"));
        let text = format!("H|\\^&\r{rec}\rL|1\r");
        let r = records(text.as_bytes()).nth(1).unwrap();
        let got: Vec<String> = r.fields().skip(1).map(|f| String::from_utf8(f.raw().to_vec()).unwrap()).collect();
        prop_assert_eq!(got, fields);
        prop_assert_eq!(split_messages(text.as_bytes()).count(), 1);
    }
}
