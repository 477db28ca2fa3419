//! MLLP framer: arbitrary bytes in arbitrary chunks never panic, messages never exceed
//! the limit, and every delivered message is byte-identical to what a second framer fed
//! the same stream in one read delivers (read boundaries do not matter).
#![no_main]
use labagent_hal::hl7::mllp::{MllpEvent, MllpFramer, FS, VT};

#[derive(Debug, PartialEq)]
enum Ev {
    Message(Vec<u8>),
    TooLarge(usize, Vec<u8>),
    Interrupted(usize),
}

fn own(e: MllpEvent<'_>) -> Ev {
    match e {
        MllpEvent::Message(m) => Ev::Message(m.to_vec()),
        MllpEvent::TooLarge { len, head } => Ev::TooLarge(len, head.to_vec()),
        MllpEvent::Interrupted { discarded } => Ev::Interrupted(discarded),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 1 + data[0] as usize * 4;
    let chunk = 1 + data[1] as usize % 64;
    let stream = &data[2..];

    let mut chunked = Vec::new();
    let mut f = MllpFramer::<heapless::Vec<u8, 1024>>::new(max);
    for c in stream.chunks(chunk) {
        f.feed(c, |ev| chunked.push(own(ev)));
    }
    let mut whole = Vec::new();
    let mut g = MllpFramer::<heapless::Vec<u8, 1024>>::new(max);
    g.feed(stream, |ev| whole.push(own(ev)));
    assert_eq!(chunked, whole);
    assert_eq!(f.stats(), g.stats());

    for ev in &whole {
        if let Ev::Message(m) = ev {
            assert!(m.len() <= max);
            assert!(!m.contains(&VT) && !m.contains(&FS));
        }
    }
    let s = f.stats();
    assert!(s.junk_bytes <= stream.len() as u64);
    assert!(s.messages as usize <= stream.iter().filter(|b| **b == FS).count());
});
