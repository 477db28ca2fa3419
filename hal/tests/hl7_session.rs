//! The HL7 session on a virtual clock: every fixture committed and acknowledged, the ACK
//! rules by outcome and MSH-15, and orders: ACK matching among other traffic, retries
//! until the last attempt fails, a rejecting instrument, a lost line.

mod common;

use common::{feed, mllp, Buf, Model};
use labagent_hal::hl7::ack::AckMode;
use labagent_hal::hl7::msh::MshView;
use labagent_hal::hl7::session::{Hl7Config, Hl7Session};
#[allow(unused_imports)]
use labagent_hal::session::Session as _;
use labagent_hal::session::{Event, OrderFailure, OrderOutcome, OrderRef, Session};
use labagent_hal::time::{Duration, Instant};
use std::path::Path;

fn session(mode: AckMode) -> Hl7Session<Buf> {
    let mut s = Hl7Session::new(
        Hl7Config {
            max_message: 64 * 1024,
            mode,
            ..Default::default()
        },
        b"T",
    );
    s.set_wall_clock(1_795_874_700);
    s
}

/// The MSA-1 of every ACK in `tx` (MLLP blocks).
fn ack_codes(tx: &[u8]) -> Vec<String> {
    let mut f = labagent_hal::hl7::mllp::MllpFramer::<Buf>::new(64 * 1024);
    common::frame_all(&mut f, tx)
        .into_iter()
        .filter_map(|e| match e {
            common::Framed::Message(m) => {
                let v = MshView::new_checked(&m).unwrap();
                let msa = v.segments().nth(1).unwrap().to_vec();
                Some(String::from_utf8(msa[4..6].to_vec()).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for d in [
        here.join("tests/fixtures/hl7"),
        here.join("../../shared/fixtures/hl7"),
    ] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        for p in v
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(out.len() > 10);
    out
}

#[test]
fn every_fixture_is_committed_whole_then_acknowledged() {
    let mut s = session(AckMode::Original);
    let mut model = Model::default();
    let all = fixtures();
    let mut stream = Vec::new();
    for (_, m) in &all {
        stream.extend_from_slice(&mllp(m));
    }
    // In 7-byte reads, as a slow line would deliver them; a host query holds the input
    // until it is answered (here: "nothing known").
    let mut tx = Vec::new();
    let mut answered = 0;
    for c in stream.chunks(7) {
        let mut rest = c;
        loop {
            let n = s.handle_input(rest, Instant::ZERO);
            rest = &rest[n..];
            tx.extend(common::pump(&mut s, Instant::ZERO, &mut |c| model.apply(c)).0);
            if s.query().is_some() {
                s.answer_query(None, Instant::ZERO).unwrap();
                answered += 1;
                tx.extend(common::pump(&mut s, Instant::ZERO, &mut |_| true).0);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    let want: Vec<Vec<u8>> = all.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(model.texts(), want);
    // A host query (QRY^Q02) gets its answer instead of an ACK (tests/query.rs).
    let is_query =
        |m: &[u8]| labagent_hal::query::hl7_query(&MshView::new_checked(m).unwrap()).is_some();
    let wanted_acks = all
        .iter()
        .filter(|(_, m)| {
            let v = MshView::new_checked(m).unwrap();
            !is_query(m)
                && labagent_hal::hl7::ack::decide_ack(
                    Some(&v),
                    AckMode::Original,
                    labagent_hal::hl7::ack::Outcome::Accepted,
                )
                .is_some()
        })
        .count();
    let codes = ack_codes(&tx);
    let queries = all.iter().filter(|(_, m)| is_query(m)).count();
    assert_eq!(answered, queries, "each query waited for its answer");
    // The ACKs, and the queries' "nothing known" answers (MSA-1 AA as well).
    assert_eq!(codes.len(), wanted_acks + queries);
    assert!(codes.iter().all(|c| c == "AA" || c == "CA"), "{codes:?}");
}

#[test]
fn refused_commits_and_enhanced_mode() {
    let msg = b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|7|P|2.5\rPID|1\r";
    for (mode, ok, want) in [
        (AckMode::Original, true, "AA"),
        (AckMode::Original, false, "AR"),
        (AckMode::Enhanced, true, "CA"),
        (AckMode::Enhanced, false, "CE"),
    ] {
        let mut s = session(mode);
        let (tx, ev) = feed(&mut s, &mllp(msg), Instant::ZERO, &mut |_| ok);
        assert_eq!(ack_codes(&tx), [want]);
        assert!(ev.contains(if ok {
            &Event::Accepted { messages: 1 }
        } else {
            &Event::Refused
        }));
    }
    // MSH-15 NE: no ACK at all.
    let ne = b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|7|P|2.5|||NE|NE\rPID|1\r";
    let mut s = session(AckMode::Original);
    let (tx, _) = feed(&mut s, &mllp(ne), Instant::ZERO, &mut |_| true);
    assert!(tx.is_empty());
    // Too large: not committed, AE.
    let mut s = Hl7Session::<Buf>::new(
        Hl7Config {
            max_message: 20,
            ..Default::default()
        },
        b"T",
    );
    let mut commits = 0;
    let (tx, ev) = feed(&mut s, &mllp(msg), Instant::ZERO, &mut |_| {
        commits += 1;
        true
    });
    assert_eq!(commits, 0);
    assert_eq!(ack_codes(&tx), ["AE"]);
    assert!(ev.contains(&Event::TooLarge { len: msg.len() }));
}

const ORDER: &[u8] = b"MSH|^~\\&|LIS|L|AN|A|2024||OML^O33|ORD-9|P|2.5\rORC|NW|1\r";

fn outcome(ev: &[Event]) -> Option<OrderOutcome> {
    ev.iter().find_map(|e| match e {
        Event::Order(_, o) => Some(*o),
        _ => None,
    })
}

#[test]
fn an_order_retried_on_silence_and_ar_fails_on_its_last_attempt() {
    let mut s = session(AckMode::Original);
    let mut now = Instant::ZERO;
    s.orders_waiting(true);
    let policy = Hl7Config::default().orders;
    for attempt in 0..policy.max_attempts {
        assert!(s.order_wanted(now), "attempt {attempt}");
        s.send_order(
            OrderRef {
                handle: 3,
                attempts: attempt,
            },
            ORDER,
            now,
        )
        .unwrap();
        let (tx, _) = common::pump(&mut s, now, &mut |_| true);
        assert_eq!(tx, mllp(ORDER));
        let ev = if attempt % 2 == 0 {
            // Silence: the ACK timer (30 s) fires.
            assert!(common::advance(&mut s, &mut now));
            common::pump(&mut s, now, &mut |_| true).1
        } else {
            // AR: the instrument cannot take it now.
            let ar = b"MSH|^~\\&|AN|A|LIS|L|2024||ACK|X|P|2.5\rMSA|AR|ORD-9\r";
            feed(&mut s, &mllp(ar), now, &mut |_| {
                panic!("an ACK is not committed")
            })
            .1
        };
        let o = outcome(&ev).unwrap();
        if attempt + 1 < policy.max_attempts {
            assert!(matches!(o, OrderOutcome::Retry(_)), "{o:?}");
            assert!(!s.order_wanted(now));
            assert_eq!(s.poll_timeout(), Some(now + policy.retry_wait));
            assert!(common::advance(&mut s, &mut now));
        } else {
            assert_eq!(o, OrderOutcome::Failed(OrderFailure::NoAck));
        }
    }
}

#[test]
fn ae_fails_at_once_and_a_lost_line_retries() {
    let mut s = session(AckMode::Original);
    let now = Instant::ZERO;
    s.orders_waiting(true);
    s.send_order(
        OrderRef {
            handle: 1,
            attempts: 0,
        },
        ORDER,
        now,
    )
    .unwrap();
    common::pump(&mut s, now, &mut |_| true);
    let ae = b"MSH|^~\\&|AN|A|LIS|L|2024||ACK|X|P|2.5\rMSA|AE|ORD-9|bad test\r";
    let (_, ev) = feed(&mut s, &mllp(ae), now, &mut |_| true);
    assert_eq!(
        outcome(&ev),
        Some(OrderOutcome::Failed(OrderFailure::Rejected(*b"AE")))
    );
    // An ACK for some other id is an ordinary message: committed and acknowledged.
    s.send_order(
        OrderRef {
            handle: 2,
            attempts: 0,
        },
        ORDER,
        now,
    )
    .unwrap();
    common::pump(&mut s, now, &mut |_| true);
    let other = b"MSH|^~\\&|AN|A|LIS|L|2024||ACK|X|P|2.5\rMSA|AA|OTHER\r";
    let mut commits = 0;
    let (tx, ev) = feed(&mut s, &mllp(other), now, &mut |_| {
        commits += 1;
        true
    });
    assert_eq!((commits, outcome(&ev)), (1, None));
    assert_eq!(ack_codes(&tx), ["AA"]);
    s.handle_line_lost(now + Duration::from_secs(1));
    let (_, ev) = common::pump(&mut s, now, &mut |_| true);
    assert_eq!(
        outcome(&ev),
        Some(OrderOutcome::Retry(OrderFailure::LineLost))
    );
    assert_eq!(
        s.send_order(
            OrderRef {
                handle: 4,
                attempts: 0
            },
            b"PID|1\r",
            now
        ),
        Err(OrderFailure::Invalid)
    );
}
