//! The host's ASTM link on a virtual clock: contention both ways, order attempts and
//! their timers, the receive timer, a lost line, stopping. An instrument is played with
//! the hal's own sender and receiver; the wire between them is a pair of byte queues.

mod common;

use common::{Buf, Model};
use labagent_hal::astm::link::{Link, LinkConfig};
use labagent_hal::astm::receiver::{Receiver, ReceiverConfig};
use labagent_hal::astm::sender::{Event as SendEvent, Sender, SenderConfig};
use labagent_hal::astm::{ACK, ENQ, EOT, NAK};
use labagent_hal::session::{Event, MessageEnd, OrderFailure, OrderOutcome, OrderRef, Session};
use labagent_hal::time::{Duration, Instant};

const ORDER: &[u8] = b"H|\\^&\rP|1\rO|1|S1||^^^GLU\rL|1|N\r";
const RESULT: &[u8] = b"H|\\^&|||Analyzer^1\rP|1\rR|1|^^^GLU|5.5|mmol/L\rL|1|N\r";

fn order(attempts: u32) -> OrderRef {
    OrderRef {
        handle: 1,
        attempts,
    }
}

/// Host and instrument, a virtual clock, and what each side saw.
struct Bench {
    host: Link<Buf>,
    model: Model,
    events: Vec<Event>,
    inst_tx: Sender<Buf>,
    inst_rx: Receiver<Buf>,
    inst_model: Model,
    inst_events: Vec<SendEvent>,
    /// Bytes in flight: host → instrument, instrument → host.
    to_inst: Vec<u8>,
    to_host: Vec<u8>,
    now: Instant,
    /// What went over the wire, for assertions: (from host?, byte).
    wire: Vec<(bool, u8)>,
}

impl Bench {
    fn new(cfg: LinkConfig) -> Self {
        Bench {
            host: Link::new(cfg),
            model: Model::default(),
            events: Vec::new(),
            inst_tx: Sender::new(SenderConfig::default()),
            inst_rx: Receiver::new(ReceiverConfig::default()),
            inst_model: Model::default(),
            inst_events: Vec::new(),
            to_inst: Vec::new(),
            to_host: Vec::new(),
            now: Instant::ZERO,
            wire: Vec::new(),
        }
    }

