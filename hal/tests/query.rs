//! Host queries on a virtual clock: the real query exchanges of the fixtures through the
//! ASTM link and the HL7 session — specimens read from Q-3 / QRD-8 / QPD-3, the answer sent
//! after the query's EOT (or in place of the HL7 ACK), "nothing known" at the deadline,
//! contention during the answer, the instrument's ACKs of an HL7 answer absorbed.

mod common;

use common::{feed, mllp, pump, Buf, Model};
use labagent_hal::astm::frame::{encode_frame, Decoded, FrameDecoder};
use labagent_hal::astm::link::{Link, LinkConfig, NOTHING_KNOWN};
use labagent_hal::astm::{ACK, ENQ, EOT};
use labagent_hal::hl7::msh::MshView;
use labagent_hal::hl7::session::{Hl7Config, Hl7Session};
use labagent_hal::session::{Event, Session};
use labagent_hal::time::{Duration, Instant};
use std::path::Path;

fn shared(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures")
            .join(rel),
    )
    .ok()
}

fn ids(s: &labagent_hal::query::Specimens) -> Vec<String> {
    s.iter()
        .map(|i| String::from_utf8_lossy(i).into_owned())
        .collect()
}

/// What an instrument receives from the host as records: ACKs every frame, collects text.
fn receive_answer(link: &mut Link<Buf>, now: Instant) -> Vec<u8> {
    let mut dec = FrameDecoder::<heapless::Vec<u8, 512>>::new(300);
    let mut text = Vec::new();
    let mut buf = vec![0u8; link.max_transmit()];
    for _ in 0..1000 {
        let Some(n) = link.poll_transmit(&mut buf) else {
            break;
        };
        let mut reply = None;
        for &b in &buf[..n] {
            match b {
                ENQ => reply = Some(ACK),
                EOT => return text,
                _ => {
                    if let Decoded::Frame(f) = dec.push(b) {
                        text.extend_from_slice(f.text);
                        reply = Some(ACK);
                    }
                }
            }
        }
        if let Some(r) = reply {
            link.handle_input(&[r], now);
        }
    }
    text
}

/// ENQ and one ETX frame of `records` (the caller adds EOT and what follows).
fn one_frame(records: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; records.len() + 16];
    let n = encode_frame(1, records, true, &mut f).unwrap();
    let mut wire = vec![ENQ];
    wire.extend_from_slice(&f[..n]);
    wire
}

/// Feeds a wire capture (ENQ … EOT) to the link, committing everything.
fn query_in(link: &mut Link<Buf>, wire: &[u8], now: Instant) -> (Model, Vec<Event>) {
    let mut model = Model::default();
    let (_, ev) = feed(link, wire, now, &mut |c| model.apply(c));
    (model, ev)
}

#[test]
fn vitros_query_is_answered_with_exactly_the_cached_order() {
    let Some(wire) = shared("astm-wire/nish_ortho_vitros3600_query.bin") else {
        return;
    };
    let mut link = Link::<Buf>::new(LinkConfig::default());
    let t0 = Instant::from_millis(1000);
    let (model, ev) = query_in(&mut link, &wire, t0);
    assert_eq!(
        model.messages.len(),
        1,
        "the query is stored like any message"
    );
    assert!(ev.contains(&Event::Query));
    assert_eq!(ids(link.query().unwrap()), ["1068687"]);
    assert!(!link.order_wanted(t0), "the answer goes before any order");
    // The order download without the LIS's stray frame digits ("2P|" …).
    let order = b"H|\\^&|||3600796||||||||LIS2-A|20201121111002\rP|1|||||||\rO|1|1068687||^^^1.0000+002+1.0|R||20201121111002||||N||||5||||||||||O\rL|1|N\r";
    link.answer_query(Some(order), t0).unwrap();
    assert_eq!(receive_answer(&mut link, t0), order.to_vec());
    let (_, ev) = pump(&mut link, t0, &mut |_| true);
    assert!(ev.contains(&Event::QueryAnswered { delivered: true }));
    assert!(link.query().is_none() && link.is_quiet());
}

