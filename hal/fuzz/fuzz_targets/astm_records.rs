#![no_main]
//! Record views, splitting, summary and unescape: never panic; messages cover at most
//! the input.
use labagent_hal::astm::record::{records, split_messages, summary, unescape, Delimiters};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = summary(data);
    assert!(s.patients + s.orders + s.results + s.queries <= s.records);
    let msgs = split_messages(data);
    assert!(msgs.iter().map(|m| m.len()).sum::<usize>() <= data.len());
    let d = records(data)
        .find_map(|r| Delimiters::from_header(r.raw()))
        .unwrap_or_default();
    let mut out = Vec::new();
    for r in records(data) {
        let _ = r.record_type();
        for f in r.fields() {
            for rep in f.repeats() {
                for c in rep.components() {
                    out.clear();
                    unescape(c, d, &mut out);
                    assert!(out.len() <= c.len());
                }
            }
        }
    }
});
