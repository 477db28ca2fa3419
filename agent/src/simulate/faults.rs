//! Line faults the simulated instrument can inject on purpose, to prove a receiver's
//! rules end to end (`labagent simulate --corrupt-frame N --duplicate-frame N`), and its
//! patience with a receiver that is not up yet (`--enq-timeout`).
//!
//! Frames are counted from 1 over the whole run, in the order the sender first writes
//! them; a retransmission (the same bytes again after a NAK) is not a new frame.
//! - **Corrupt frame N**: it goes out once with one text byte changed, so its checksum
//!   no longer matches; the receiver must NAK it, and the sender then sends it again
//!   unchanged (the hal sender's own rule after a NAK).
//! - **Duplicate frame N**: once the receiver ACKs it, the instrument holds that ACK back
//!   and sends the same bytes again, as a sender whose ACK was lost does; the receiver must
//!   ACK the copy and drop it, and the sender goes on when that second ACK comes.
//! - **ENQ timeout**: an ENQ with no answer within it is given up (EOT, as LIS1-A's
//!   establishment timer does) and sent again, without a limit on attempts.
//!
//! Each injected fault is reported with the answer it got ("frame 3 sent with a corrupted
//! byte: answered NAK").

use std::time::{Duration, Instant};

use labagent_hal::astm::{ACK, ENQ, EOT, NAK, STX};

/// Which faults to inject; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Send this frame once with a corrupted byte.
    pub corrupt_frame: Option<u64>,
    /// Send this frame twice (the copy after its ACK).
    pub duplicate_frame: Option<u64>,
    /// Give up an unanswered ENQ after this long and send another, without limit.
    pub enq_timeout: Option<Duration>,
}

/// The faults' state over one run.
#[derive(Debug, Default)]
pub(crate) struct Injector {
    faults: Faults,
    /// New frames written so far.
    frames: u64,
    /// The last frame written as the sender made it (to tell a retransmission).
    prev: Vec<u8>,
    /// The corrupted frame waits for its answer.
    corrupt_reply: Option<u64>,
    /// The frame to duplicate waits for its ACK.
    dup_ack: Option<u64>,
    /// The copy waits for its answer.
    copy_reply: Option<u64>,
    /// When the unanswered ENQ went out.
    enq_at: Option<Instant>,
    /// Reports for the user, drained by the caller.
    pub(crate) notes: Vec<String>,
}

fn name(b: u8) -> String {
    match b {
        ACK => "ACK".into(),
        NAK => "NAK".into(),
        EOT => "EOT".into(),
        ENQ => "ENQ".into(),
        _ => format!("{b:#04x}"),
    }
}

impl Injector {
    pub(crate) fn new(faults: Faults) -> Self {
        Injector {
            faults,
            ..Default::default()
        }
    }

    /// The sender wants `bytes` written (one `poll_transmit`: a control byte or a whole
    /// frame); returns what goes on the wire instead, if anything differs.
    pub(crate) fn outgoing(&mut self, bytes: &[u8], now: Instant) -> Option<Vec<u8>> {
        if bytes == [ENQ] {
            self.enq_at = Some(now);
            // Frame numbers start again: a frame equal to the last one is a new frame.
            self.prev.clear();
            return None;
        }
        if bytes.first() != Some(&STX) || bytes == self.prev.as_slice() {
            return None;
        }
        self.frames += 1;
        self.prev = bytes.to_vec();
        let n = self.frames;
        if self.faults.duplicate_frame == Some(n) {
            self.dup_ack = Some(n);
        }
        if self.faults.corrupt_frame != Some(n) {
            return None;
        }
        self.corrupt_reply = Some(n);
        let mut bad = bytes.to_vec();
        // STX FN text…: the first text byte (every sender frame has one). One bit changes
        // the byte sum by one, so the checksum cannot match.
        let at = if bad.len() > 7 { 2 } else { 1 };
        bad[at] ^= 0x01;
        Some(bad)
    }

