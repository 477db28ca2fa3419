//! The blocking `embedded-io` driver on an in-memory line: an ASTM transmission with a
//! corrupt frame and a retransmitted one, committed as the firmware does (each message
//! as one line of hex on a second pipe), on a clock that only moves when told.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;

use labagent_hal::astm::frame::encode_frame;
use labagent_hal::astm::link::Link;
use labagent_hal::astm::receiver::ReceiverConfig;
use labagent_hal::astm::{ACK, ENQ, EOT, NAK};
use labagent_hal::drive::{Clock, Committer, Runner};
use labagent_hal::session::{Commit, End};
use labagent_hal::time::{Duration, Instant};

/// What the instrument wrote (the driver reads it) and what the driver wrote.
#[derive(Default)]
struct Line {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl embedded_io::ErrorType for Line {
    type Error = Infallible;
}
impl embedded_io::Read for Line {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        // Small reads, as a UART FIFO gives them.
        let n = buf.len().min(self.input.len()).min(5);
        for b in buf.iter_mut().take(n) {
            *b = self.input.pop_front().unwrap();
        }
        Ok(n)
    }
}
impl embedded_io::ReadReady for Line {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.input.is_empty())
    }
}
impl embedded_io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

struct Fake(Instant);
impl Clock for Fake {
    fn now(&mut self) -> Instant {
        self.0
    }
}

/// The firmware's committer: hex of each piece as it is committed; `\n` when a message
/// completes, `-\n` when it is abandoned.
#[derive(Default)]
struct Hex(String);
impl Committer for Hex {
    fn commit(&mut self, pieces: Commit<'_>) -> bool {
        for p in pieces {
            for b in p.text {
                self.0.push_str(&format!("{b:02x}"));
            }
            if p.cr {
                self.0.push_str("0d");
            }
            match p.end {
                Some(End::Complete(_)) => self.0.push('\n'),
                Some(_) => self.0.push_str("-\n"),
                None => {}
            }
        }
        true
    }
}

fn frame(n: u8, text: &[u8], last: bool) -> Vec<u8> {
    let mut b = vec![0u8; text.len() + 7];
    let l = encode_frame(n, text, last, &mut b).unwrap();
    b.truncate(l);
    b
}

fn hex(t: &[u8]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_transmission_through_the_blocking_driver() {
    // No allocator needed by the session: a fixed 256-byte buffer per frame.
    let cfg = labagent_hal::astm::link::LinkConfig {
        receiver: ReceiverConfig {
            max_frame: 241,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut link = Link::<heapless::Vec<u8, 256>>::new(cfg);
    let mut line = Line::default();
    let mut clock = Fake(Instant::ZERO);
    let mut out = Hex::default();
    let mut runner = Runner::<64, 256>::new();
    let mut run = |line: &mut Line, clock: &mut Fake, out: &mut Hex, link: &mut Link<_>| {
        while runner.step(link, line, clock, out).unwrap() {}
    };

    let m1 = b"H|\\^&|||FW\rP|1\rR|1|^^^GLU|5|mmol/L\rL|1|N\r";
    let mut bad = frame(1, b"H|\\^&|||FW\rP|1\r", false);
    bad[5] ^= 0x01;
    line.input.push_back(ENQ);
    line.input.extend(bad);
    run(&mut line, &mut clock, &mut out, &mut link);
    assert_eq!(line.output, [ACK, NAK], "corrupt frame NAKed");
    let f1 = frame(1, b"H|\\^&|||FW\rP|1\r", false);
    line.input.extend(f1.iter().copied());
    line.input.extend(f1.iter().copied()); // its ACK was lost: sent again
    line.input
        .extend(frame(2, b"R|1|^^^GLU|5|mmol/L\rL|1|N\r", true));
    line.input.push_back(EOT);
    run(&mut line, &mut clock, &mut out, &mut link);
    assert_eq!(line.output, [ACK, NAK, ACK, ACK, ACK]);
    assert_eq!(out.0, format!("{}\n", hex(m1)), "once, despite the copy");

    // A message cut off by the receive timer.
    line.input.push_back(ENQ);
    line.input.extend(frame(1, b"H|\\^&\rP|2\r", false));
    run(&mut line, &mut clock, &mut out, &mut link);
    clock.0 += Duration::from_secs(30);
    run(&mut line, &mut clock, &mut out, &mut link);
    assert!(
        out.0.ends_with(&format!("{}-\n", hex(b"H|\\^&\rP|2\r"))),
        "{}",
        out.0
    );
}