    /// Everything both sides do without the clock moving.
    fn settle(&mut self) {
        let mut hbuf = vec![0u8; self.host.max_transmit()];
        let mut ibuf = vec![0u8; self.inst_tx.max_transmit()];
        for _ in 0..100_000 {
            let mut p = false;
            let n = self.host.handle_input(&self.to_host, self.now);
            self.to_host.drain(..n);
            p |= n > 0;
            if let Some(c) = self.host.poll_commit() {
                let ok = self.model.apply(c);
                self.host.commit_done(ok, self.now);
                p = true;
            }
            while let Some(n) = self.host.poll_transmit(&mut hbuf) {
                self.to_inst.extend_from_slice(&hbuf[..n]);
                self.wire.extend(hbuf[..n].iter().map(|&b| (true, b)));
                p = true;
            }
            while let Some(e) = self.host.poll_event() {
                self.events.push(e);
                p = true;
            }
            // The instrument: replies go to its sender while it sends, else to its receiver.
            if !self.to_inst.is_empty() {
                let bytes: Vec<u8> = self.to_inst.drain(..).collect();
                if self.inst_tx.is_idle() {
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let n = self.inst_rx.handle_input(rest, self.now);
                        rest = &rest[n..];
                        if let Some(c) = self.inst_rx.poll_commit() {
                            self.inst_model.apply(c);
                            self.inst_rx.commit_done(true, self.now);
                        }
                        while self.inst_rx.poll_event().is_some() {}
                    }
                } else {
                    self.inst_tx.handle_input(&bytes, self.now);
                }
                p = true;
            }
            while let Some(n) = self.inst_rx.poll_transmit(&mut ibuf) {
                self.to_host.extend_from_slice(&ibuf[..n]);
                self.wire.extend(ibuf[..n].iter().map(|&b| (false, b)));
                p = true;
            }
            while let Some(n) = self.inst_tx.poll_transmit(&mut ibuf) {
                self.to_host.extend_from_slice(&ibuf[..n]);
                self.wire.extend(ibuf[..n].iter().map(|&b| (false, b)));
                p = true;
            }
            while let Some(e) = self.inst_tx.poll_event() {
                self.inst_events.push(e);
                p = true;
            }
            if !p {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Jumps to the next deadline of either side and fires it.
    fn tick(&mut self) -> bool {
        let next = [
            self.host.poll_timeout(),
            self.inst_tx.poll_timeout(),
            self.inst_rx.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next else { return false };
        self.now = self.now.max(t);
        self.host.handle_timeout(self.now);
        self.inst_tx.handle_timeout(self.now);
        self.inst_rx.handle_timeout(self.now);
        self.settle();
        true
    }

    fn order_outcomes(&self) -> Vec<OrderOutcome> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Order(_, o) => Some(*o),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn an_order_is_delivered_on_a_quiet_line() {
    let mut b = Bench::new(LinkConfig::default());
    assert!(!b.host.order_wanted(b.now), "no order waiting");
    b.host.orders_waiting(true);
    assert!(b.host.order_wanted(b.now));
    b.host
        .send_order(order(0), b"H|\\^&\nP|1\nO|1|S1||^^^GLU\nL|1|N", b.now)
        .unwrap();
    b.settle();
    assert_eq!(b.order_outcomes(), [OrderOutcome::Delivered]);
    assert_eq!(
        b.inst_model.texts(),
        [ORDER.to_vec()],
        "LF line ends became CR"
    );
    assert!(b.host.is_quiet());
}

#[test]
fn contention_the_instrument_wins_and_the_order_waits_20s() {
    let mut b = Bench::new(LinkConfig::default());
    b.host.orders_waiting(true);
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    // Both ENQs cross on the wire: the instrument starts before it sees ours.
    let mut hbuf = [0u8; 300];
    let n = b.host.poll_transmit(&mut hbuf).unwrap();
    assert_eq!(&hbuf[..n], [ENQ]);
    b.inst_tx.send(RESULT, b.now).unwrap();
    let mut ibuf = [0u8; 300];
    let n = b.inst_tx.poll_transmit(&mut ibuf).unwrap();
    assert_eq!(&ibuf[..n], [ENQ]);
    // The instrument ignores our ENQ (it waits for the reply to its own) ...
    b.inst_tx.handle_input(&[ENQ], b.now);
    assert_eq!(
        b.inst_tx.poll_event(),
        Some(SendEvent::Contention),
        "the simulator's sender holds its message"
    );
    b.inst_tx.start(b.now);
    let _ = b.inst_tx.poll_transmit(&mut ibuf);
    // ... and ours sees its ENQ: we yield, answer it, and take its message.
    b.to_host.push(ENQ);
    b.settle();
    assert!(b.events.contains(&Event::Contention));
    assert_eq!(b.order_outcomes(), [OrderOutcome::Deferred]);
    assert_eq!(b.model.texts(), [RESULT.to_vec()]);
    // No new ENQ of ours for 20 s, although the line is quiet again.
    assert!(!b.host.order_wanted(b.now));
    assert_eq!(
        b.host.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(20))
    );
    b.tick();
    assert!(b.host.order_wanted(b.now));
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    b.settle();
    assert_eq!(
        b.order_outcomes(),
        [OrderOutcome::Deferred, OrderOutcome::Delivered]
    );
}

#[test]
fn contention_a_strict_instrument_asks_again_and_is_answered() {
    // The instrument's ENQ crossed ours.
    let mut b = Bench::new(LinkConfig::default());
    b.host.orders_waiting(true);
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    let mut hbuf = [0u8; 300];
    b.host.poll_transmit(&mut hbuf).unwrap();
    b.to_host.push(ENQ);
    b.settle();
    assert_eq!(b.wire.iter().filter(|w| **w == (true, ACK)).count(), 1);
    // LIS1-A to the letter: it did not take that ACK for a reply, waits, asks again.
    b.now += Duration::from_secs(1);
    b.to_host.push(ENQ);
    b.settle();
    assert_eq!(
        b.wire.iter().filter(|w| **w == (true, ACK)).count(),
        2,
        "answered again"
    );
    // Once a frame has arrived, a stray ENQ is no longer answered.
    let mut f = vec![0u8; 64];
    let n = labagent_hal::astm::frame::encode_frame(1, b"H|\\^&\r", false, &mut f).unwrap();
    b.to_host.extend_from_slice(&f[..n]);
    b.settle();
    b.to_host.push(ENQ);
    b.settle();
    assert_eq!(
        b.wire.iter().filter(|w| **w == (true, ACK)).count(),
        3,
        "the frame's ACK only"
    );
}

#[test]
fn while_the_instrument_sends_no_order_starts() {
    let mut b = Bench::new(LinkConfig::default());
    b.inst_tx.send(RESULT, b.now).unwrap();
    let mut ibuf = [0u8; 300];
    let n = b.inst_tx.poll_transmit(&mut ibuf).unwrap();
    b.to_host.extend_from_slice(&ibuf[..n]);
    // The instrument's ENQ is in; an order becomes known.
    let taken = b.host.handle_input(&b.to_host.clone(), b.now);
    b.to_host.drain(..taken);
    b.host.orders_waiting(true);
    assert!(!b.host.order_wanted(b.now), "the line is the instrument's");
    b.settle();
    assert_eq!(b.model.texts(), [RESULT.to_vec()]);
    assert!(
        b.host.order_wanted(b.now),
        "neutral again: the order may go"
    );
}

#[test]
fn busy_instrument_then_no_reply_retries_then_fails_the_last_attempt() {
    let cfg = LinkConfig::default();
    let mut b = Bench::new(cfg.clone());
    b.host.orders_waiting(true);
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    // The instrument is not there: every ENQ times out (15 s), EOT, 10 s, ENQ again.
    b.inst_rx.set_busy(true);
    while b.order_outcomes().is_empty() {
        assert!(b.tick() || !b.to_inst.is_empty());
    }
    assert_eq!(
        b.order_outcomes(),
        [OrderOutcome::Retry(OrderFailure::NotEstablished)]
    );
    let enqs = b.wire.iter().filter(|w| **w == (true, ENQ)).count();
    assert_eq!(enqs as u32, cfg.sender.max_retries, "six ENQs, each NAKed");
    assert!(b.wire.contains(&(false, NAK)));
    // The retry waits 30 s; the fifth attempt in total is the last.
    let failed_at = b.now;
    assert!(!b.host.order_wanted(b.now));
    assert_eq!(
        b.host.poll_timeout(),
        Some(failed_at + cfg.orders.retry_wait)
    );
    b.tick();
    assert!(b.host.order_wanted(b.now));
    b.host.send_order(order(4), ORDER, b.now).unwrap();
    while b.order_outcomes().len() < 2 {
        assert!(b.tick());
    }
    assert_eq!(
        b.order_outcomes()[1],
        OrderOutcome::Failed(OrderFailure::NotEstablished)
    );
}

#[test]
fn no_reply_to_a_frame_and_an_interrupt() {
    let mut b = Bench::new(LinkConfig::default());
    b.host.orders_waiting(true);
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    // The instrument answers the ENQ, then goes silent.
    let mut hbuf = [0u8; 300];
    b.host.poll_transmit(&mut hbuf).unwrap();
    b.to_host.push(ACK);
    let taken = b.host.handle_input(&b.to_host.clone(), b.now);
    b.to_host.drain(..taken);
    let n = b.host.poll_transmit(&mut hbuf).unwrap();
    assert!(n > 7, "the first frame");
    let deadline = b.host.poll_timeout().unwrap();
    assert_eq!(deadline, b.now + Duration::from_secs(15));
    b.now = deadline;
    b.host.handle_timeout(b.now);
    assert_eq!(b.host.poll_transmit(&mut hbuf), Some(1));
    assert_eq!(hbuf[0], EOT);
    let mut seen = vec![];
    while let Some(e) = b.host.poll_event() {
        seen.push(e);
    }
    assert_eq!(
        seen,
        [Event::Order(
            order(0),
            OrderOutcome::Retry(OrderFailure::NoReply)
        )]
    );
    // Next attempt: the instrument interrupts after the first frame (EOT as its reply).
    b.now += Duration::from_secs(30);
    b.host.send_order(order(1), ORDER, b.now).unwrap();
    b.host.poll_transmit(&mut hbuf).unwrap();
    b.host.handle_input(&[ACK], b.now);
    b.host.poll_transmit(&mut hbuf).unwrap();
    b.host.handle_input(&[EOT], b.now);
    assert_eq!(b.host.poll_transmit(&mut hbuf), Some(1));
    assert_eq!(hbuf[0], EOT);
    assert_eq!(
        b.host.poll_event(),
        Some(Event::Order(
            order(1),
            OrderOutcome::Retry(OrderFailure::Interrupted)
        ))
    );
}

#[test]
fn receive_timer_and_lost_line_keep_the_message_incomplete() {
    let mut b = Bench::new(LinkConfig::default());
    // Two frames of a message, then silence.
    let mut f = vec![0u8; 300];
    b.to_host.push(ENQ);
    let n = labagent_hal::astm::frame::encode_frame(1, b"H|\\^&\rP|1\r", false, &mut f).unwrap();
    b.to_host.extend_from_slice(&f[..n]);
    b.settle();
    assert_eq!(b.host.poll_timeout(), Some(b.now + Duration::from_secs(30)));
    b.tick();
    assert!(b.events.contains(&Event::TimedOut));
    assert_eq!(
        b.model.incomplete,
        [(b"H|\\^&\rP|1\r".to_vec(), MessageEnd::Timeout)]
    );
    // Again, and the line is lost during an order's transfer.
    b.to_host.push(ENQ);
    b.to_host.extend_from_slice(&f[..n]);
    b.settle();
    b.host.handle_line_lost(b.now);
    b.settle();
    assert_eq!(b.model.incomplete.len(), 2);
    assert_eq!(b.model.incomplete[1].1, MessageEnd::LineLost);
    b.host.orders_waiting(true);
    b.host.send_order(order(0), ORDER, b.now).unwrap();
    b.host.handle_line_lost(b.now);
    assert_eq!(
        b.order_outcomes_after_drain(),
        [OrderOutcome::Retry(OrderFailure::LineLost)]
    );
}

impl Bench {
    fn order_outcomes_after_drain(&mut self) -> Vec<OrderOutcome> {
        while let Some(e) = self.host.poll_event() {
            self.events.push(e);
        }
        self.order_outcomes()
    }
}

#[test]
fn stopping_refuses_new_transmissions_but_finishes_one_in_progress() {
    let mut b = Bench::new(LinkConfig::default());
    b.to_host.push(ENQ);
    let mut f = vec![0u8; 300];
    let n = labagent_hal::astm::frame::encode_frame(1, b"H|\\^&\r", false, &mut f).unwrap();
    b.to_host.extend_from_slice(&f[..n]);
    b.settle();
    b.host.set_stopping(true);
    assert!(!b.host.is_quiet(), "a transmission is in progress");
    let n = labagent_hal::astm::frame::encode_frame(2, b"L|1\r", true, &mut f).unwrap();
    b.to_host.extend_from_slice(&f[..n]);
    b.to_host.push(EOT);
    b.settle();
    assert!(b.host.is_quiet());
    assert_eq!(b.model.texts(), [b"H|\\^&\rL|1\r".to_vec()]);
    b.to_host.push(ENQ);
    b.settle();
    assert_eq!(b.wire.last(), Some(&(true, NAK)));
    assert!(b.events.contains(&Event::RefusedBusy));
    b.host.orders_waiting(true);
    assert!(!b.host.order_wanted(b.now));
}

#[test]
fn a_frame_completing_two_messages_commits_both_pieces_at_once() {
    let mut b = Bench::new(LinkConfig::default());
    b.to_host.push(ENQ);
    let mut f = vec![0u8; 300];
    let n = labagent_hal::astm::frame::encode_frame(
        1,
        b"H|\\^&\rL|1\rH|\\^&\rR|1\rL|1\rH|\\^&\r",
        true,
        &mut f,
    )
    .unwrap();
    b.to_host.extend_from_slice(&f[..n]);
    b.to_host.push(EOT);
    b.settle();
    assert_eq!(
        b.model.commits, 2,
        "the frame, then EOT closing the third message"
    );
    assert_eq!(
        b.model.messages,
        [
            (b"H|\\^&\rL|1\r".to_vec(), MessageEnd::Terminator),
            (b"H|\\^&\rR|1\rL|1\r".to_vec(), MessageEnd::Terminator),
            (b"H|\\^&\r".to_vec(), MessageEnd::Eot),
        ]
    );
    assert!(b.events.contains(&Event::Accepted { messages: 2 }));
}