    /// Reply bytes from the receiver while the sender waits for them. Returns the bytes
    /// the sender should see, and a frame copy to write now (the ACK it answers is
    /// withheld from the sender).
    pub(crate) fn incoming<'a>(&mut self, bytes: &'a [u8]) -> (&'a [u8], Option<Vec<u8>>) {
        self.enq_at = None;
        let Some(&first) = bytes.first() else {
            return (bytes, None);
        };
        if let Some(n) = self.copy_reply.take() {
            self.notes.push(format!(
                "frame {n} sent twice: the copy was answered {}",
                name(first)
            ));
            return (bytes, None);
        }
        if let Some(n) = self.corrupt_reply.take() {
            self.notes.push(format!(
                "frame {n} sent with a corrupted byte: answered {}",
                name(first)
            ));
            return (bytes, None);
        }
        if let (Some(n), ACK) = (self.dup_ack, first) {
            self.dup_ack = None;
            self.copy_reply = Some(n);
            return (&bytes[1..], Some(self.prev.clone()));
        }
        (bytes, None)
    }

    /// Some byte came while no ENQ of ours was pending an answer (the receiver is up).
    pub(crate) fn heard(&mut self) {
        self.enq_at = None;
    }

    /// When the pending ENQ is to be given up, if the option is on.
    pub(crate) fn enq_deadline(&self) -> Option<Instant> {
        Some(self.enq_at? + self.faults.enq_timeout?)
    }

    /// Called when [`enq_deadline`](Self::enq_deadline) has passed and the ENQ is
    /// given up.
    pub(crate) fn enq_given_up(&mut self) {
        if let Some(t) = self.faults.enq_timeout {
            self.notes.push(format!(
                "no answer to ENQ within {:.1} s: EOT, then ENQ again",
                t.as_secs_f64()
            ));
        }
        self.enq_at = None;
    }

    /// Faults asked for whose frame never came (the run had fewer frames).
    pub(crate) fn unapplied(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, n) in [
            ("--corrupt-frame", self.faults.corrupt_frame),
            ("--duplicate-frame", self.faults.duplicate_frame),
        ] {
            if let Some(n) = n.filter(|&n| n > self.frames) {
                out.push(format!(
                    "{what} {n} not applied: the run sent {} frames",
                    self.frames
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::wire::Wire;
    use crate::simulate::AstmInstrument;
    use labagent_hal::astm::receiver::{Receiver, ReceiverConfig};
    use labagent_hal::buf::VecBuf;
    use labagent_hal::session::{End, Event};
    use labagent_hal::time::Instant as HalInstant;
    use std::collections::VecDeque;
    use std::io;

    /// The hal receiver on the other end of an in-memory line: answers each write at once.
    struct Loop {
        rx: Receiver<VecBuf>,
        replies: VecDeque<u8>,
        written: Vec<u8>,
        messages: Vec<Vec<u8>>,
        partial: Vec<u8>,
        events: Vec<Event>,
        /// ENQs to ignore (a receiver that is not up yet).
        deaf: usize,
    }

    impl Loop {
        fn new(deaf: usize) -> Self {
            Loop {
                rx: Receiver::new(ReceiverConfig::default()),
                replies: VecDeque::new(),
                written: Vec::new(),
                messages: Vec::new(),
                partial: Vec::new(),
                events: Vec::new(),
                deaf,
            }
        }
    }

    impl Wire for Loop {
        fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
            self.written.extend_from_slice(bytes);
            if self.deaf > 0 {
                if bytes == [ENQ] {
                    self.deaf -= 1;
                }
                return Ok(());
            }
            let t = HalInstant::ZERO;
            while !bytes.is_empty() {
                let n = self.rx.handle_input(bytes, t);
                bytes = &bytes[n..];
                if let Some(c) = self.rx.poll_commit() {
                    for p in c {
                        if p.begins {
                            self.partial.clear();
                        }
                        self.partial.extend_from_slice(p.text);
                        if p.cr {
                            self.partial.push(b'\r');
                        }
                        if let Some(End::Complete(_)) = p.end {
                            self.messages.push(std::mem::take(&mut self.partial));
                        }
                    }
                    self.rx.commit_done(true, t);
                }
                let mut out = [0u8; 8];
                while let Some(k) = self.rx.poll_transmit(&mut out) {
                    self.replies.extend(&out[..k]);
                }
                while let Some(e) = self.rx.poll_event() {
                    self.events.push(e);
                }
            }
            Ok(())
        }

        fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
            if self.replies.is_empty() {
                std::thread::sleep(timeout.min(Duration::from_millis(5)));
                return Ok(0);
            }
            // One byte at a time, as a slow line gives them.
            buf[0] = self.replies.pop_front().unwrap();
            Ok(1)
        }
    }

    fn messages() -> Vec<Vec<u8>> {
        let big = format!("H|\\^&\rP|1\rR|1|^^^X|{}\rL|1|N\r", "7".repeat(600));
        vec![
            b"H|\\^&\rP|1\rR|1|^^^GLU|5\rL|1|N\r".to_vec(),
            big.into_bytes(),
            b"H|\\^&\rL|1|N\r".to_vec(),
        ]
    }

    fn run(faults: Faults, pack: bool, deaf: usize) -> (Loop, Vec<String>, usize) {
        let mut inst = AstmInstrument::new(None);
        inst.sender.pack_records = pack;
        inst.faults = faults;
        let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let n2 = notes.clone();
        inst.on_note = Some(Box::new(move |s: &str| {
            n2.lock().unwrap().push(s.to_string())
        }));
        let mut wire = Loop::new(deaf);
        let sent = inst.send_all(&mut wire, &messages()).unwrap();
        let ok = sent.iter().filter(|s| s.delivered).count();
        let notes = notes.lock().unwrap().clone();
        (wire, notes, ok)
    }

    #[test]
    fn a_corrupted_frame_is_naked_then_sent_again() {
        let faults = Faults {
            corrupt_frame: Some(3),
            ..Default::default()
        };
        let (wire, notes, ok) = run(faults, false, 0);
        assert_eq!(ok, 3);
        assert_eq!(wire.messages, messages(), "each message once, intact");
        assert_eq!(notes, ["frame 3 sent with a corrupted byte: answered NAK"]);
        let naks = wire
            .events
            .iter()
            .filter(|e| matches!(e, Event::FrameRejected(_)))
            .count();
        assert_eq!(naks, 1);
    }

    #[test]
    fn a_duplicated_frame_is_acked_and_dropped() {
        for pack in [false, true] {
            let faults = Faults {
                duplicate_frame: Some(2),
                ..Default::default()
            };
            let (wire, notes, ok) = run(faults, pack, 0);
            assert_eq!(ok, 3);
            assert_eq!(
                wire.messages,
                messages(),
                "the copy is not a second message"
            );
            assert_eq!(notes, ["frame 2 sent twice: the copy was answered ACK"]);
            assert_eq!(
                wire.events
                    .iter()
                    .filter(|e| **e == Event::DuplicateFrame)
                    .count(),
                1
            );
        }
    }

    #[test]
    fn both_on_one_frame_and_frames_counted_over_the_run() {
        // Frame 5 is in the second message (the first takes 4 frames): the count does not
        // restart per message, and the retransmission after the NAK is not frame 6.
        let faults = Faults {
            corrupt_frame: Some(5),
            duplicate_frame: Some(5),
            ..Default::default()
        };
        let (wire, notes, ok) = run(faults, false, 0);
        assert_eq!(ok, 3);
        assert_eq!(wire.messages, messages());
        assert_eq!(
            notes,
            [
                "frame 5 sent with a corrupted byte: answered NAK",
                "frame 5 sent twice: the copy was answered ACK"
            ]
        );
        let i = Injector::new(Faults {
            corrupt_frame: Some(99),
            ..Default::default()
        });
        assert_eq!(
            i.unapplied(),
            ["--corrupt-frame 99 not applied: the run sent 0 frames"]
        );
    }

    #[test]
    fn an_unanswered_enq_is_given_up_and_sent_again_without_limit() {
        let faults = Faults {
            enq_timeout: Some(Duration::from_millis(20)),
            ..Default::default()
        };
        // More unanswered ENQs than the sender's own limit of attempts (6).
        let (wire, notes, ok) = run(faults, false, 8);
        assert_eq!(ok, 3);
        assert_eq!(wire.messages, messages());
        assert_eq!(notes.len(), 8, "{notes:?}");
        assert!(
            wire.written.starts_with(&[ENQ, EOT, ENQ, EOT]),
            "{:?}",
            &wire.written[..8]
        );
    }
}