#[test]
fn erba_five_specimens_and_roche_third_component() {
    for (file, want) in [
        (
            "astm-wire/nish_erba_xl1000_multiquery_recon.bin",
            vec!["1007149", "1007152", "1007151", "1007150", "1007148"],
        ),
        (
            "astm-wire/rubyastm_roche_e411_query_recon.bin",
            vec!["0000000387"],
        ),
    ] {
        let Some(wire) = shared(file) else { continue };
        let mut link = Link::<Buf>::new(LinkConfig::default());
        let mut wire = wire;
        if !wire.contains(&ENQ) {
            wire.insert(0, ENQ);
        }
        if !wire.contains(&EOT) {
            wire.push(EOT);
        }
        query_in(&mut link, &wire, Instant::ZERO);
        assert_eq!(ids(link.query().expect(file)), want, "{file}");
    }
}

#[test]
fn no_answer_by_the_deadline_means_no_information() {
    let cfg = LinkConfig {
        query_timeout: Duration::from_millis(3000),
        ..Default::default()
    };
    let mut link = Link::<Buf>::new(cfg);
    let mut wire = one_frame(b"H|\\^&\rQ|1|^S42||ALL\rL|1|N\r");
    wire.push(EOT);
    let t0 = Instant::from_millis(500);
    query_in(&mut link, &wire, t0);
    assert_eq!(ids(link.query().unwrap()), ["S42"]);
    assert_eq!(link.poll_timeout(), Some(t0 + Duration::from_millis(3000)));
    let mut buf = vec![0u8; link.max_transmit()];
    assert!(
        link.poll_transmit(&mut buf).is_none(),
        "silent until answered or the deadline"
    );
    let mut now = t0;
    assert!(common::advance(&mut link, &mut now));
    assert_eq!(receive_answer(&mut link, now), NOTHING_KNOWN.to_vec());
}

#[test]
fn contention_during_the_answer_sends_it_after_the_instruments_transmission() {
    let mut link = Link::<Buf>::new(LinkConfig::default());
    let mut wire = one_frame(b"H|\\^&\rQ|1|^S1||ALL\rL|1|N\r");
    wire.push(EOT);
    let t = Instant::ZERO;
    query_in(&mut link, &wire, t);
    link.answer_query(Some(b"H|\\^&\rO|1|S1\rL|1|N\r"), t)
        .unwrap();
    let mut buf = vec![0u8; link.max_transmit()];
    assert_eq!(link.poll_transmit(&mut buf), Some(1));
    assert_eq!(buf[0], ENQ);
    // The instrument bids at the same time and wins; it sends a result.
    let mut inst = one_frame(b"H|\\^&\rR|1|x\rL|1|N\r");
    inst.push(EOT);
    // (Fed without taking what the link writes: the answer's ENQ is read below.)
    let mut model = Model::default();
    let mut rest = &inst[..];
    let mut events = Vec::new();
    while !rest.is_empty() {
        let n = link.handle_input(rest, t);
        rest = &rest[n..];
        if let Some(c) = link.poll_commit() {
            model.apply(c);
            link.commit_done(true, t);
        }
        while let Some(e) = link.poll_event() {
            events.push(e);
        }
    }
    assert!(events.contains(&Event::Contention));
    assert_eq!(model.messages.len(), 1);
    // Then our answer goes at once (no 20 s wait: the instrument is waiting for it).
    assert_eq!(
        receive_answer(&mut link, t),
        b"H|\\^&\rO|1|S1\rL|1|N\r".to_vec()
    );
}

