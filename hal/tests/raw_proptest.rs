//! Raw framer: arbitrary input never panics, stays bounded, and delimited messages come
//! back exactly whatever the read boundaries.

use labagent_hal::raw::{RawConfig, RawEvent};

type RawFramer = labagent_hal::raw::RawFramer<heapless::Vec<u8, 256>>;
use proptest::prelude::*;

proptest! {
    #[test]
    fn never_panics(start in proptest::collection::vec(any::<u8>(), 0..3),
                    end in proptest::collection::vec(any::<u8>(), 1..3),
                    data in proptest::collection::vec(any::<u8>(), 0..1000),
                    max in 1usize..100, chunk in 1usize..50) {
        let cfg = RawConfig::new(&start, &end, None, max).unwrap();
        let mut f = RawFramer::new(cfg);
        for c in data.chunks(chunk) {
            f.feed(c, |ev| if let RawEvent::Message(m) = ev { assert!(m.len() <= max) });
        }
    }

    #[test]
    fn messages_round_trip(msgs in proptest::collection::vec(
                               proptest::collection::vec(any::<u8>().prop_filter("", |b| *b != 2 && *b != 3), 0..100), 0..6),
                           chunk in 1usize..40) {
        let cfg = RawConfig::new(&[2], &[3], None, 100).unwrap();
        let mut stream = vec![5u8];
        for m in &msgs { stream.push(2); stream.extend_from_slice(m); stream.push(3); }
        stream.push(4);
        let mut f = RawFramer::new(cfg);
        let mut got = Vec::new();
        for c in stream.chunks(chunk) {
            f.feed(c, |e| if let RawEvent::Message(m) = e { got.push(m.to_vec()) } else { panic!("{e:?}") });
        }
        let want = msgs;
        prop_assert_eq!(got, want);
    }
}
