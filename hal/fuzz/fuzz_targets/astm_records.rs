#![no_main]
//! Record views, splitting, summary and unescape: never panic; messages cover at most
//! the input, in order, without overlap.
use labagent_hal::astm::record::{records, split_messages, summary, unescape, Delimiters};
use labagent_hal::buf::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = summary(data);
    assert!(s.patients + s.orders + s.results + s.queries <= s.records);
    let mut end = 0;
    for m in split_messages(data) {
        let at = m.as_ptr() as usize - data.as_ptr() as usize;
        assert!(at >= end && at + m.len() <= data.len());
        end = at + m.len();
    }
    let d = records(data)
        .find_map(|r| Delimiters::from_header(r.raw()))
        .unwrap_or_default();
    let mut out = heapless::Vec::<u8, 4096>::new();
    for r in records(data) {
        let _ = r.record_type();
        for f in r.fields() {
            for rep in f.repeats() {
                for c in rep.components() {
                    out.clear();
                    let mut sink = Bounded::new(&mut out);
                    unescape(c, d, &mut sink);
                    assert!(sink.finish().is_ok());
                    assert!(out.len() <= c.len());
                }
            }
        }
    }
});
