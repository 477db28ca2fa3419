#![no_main]
//! Receiver session: never panics, memory bounded, and never more ACKs on the wire than
//! justified: each ACK answers an accepted ENQ, a committed frame (`commit_ok`) or a
//! byte-identical copy of the last committed frame. Commits succeed or fail per input
//! bits; the receive timer fires at input-chosen points.
use labagent_hal::astm::receiver::{Event, Receiver, ReceiverConfig};
use labagent_hal::astm::{ACK, EOT};
use labagent_hal::time::{Duration, Instant};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let cfg = ReceiverConfig {
        max_frame: 300,
        max_message: 2000,
        receive_timeout: Duration::from_secs(30),
    };
    let mut r = Receiver::new(cfg);
    let mut now = Instant::ZERO;
    let mut buf = [0u8; 32];
    let (mut k, mut acks, mut justified) = (0u32, 0usize, 0usize);
    for chunk in data.chunks(usize::from(ctl % 31) + 1) {
        r.handle_input(chunk, now);
        if chunk.first().is_some_and(|b| b % 53 == 0) {
            now += Duration::from_secs(31);
            r.handle_timeout(now);
        }
        loop {
            let mut progressed = false;
            while let Some(n) = r.poll_transmit(&mut buf) {
                progressed = true;
                acks += buf[..n].iter().filter(|&&b| b == ACK || b == EOT).count();
            }
            while let Some(e) = r.poll_event() {
                progressed = true;
                match e {
                    Event::NeedsCommit(c) => {
                        assert!(c.partial.len() <= 2000);
                        k += 1;
                        if (u32::from(ctl) >> (k % 8)) & 1 == 1 {
                            r.commit_failed();
                        } else {
                            r.commit_ok();
                        }
                    }
                    Event::TransmissionStarted
                    | Event::FrameAccepted { .. }
                    | Event::DuplicateFrame { .. } => justified += 1,
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
        assert!(
            acks <= justified,
            "{acks} ACKs for {justified} justifications"
        );
        assert!(r.partial_len() <= 2000);
    }
    r.handle_line_lost();
    while r.poll_event().is_some() {}
});
