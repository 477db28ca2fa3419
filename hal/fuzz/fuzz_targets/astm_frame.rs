#![no_main]
//! Frame decoder: never panics, buffer bounded by max_frame, every good frame re-encodes
//! to bytes whose checksum verifies.
use labagent_hal::astm::frame::{checksum, encode_frame, Decoded, FrameDecoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let max = 2 + usize::from(data.first().copied().unwrap_or(0));
    let mut d = FrameDecoder::<heapless::Vec<u8, 512>>::new(max);
    let mut out = vec![0u8; max + 16];
    for &b in data {
        let mut next = Some(b);
        while let Some(x) = next.take() {
            if let Decoded::Frame(f) = d.push(x) {
                assert!(f.text.len() < max);
                let n = encode_frame(f.number, f.text, f.last, &mut out).unwrap();
                let body = &out[1..n - 4];
                let cs = checksum(body);
                let hex = core::str::from_utf8(&out[n - 4..n - 2]).unwrap();
                assert_eq!(u8::from_str_radix(hex, 16).unwrap(), cs);
            }
            assert!(d.buffered() <= max);
            next = d.take_replay();
        }
    }
});