fn block_messages(tx: &[u8]) -> Vec<Vec<u8>> {
    let mut f = labagent_hal::hl7::mllp::MllpFramer::<Buf>::new(64 * 1024);
    common::frame_all(&mut f, tx)
        .into_iter()
        .filter_map(|e| match e {
            common::Framed::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn segment<'a>(m: &'a [u8], id: &[u8]) -> &'a [u8] {
    m.split(|&b| b == b'\r')
        .find(|s| s.starts_with(id))
        .unwrap_or(&[])
}

#[test]
fn mindray_qry_is_answered_with_qck_and_dsr_and_the_dsr_ack_is_absorbed() {
    let Some(qry) = shared("hl7/mindray_cl2000i_qry_1.hl7") else {
        return;
    };
    let dsr = shared("hl7/mindray_cl2000i_dsr_1.hl7").unwrap();
    let mut s = Hl7Session::<Buf>::new(Hl7Config::default(), b"T");
    s.set_wall_clock(1_795_874_700);
    let mut model = Model::default();
    let (tx, ev) = feed(&mut s, &mllp(&qry), Instant::ZERO, &mut |c| model.apply(c));
    assert!(tx.is_empty(), "no plain ACK for a query");
    assert!(ev.contains(&Event::Query));
    assert_eq!(model.messages.len(), 1);
    assert_eq!(ids(s.query().unwrap()), ["0019"]);
    let qck = b"MSH|^~\\&|||||20120508110131||QCK^Q02|3|P|2.3.1||||||ASCII|||\rMSA|AA|4|Message accepted|||0|\rERR|0|\rQAK|SR|OK|\r";
    let mut answer = qck.to_vec();
    answer.extend_from_slice(&dsr);
    s.answer_query(Some(&answer), Instant::ZERO).unwrap();
    let (tx, ev) = pump(&mut s, Instant::ZERO, &mut |_| true);
    assert!(ev.contains(&Event::QueryAnswered { delivered: true }));
    let msgs = block_messages(&tx);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0], qck.to_vec());
    assert!(msgs[1].starts_with(b"MSH|^~\\&|||||20120508110131||DSR^Q03|4|"));
    // The instrument ACKs the DSR (MSA-2 = its MSH-10, 4): not stored, not ACKed.
    let ack = b"MSH|^~\\&|||||20120508110132||ACK^Q03|5|P|2.3.1\rMSA|AA|4\r";
    let mut commits = 0;
    let (tx, _) = feed(&mut s, &mllp(ack), Instant::ZERO, &mut |_| {
        commits += 1;
        true
    });
    assert_eq!((commits, tx.len()), (0, 0));
}

#[test]
fn qbp_unanswered_gets_rsp_k11_nf_echoing_msh10_and_qpd() {
    let qbp = b"MSH|^~\\&|AN|A|LIS|L|2024||QBP^Q11^QBP_Q11|Q77|P|2.5.1\rQPD|WOS^Work Order Step^IHE_LABTF|TAG1|S123\rRCP|I||R\r";
    let mut s = Hl7Session::<Buf>::new(
        Hl7Config {
            query_timeout: Duration::from_millis(2000),
            ..Default::default()
        },
        b"T",
    );
    s.set_wall_clock(1_795_874_700);
    let t0 = Instant::from_millis(100);
    let (tx, _) = feed(&mut s, &mllp(qbp), t0, &mut |_| true);
    assert!(tx.is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(2000)));
    let mut now = t0;
    assert!(common::advance(&mut s, &mut now));
    let (tx, ev) = pump(&mut s, now, &mut |_| true);
    assert!(ev.contains(&Event::QueryAnswered { delivered: true }));
    let msgs = block_messages(&tx);
    assert_eq!(msgs.len(), 1);
    let v = MshView::new_checked(&msgs[0]).unwrap();
    assert_eq!(v.message_type().code, b"RSP");
    assert_eq!(v.message_type().trigger, b"K11");
    assert_eq!(segment(&msgs[0], b"MSA"), b"MSA|AA|Q77");
    assert_eq!(segment(&msgs[0], b"QAK"), b"QAK|TAG1|NF");
    assert_eq!(
        segment(&msgs[0], b"QPD"),
        b"QPD|WOS^Work Order Step^IHE_LABTF|TAG1|S123"
    );
    // An answer that is not HL7 becomes "nothing known" too.
    let mut s = Hl7Session::<Buf>::new(Hl7Config::default(), b"T");
    feed(&mut s, &mllp(qbp), t0, &mut |_| true);
    assert!(s.answer_query(Some(b"not hl7"), t0).is_err());
    let (tx, _) = pump(&mut s, t0, &mut |_| true);
    assert_eq!(segment(&block_messages(&tx)[0], b"QAK"), b"QAK|TAG1|NF");
}

