//! Generated transmissions reproducing the quirks of fixtures that cannot be copied into
//! the repository (GPL / Perl licences): huge frames, CR-only and LF-only trailers,
//! non-default delimiters, FN restart, retransmission, Maglumi-style framing, receiver
//! interrupt, busy, line loss.

mod common;

use common::{Buf, Model};
use labagent_hal::astm::frame::{encode_frame, FrameError};
use labagent_hal::astm::receiver::{Receiver, ReceiverConfig};
use labagent_hal::astm::record::{records, summary, Delimiters};
use labagent_hal::astm::{ACK, ENQ, EOT, ETX, NAK, STX};
use labagent_hal::session::{Event, MessageEnd, Reject};
use labagent_hal::time::Instant;

type R = Receiver<Buf>;

fn frame(n: u8, text: &[u8], last: bool, trailer: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; text.len() + 7];
    let l = encode_frame(n, text, last, &mut b).unwrap();
    b.truncate(l - 2);
    b.extend_from_slice(trailer);
    b
}

#[derive(Default, Debug)]
struct Out {
    tx: Vec<u8>,
    model: Model,
    rejects: Vec<Reject>,
}

impl Out {
    fn complete(&self) -> &[(Vec<u8>, MessageEnd)] {
        &self.model.messages
    }
    fn incomplete(&self) -> Vec<Vec<u8>> {
        self.model
            .incomplete
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn feed(r: &mut R, mut bytes: &[u8], out: &mut Out) {
    loop {
        let n = r.handle_input(bytes, Instant::ZERO);
        bytes = &bytes[n..];
        let progressed = pump(r, out);
        if bytes.is_empty() {
            return;
        }
        assert!(n > 0 || progressed, "stuck with {} bytes", bytes.len());
    }
}

fn pump(r: &mut R, out: &mut Out) -> bool {
    let mut buf = [0u8; 8];
    let mut any = false;
    loop {
        let mut p = false;
        if let Some(c) = r.poll_commit() {
            out.model.apply(c);
            r.commit_done(true, Instant::ZERO);
            p = true;
        }
        while let Some(e) = r.poll_event() {
            p = true;
            if let Event::FrameRejected(j) = e {
                out.rejects.push(j)
            }
        }
        while let Some(n) = r.poll_transmit(&mut buf) {
            p = true;
            out.tx.extend_from_slice(&buf[..n]);
        }
        any |= p;
        if !p {
            return any;
        }
    }
}

fn big_message(size: usize, delims: &str) -> Vec<u8> {
    let mut m = format!("H{delims}|||GEN^X|||||||P|1\rP|1||PID||DOE^JANE\rM|1|").into_bytes();
    m.extend((0..size).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"[i % 38]));
    m.extend_from_slice(b"\rL|1|N\r");
    m
}

#[test]
fn huge_frame_with_lf_only_trailer_and_cr_only() {
    for trailer in [&b"\n"[..], b"\r", b"\r\n"] {
        let msg = big_message(26_000, "|@^\\");
        let mut r = R::new(ReceiverConfig::default());
        let mut out = Out::default();
        feed(&mut r, &[ENQ], &mut out);
        feed(&mut r, &frame(1, &msg, true, trailer), &mut out);
        feed(&mut r, &[EOT], &mut out);
        assert_eq!(
            out.tx,
            [ACK, ACK],
            "one reply per frame, trailer {trailer:?}"
        );
        assert_eq!(out.complete(), [(msg.clone(), MessageEnd::Terminator)]);
        let d = Delimiters::from_header(records(&msg).next().unwrap().raw()).unwrap();
        assert_eq!(d.repeat, b'@');
        assert_eq!(summary(&msg).sender.as_deref(), Some(&b"GEN"[..]));
    }
}

#[test]
fn frame_over_max_frame_is_refused_with_bounded_memory() {
    let msg = big_message(5_000, "|\\^&");
    let mut r = R::new(ReceiverConfig {
        max_frame: 1024,
        ..Default::default()
    });
    let mut out = Out::default();
    feed(&mut r, &[ENQ], &mut out);
    feed(&mut r, &frame(1, &msg, true, b"\r\n"), &mut out);
    assert_eq!(out.tx, [ACK, NAK]);
    assert_eq!(out.rejects, [Reject::Frame(FrameError::TooLong)]);
}

#[test]
fn fn_restart_is_new_frame_and_copy_is_dropped() {
    let m1 = b"H|`^&|||MINDRY\rP|1\rL|1|N\r".to_vec();
    let m2 = b"H|`^&|||MINDRY\rP|2\rL|1|N\r".to_vec();
    let mut r = R::new(ReceiverConfig::default());
    let mut out = Out::default();
    feed(&mut r, &[ENQ], &mut out);
    let f1 = frame(1, &m1, true, b"\r\n");
    feed(&mut r, &f1, &mut out);
    feed(&mut r, &f1, &mut out); // retransmission after a lost ACK
    feed(&mut r, &frame(1, &m2, true, b"\r\n"), &mut out); // Mindray restart
    feed(&mut r, &frame(3, b"X\r", true, b"\r\n"), &mut out); // out of sequence
    feed(&mut r, &[EOT], &mut out);
    assert_eq!(out.tx, [ACK, ACK, ACK, ACK, NAK]);
    assert_eq!(out.complete().len(), 2);
    assert_eq!(out.complete()[1].0, m2);
    assert!(matches!(
        out.rejects[0],
        Reject::Sequence { last: 1, got: 3 }
    ));
}

#[test]
fn maglumi_style_frame_without_fn_or_checksum_is_nakked() {
    let mut r = R::new(ReceiverConfig::default());
    let mut out = Out::default();
    let mut wire = vec![ENQ, STX];
    wire.extend_from_slice(b"H|\\^&||PSWD|Maglumi User|||||Lis||P|E1394-97|20260101\rL|1|N\r");
    wire.extend_from_slice(&[ETX, EOT]);
    feed(&mut r, &wire, &mut out);
    assert_eq!(out.tx, [ACK, NAK]);
    assert!(out.complete().is_empty());
}

#[test]
fn message_without_l_ends_at_eot_and_records_over_etb_frames() {
    let rec = vec![b'R'; 600];
    let mut r = R::new(ReceiverConfig::default());
    let mut out = Out::default();
    feed(&mut r, &[ENQ], &mut out);
    feed(&mut r, &frame(1, b"H|\\^&\r", true, b"\r\n"), &mut out);
    for (i, c) in rec.chunks(240).enumerate() {
        let last = (i + 1) * 240 >= rec.len();
        feed(&mut r, &frame(i as u8 + 2, c, last, b"\r\n"), &mut out);
    }
    feed(&mut r, &[EOT], &mut out);
    let mut want = b"H|\\^&\r".to_vec();
    want.extend_from_slice(&rec);
    want.push(b'\r');
    assert_eq!(out.complete(), [(want, MessageEnd::Eot)]);
}

#[test]
fn interrupt_busy_and_line_lost() {
    let mut r = R::new(ReceiverConfig::default());
    let mut out = Out::default();
    r.set_busy(true);
    feed(&mut r, &[ENQ], &mut out);
    r.set_busy(false);
    feed(&mut r, &[ENQ], &mut out);
    r.request_interrupt();
    feed(&mut r, &frame(1, b"H|\\^&\r", true, b"\r\n"), &mut out);
    assert_eq!(out.tx, [NAK, ACK, EOT]);
    feed(&mut r, &frame(2, b"P|1\r", true, b"\r\n"), &mut out);
    r.handle_line_lost(Instant::ZERO);
    pump(&mut r, &mut out);
    assert_eq!(out.incomplete(), [b"H|\\^&\rP|1\r".to_vec()]);
    assert!(!r.is_receiving());
}

#[test]
fn message_over_max_message_is_nakked() {
    let mut r = R::new(ReceiverConfig {
        max_message: 100,
        ..Default::default()
    });
    let mut out = Out::default();
    feed(&mut r, &[ENQ], &mut out);
    feed(&mut r, &frame(1, &[b'A'; 80], false, b"\r\n"), &mut out);
    feed(&mut r, &frame(2, &[b'A'; 80], false, b"\r\n"), &mut out);
    assert_eq!(out.tx, [ACK, ACK, NAK]);
    assert_eq!(out.rejects, [Reject::MessageTooLong]);
    assert!(r.open_len() <= 100);
}
