#![no_main]
//! The host's ASTM link session: never panics, memory bounded (no piece longer than a
//! frame, no message past max_message), and never more ACKs on the wire than justified:
//! each ACK answers an accepted ENQ, a commit answered `true` (`Accepted`) or a
//! byte-identical copy of the last committed frame (`DuplicateFrame`). Commits succeed or
//! fail per input bits; the receive timer fires at input-chosen points; the line is lost
//! at the end.
use labagent_hal::astm::link::{Link, LinkConfig};
use labagent_hal::astm::receiver::ReceiverConfig;
use labagent_hal::astm::{ACK, EOT};
use labagent_hal::session::{Event, Session};
use labagent_hal::time::{Duration, Instant};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let cfg = LinkConfig {
        receiver: ReceiverConfig {
            max_frame: 300,
            max_message: 2000,
            receive_timeout: Duration::from_secs(30),
        },
        ..Default::default()
    };
    let mut r = Link::<heapless::Vec<u8, 300>>::new(cfg);
    let mut now = Instant::ZERO;
    let mut buf = [0u8; 300];
    let (mut k, mut acks, mut justified, mut open) = (0u32, 0usize, 0usize, 0usize);
    let mut rest = data;
    let step = usize::from(ctl % 31) + 1;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(step)];
        let n = r.handle_input(chunk, now);
        if chunk.first().is_some_and(|b| b % 53 == 0) {
            now += Duration::from_secs(31);
            r.handle_timeout(now);
        }
        if let Some(c) = r.poll_commit() {
            for p in c {
                assert!(p.text.len() <= 300);
                if p.begins {
                    open = 0;
                }
                open += p.len();
                assert!(open <= 2000);
                if p.end.is_some() {
                    open = 0;
                }
            }
            k += 1;
            let ok = (u32::from(ctl) >> (k % 8)) & 1 == 0;
            r.commit_done(ok, now);
        }
        while let Some(n) = r.poll_transmit(&mut buf) {
            acks += buf[..n].iter().filter(|&&b| b == ACK || b == EOT).count();
        }
        while let Some(e) = r.poll_event() {
            if matches!(e, Event::TransmissionStarted | Event::Accepted { .. } | Event::DuplicateFrame) {
                justified += 1;
            }
        }
        assert!(acks <= justified, "{acks} ACKs for {justified} justifications");
        assert!(r.receiver().open_len() <= 2000);
        // Input is taken unless a commit or the event queue holds it up.
        if n == 0 && r.poll_commit().is_none() {
            rest = &rest[1..];
        } else {
            rest = &rest[n..];
        }
    }
    r.handle_line_lost(now);
    if r.poll_commit().is_some() {
        r.commit_done(true, now);
    }
    while r.poll_event().is_some() {}
});