#[test]
fn a_receive_only_link_drops_the_query_at_its_deadline_without_spinning() {
    let cfg = LinkConfig {
        sender: labagent_hal::astm::sender::SenderConfig {
            max_message: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut link = Link::<Buf>::new(cfg);
    let mut f = vec![0u8; 300];
    let n = encode_frame(1, b"H|\\^&\rQ|1|^S9||ALL\rL|1|N\r", true, &mut f).unwrap();
    let mut wire = vec![ENQ];
    wire.extend_from_slice(&f[..n]);
    wire.push(EOT);
    query_in(&mut link, &wire, Instant::ZERO);
    let mut now = Instant::ZERO;
    assert!(common::advance(&mut link, &mut now));
    let (_, ev) = pump(&mut link, now, &mut |_| true);
    assert!(ev.contains(&Event::QueryAnswered { delivered: false }));
    assert_eq!(link.poll_timeout(), None, "nothing left to wake for");
    assert!(link.is_quiet());
}

/// The query's frames: `text` cut every `size` bytes (ETB, ETX on the last), FN from 1.
fn frames_of(text: &[u8], size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = text.chunks(size).collect();
    let mut out = vec![0u8; size + 16];
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let n = encode_frame(((i + 1) % 8) as u8, c, i + 1 == chunks.len(), &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

#[test]
fn q_records_cut_across_frames_refused_commits_and_eot_without_l_give_the_same_specimens() {
    // Five specimens in one Q record (Erba's repeat delimiter), a second query message
    // ended by EOT without an L, and a result message with no Q record between them.
    let text = b"H|`^&|||XL^1\rQ|1|1007149`1007152`1007151^^x|||ALL\rL|1|N\rH|\\^&\rR|1|^^^GLU|5\rL|1\rH|\\^&\rQ|1|^S9||ALL\r";
    let want = ["1007149", "1007152", "1007151", "S9"];
    for size in 1..=text.len() {
        for refuse_every in [0usize, 2, 3] {
            let mut link = Link::<Buf>::new(LinkConfig::default());
            let t = Instant::ZERO;
            let mut model = Model::default();
            let mut commits = 0usize;
            let mut answer = |c: labagent_hal::session::Commit<'_>| {
                commits += 1;
                if refuse_every > 0 && commits % refuse_every == 0 {
                    return false;
                }
                model.apply(c)
            };
            feed(&mut link, &[ENQ], t, &mut answer);
            for f in frames_of(text, size) {
                // A refused commit is NAKed: the instrument sends the frame again.
                loop {
                    let (tx, _) = feed(&mut link, &f, t, &mut answer);
                    if tx.last() == Some(&ACK) {
                        break;
                    }
                }
            }
            // The EOT's commit (closing the open query) is taken.
            let mut answer = |c: labagent_hal::session::Commit<'_>| model.apply(c);
            feed(&mut link, &[EOT], t, &mut answer);
            let got = link.query().map(ids).unwrap_or_default();
            assert_eq!(got, want, "frames of {size}, refusing every {refuse_every}");
        }
    }
}

#[test]
fn a_query_whose_eot_and_the_next_enq_come_in_one_read_is_not_lost() {
    let mut link = Link::<Buf>::new(LinkConfig::default());
    let mut wire = one_frame(b"H|\\^&\rQ|1|^S5||ALL\rL|1|N\r");
    // EOT, and at once the ENQ of the instrument's next transmission.
    wire.extend_from_slice(&[EOT, ENQ]);
    let mut model = Model::default();
    let mut rest = &wire[..];
    let t = Instant::ZERO;
    while !rest.is_empty() {
        let n = link.handle_input(rest, t);
        rest = &rest[n..];
        if let Some(c) = link.poll_commit() {
            model.apply(c);
            link.commit_done(true, t);
        }
        while link.poll_event().is_some() {}
        let mut buf = [0u8; 64];
        while link.poll_transmit(&mut buf).is_some() {}
    }
    assert_eq!(model.messages.len(), 1);
    assert_eq!(link.query().map(ids), Some(vec!["S5".to_string()]));
}
