//! `labagent simulate`: an instrument on the other end of a line, for a technician testing
//! a cable and a config, and for the tests and the demo.
//!
//! The instrument side is deliberately blocking and single-threaded: one session, one
//! line, timers from `poll`/read timeouts. It runs the same hal sessions as the agent (an
//! E1381 [`Sender`] for results, a [`Receiver`] for orders the agent sends back), so what it
//! puts on the wire is what a conforming instrument would, and it honours ACK/NAK/EOT.
//!
//! **Pacing.** With `baud` set, bytes leave no faster than a UART would send them at that
//! rate (10 bits per byte: start, 8 data, stop), so a pty — which has no UART and moves
//! bytes as fast as memory — behaves like a line and throughput can be compared with line
//! rate.

pub mod faults;
pub mod pty;
pub mod upstream;
pub mod wire;

use std::io;
use std::time::{Duration, Instant};

use labagent_hal::astm::receiver::{Receiver, ReceiverConfig};
use labagent_hal::astm::record::split_messages;
use labagent_hal::astm::sender::{Event as TxEvent, Sender, SenderConfig};
use labagent_hal::astm::EOT;
use labagent_hal::buf::VecBuf;
use labagent_hal::session::End;
use labagent_hal::time::Instant as HalInstant;

pub use faults::Faults;
pub use wire::{PtyWire, Wire};

/// Bundled ASTM samples (written for labagent; no patient data): what `simulate` sends
/// when no file is given.
pub const ASTM_SAMPLES: &[(&str, &[u8])] = &[
    ("chemistry.astm", include_bytes!("samples/chemistry.astm")),
    (
        "immunoassay.astm",
        include_bytes!("samples/immunoassay.astm"),
    ),
    ("hematology.astm", include_bytes!("samples/hematology.astm")),
];

/// Bundled HL7 v2 samples (written for labagent; no patient data).
pub const HL7_SAMPLES: &[(&str, &[u8])] = &[
    ("oru_r01.hl7", include_bytes!("samples/oru_r01.hl7")),
    (
        "oru_r01_latin1_note.hl7",
        include_bytes!("samples/oru_r01_note.hl7"),
    ),
];

/// Splits a file of ASTM records (CR, LF or CR LF separated) into messages (H…L), each
/// with CR record terminators, as a sender puts them in frames.
pub fn astm_messages(text: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::with_capacity(text.len() + 1);
    for line in text.split(|&b| b == b'\r' || b == b'\n') {
        if !line.is_empty() {
            records.extend_from_slice(line);
            records.push(b'\r');
        }
    }
    split_messages(&records)
        .filter(|m| !m.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// One message's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub bytes: usize,
    pub delivered: bool,
    pub detail: String,
    pub elapsed: Duration,
}

/// What the instrument received from the agent (orders).
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub messages: Vec<Vec<u8>>,
    /// The message being received (the simulator keeps it in memory).
    partial: Vec<u8>,
}

/// Writes at most `baud / 10` bytes per second.
pub struct Pacer {
    byte_time: Option<Duration>,
    next: Instant,
}

impl Pacer {
    pub fn new(baud: Option<u32>) -> Self {
        Pacer {
            byte_time: baud
                .filter(|b| *b > 0)
                .map(|b| Duration::from_nanos(10_000_000_000 / b as u64)),
            next: Instant::now(),
        }
    }

    /// Writes `bytes`, sleeping so that each byte leaves no earlier than a UART would
    /// have sent it. Chunks of up to 16 bytes keep the sleeps above timer resolution.
    pub fn write(&mut self, w: &mut dyn Wire, bytes: &[u8]) -> io::Result<()> {
        let Some(bt) = self.byte_time else {
            return w.write_all(bytes);
        };
        let now = Instant::now();
        if self.next < now {
            self.next = now;
        }
        for chunk in bytes.chunks(16) {
            let wait = self.next.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            w.write_all(chunk)?;
            self.next += bt * chunk.len() as u32;
        }
        Ok(())
    }

    /// When the last written byte has left the (simulated) UART.
    pub fn drained_at(&self) -> Instant {
        self.next
    }
}

/// Called with each message's fate.
pub type OnSent = Box<dyn FnMut(&Sent) + Send>;
/// Called with a line about each injected fault and the answer it got.
pub type OnNote = Box<dyn FnMut(&str) + Send>;

/// An ASTM instrument: sends messages with the E1381 sender, answers the agent's orders
/// with the receiver.
pub struct AstmInstrument {
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
    /// LIS1-A: after contention the instrument waits at least 1 s (the host 20 s), then
    /// bids for the line again.
    pub contention_wait: Duration,
    pub pacer: Pacer,
    start: Instant,
    /// Called with each message as it is delivered or fails.
    pub on_sent: Option<OnSent>,
    pub received: Received,
    /// Faults to inject on purpose, and ENQ without a limit of attempts ([`faults`]).
    pub faults: Faults,
    /// Called with a line about each injected fault.
    pub on_note: Option<OnNote>,
}

impl AstmInstrument {
    pub fn new(baud: Option<u32>) -> Self {
        AstmInstrument {
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            contention_wait: Duration::from_secs(1),
            pacer: Pacer::new(baud),
            start: Instant::now(),
            on_sent: None,
            received: Received::default(),
            faults: Faults::default(),
            on_note: None,
        }
    }

    fn now(&self) -> HalInstant {
        HalInstant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    fn until(&self, t: Option<HalInstant>) -> Duration {
        match t {
            Some(t) => {
                let at = self.start + Duration::from_millis(t.as_millis());
                at.saturating_duration_since(Instant::now())
            }
            None => Duration::from_millis(200),
        }
    }

    /// Sends every message in order; returns each one's fate. Stops at a line error.
    pub fn send_all(&mut self, w: &mut dyn Wire, messages: &[Vec<u8>]) -> io::Result<Vec<Sent>> {
        let mut tx = Sender::<VecBuf>::new(self.sender.clone());
        let mut rx = Receiver::<VecBuf>::new(self.receiver.clone());
        let mut out = vec![0u8; tx.max_transmit()];
        let mut buf = [0u8; 1024];
        let mut results = Vec::new();
        let mut inject = faults::Injector::new(self.faults.clone());
        for m in messages {
            let t0 = Instant::now();
            if let Err(e) = tx.send(m, self.now()) {
                let s = Sent {
                    bytes: m.len(),
                    delivered: false,
                    detail: format!("not sent: {e:?}"),
                    elapsed: Duration::ZERO,
                };
                self.report(&s);
                results.push(s);
                continue;
            }
            let mut bid_again: Option<Instant> = None;
            let outcome = loop {
                let mut done = None;
                if bid_again.is_some_and(|t| Instant::now() >= t)
                    && !tx.is_sending()
                    && !rx.is_receiving()
                {
                    bid_again = None;
                    if tx.is_held() {
                        tx.start(self.now());
                    } else {
                        let _ = tx.send(m, self.now());
                    }
                }
                if inject.enq_deadline().is_some_and(|t| Instant::now() >= t) && tx.is_sending() {
                    // The receiver may not be up yet: end the bid, then bid again.
                    inject.enq_given_up();
                    tx.abort();
                    self.pacer.write(w, &[EOT])?;
                    let _ = tx.send(m, self.now());
                }
                while let Some(ev) = tx.poll_event() {
                    match ev {
                        // The host bid for the line at the same time. The instrument
                        // has priority (LIS1-A): it does not answer the host's ENQ and
                        // asks again after `contention_wait` (1 s).
                        TxEvent::Contention => {
                            bid_again = Some(Instant::now() + self.contention_wait)
                        }
                        TxEvent::Delivered => done = Some((true, "delivered".to_string())),
                        TxEvent::Interrupted => {
                            done = Some((false, "interrupted by the receiver".into()))
                        }
                        TxEvent::Failed(f) => done = Some((false, format!("failed: {f:?}"))),
                    }
                }
                self.pump_receiver(&mut rx, w)?;
                while let Some(n) = tx.poll_transmit(&mut out) {
                    match inject.outgoing(&out[..n], Instant::now()) {
                        Some(bad) => self.pacer.write(w, &bad)?,
                        None => self.pacer.write(w, &out[..n])?,
                    }
                }
                self.notes(&mut inject);
                if let Some(d) = done {
                    break d;
                }
                let mut wait = self.until(tx.poll_timeout().min_opt(rx.poll_timeout()));
                if let Some(t) = bid_again {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
                if let Some(t) = inject.enq_deadline() {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
                let n = w.read_timeout(&mut buf, wait.max(Duration::from_millis(1)))?;
                let now = self.now();
                if n > 0 {
                    // While our message is held after contention, the host's bytes are
                    // the receiver's (the host took the line).
                    if !tx.is_sending() {
                        inject.heard();
                        self.feed_receiver(&mut rx, &buf[..n], w)?;
                    } else {
                        let (reply, copy) = inject.incoming(&buf[..n]);
                        if let Some(copy) = copy {
                            self.pacer.write(w, &copy)?;
                        }
                        tx.handle_input(reply, now);
                    }
                }
                tx.handle_timeout(now);
                rx.handle_timeout(now);
            };
            let s = Sent {
                bytes: m.len(),
                delivered: outcome.0,
                detail: outcome.1,
                elapsed: t0.elapsed(),
            };
            self.report(&s);
            results.push(s);
        }
        inject.notes.extend(inject.unapplied());
        self.notes(&mut inject);
        Ok(results)
    }

    fn notes(&mut self, inject: &mut faults::Injector) {
        for n in inject.notes.drain(..) {
            if let Some(f) = self.on_note.as_mut() {
                f(&n);
            }
        }
    }

    /// Listens for the agent's orders until `deadline` (or `max` messages), ACKing frames.
    pub fn receive(
        &mut self,
        w: &mut dyn Wire,
        max: usize,
        deadline: Instant,
    ) -> io::Result<usize> {
        let mut rx = Receiver::<VecBuf>::new(self.receiver.clone());
        let mut buf = [0u8; 1024];
        let before = self.received.messages.len();
        while self.received.messages.len() - before < max && Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            let n = w.read_timeout(
                &mut buf,
                wait.min(Duration::from_millis(200))
                    .max(Duration::from_millis(1)),
            )?;
            if n > 0 {
                self.feed_receiver(&mut rx, &buf[..n], w)?;
            }
            rx.handle_timeout(self.now());
            self.pump_receiver(&mut rx, w)?;
        }
        Ok(self.received.messages.len() - before)
    }

    fn feed_receiver(
        &mut self,
        rx: &mut Receiver<VecBuf>,
        mut bytes: &[u8],
        w: &mut dyn Wire,
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = rx.handle_input(bytes, self.now());
            bytes = &bytes[n..];
            self.pump_receiver(rx, w)?;
        }
        Ok(())
    }

    fn pump_receiver(&mut self, rx: &mut Receiver<VecBuf>, w: &mut dyn Wire) -> io::Result<()> {
        loop {
            let mut any = false;
            // The simulator keeps orders in memory: "durable" at once.
            if let Some(c) = rx.poll_commit() {
                any = true;
                for p in c {
                    let r = &mut self.received;
                    if p.begins {
                        r.partial.clear();
                    }
                    r.partial.extend_from_slice(p.text);
                    if p.cr {
                        r.partial.push(b'\r');
                    }
                    match p.end {
                        Some(End::Complete(_)) => r.messages.push(std::mem::take(&mut r.partial)),
                        Some(_) => r.partial.clear(),
                        None => {}
                    }
                }
                rx.commit_done(true, self.now());
            }
            while rx.poll_event().is_some() {
                any = true;
            }
            let mut out = [0u8; 64];
            while let Some(n) = rx.poll_transmit(&mut out) {
                any = true;
                self.pacer.write(w, &out[..n])?;
            }
            if !any {
                return Ok(());
            }
        }
    }

    fn report(&mut self, s: &Sent) {
        if let Some(f) = self.on_sent.as_mut() {
            f(s);
        }
    }
}

trait MinOpt {
    fn min_opt(self, other: Self) -> Self;
}

impl MinOpt for Option<HalInstant> {
    fn min_opt(self, other: Self) -> Self {
        match (self, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// Sends HL7 messages over MLLP, each awaiting its ACK (`timeout` per message) unless its
/// MSH-15 is `NE`. Returns the ACK code (MSA-1) of each, or an error text.
pub fn send_hl7(
    w: &mut dyn Wire,
    pacer: &mut Pacer,
    messages: &[Vec<u8>],
    timeout: Duration,
    mut on_sent: impl FnMut(&Sent),
) -> io::Result<Vec<Sent>> {
    use labagent_hal::hl7::mllp::{encode, MllpEvent, MllpFramer};
    let mut framer = MllpFramer::<VecBuf>::new(1 << 20);
    let mut results = Vec::new();
    let mut buf = [0u8; 4096];
    for m in messages {
        let t0 = Instant::now();
        pacer.write(w, &encode(m))?;
        // MSH-15 = NE: the sender asked for no accept acknowledgment; an instrument does
        // not wait for one.
        let never = labagent_hal::hl7::msh::MshView::new_checked(m)
            .is_ok_and(|v| v.accept_ack_type() == labagent_hal::hl7::msh::AckCondition::Never);
        if never {
            let s = Sent {
                bytes: m.len(),
                delivered: true,
                detail: "sent (MSH-15 NE: no ACK expected)".into(),
                elapsed: t0.elapsed(),
            };
            on_sent(&s);
            results.push(s);
            continue;
        }
        let deadline = Instant::now() + timeout;
        let mut ack = None;
        while ack.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let n = w.read_timeout(&mut buf, left)?;
            framer.feed(&buf[..n], |ev| {
                if let MllpEvent::Message(body) = ev {
                    ack = Some(msa1(body));
                }
            });
        }
        let (delivered, detail) = match ack {
            Some(code) => (code == "AA" || code == "CA", code),
            None => (false, "no ACK".to_string()),
        };
        let s = Sent {
            bytes: m.len(),
            delivered,
            detail,
            elapsed: t0.elapsed(),
        };
        on_sent(&s);
        results.push(s);
    }
    Ok(results)
}

/// MSA-1 of an ACK message, or `?` when it has none.
fn msa1(ack: &[u8]) -> String {
    let field_sep = ack.get(3).copied().unwrap_or(b'|');
    ack.split(|&b| b == b'\r' || b == b'\n')
        .find(|seg| seg.starts_with(b"MSA"))
        .and_then(|seg| seg.split(|&b| b == field_sep).nth(1))
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_else(|| "?".into())
}

/// Splits a file of HL7 messages (segments separated by CR, LF or CR LF; a new message at
/// each MSH) into messages with CR segment terminators.
pub fn hl7_messages(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for seg in text.split(|&b| b == b'\r' || b == b'\n') {
        if seg.is_empty() {
            continue;
        }
        if seg.starts_with(b"MSH") || out.is_empty() {
            out.push(Vec::new());
        }
        let m = out.last_mut().expect("pushed above");
        m.extend_from_slice(seg);
        m.push(b'\r');
    }
    out
}

/// An ASTM host query for `ids` (Q-3 repeats, each in the second component).
pub fn astm_query(ids: &[&str]) -> Vec<u8> {
    let q3: Vec<String> = ids.iter().map(|i| format!("^{i}")).collect();
    format!(
        "H|\\^&|||SIMULATOR^1.0|||||||P|LIS2-A2\rQ|1|{}||ALL||||||||O\rL|1|N\r",
        q3.join("\\")
    )
    .into_bytes()
}

/// An HL7 QBP^Q11 (IHE LAW) for `ids` (QPD-3, repeats).
pub fn hl7_qbp(ids: &[&str]) -> Vec<u8> {
    let qid = format!("SIMQ{}", std::process::id());
    format!(
        "MSH|^~\\&|SIMULATOR|LAB|LIS|LAB|20260101000000||QBP^Q11^QBP_Q11|{qid}|P|2.5.1\r\
         QPD|WOS^Work Order Step^IHE_LABTF|{qid}|{}\rRCP|I||R\r",
        ids.join("~")
    )
    .into_bytes()
}

/// Sends a QBP^Q11 for `ids` and collects the host's answer: every message until `wait`
/// ends or the line is quiet for a second after the first; messages other than ACK, QCK
/// and RSP are acknowledged (Mindray ACKs the DSR^Q03 that follows a QCK^Q02).
pub fn hl7_query(
    w: &mut dyn Wire,
    pacer: &mut Pacer,
    ids: &[&str],
    wait: Duration,
) -> io::Result<(Vec<Vec<u8>>, Duration)> {
    use labagent_hal::hl7::mllp::{encode, MllpEvent, MllpFramer};
    let mut framer = MllpFramer::<VecBuf>::new(1 << 20);
    pacer.write(w, &encode(&hl7_qbp(ids)))?;
    let t0 = Instant::now();
    let deadline = t0 + wait;
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let mut took = Duration::ZERO;
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        let mut left = deadline.saturating_duration_since(now);
        if !answers.is_empty() {
            left = left.min(Duration::from_secs(1));
        }
        if left.is_zero() {
            break;
        }
        let n = w.read_timeout(&mut buf, left)?;
        if n == 0 {
            if answers.is_empty() {
                continue;
            }
            break;
        }
        let mut got = Vec::new();
        framer.feed(&buf[..n], |ev| {
            if let MllpEvent::Message(body) = ev {
                got.push(body.to_vec());
            }
        });
        for m in got {
            if answers.is_empty() {
                took = t0.elapsed();
            }
            let ty = labagent_hal::hl7::msh::MshView::new_checked(&m)
                .ok()
                .map(|v| String::from_utf8_lossy(v.message_type().code).into_owned())
                .unwrap_or_default();
            if !["ACK", "QCK", "RSP"].iter().any(|t| ty.starts_with(t)) {
                let ack = format!(
                    "MSH|^~\\&|SIMULATOR|LAB|LIS|LAB|20260101000000||ACK|A{}|P|2.5.1\rMSA|AA|{}\r",
                    answers.len(),
                    msh10(&m)
                );
                pacer.write(w, &encode(ack.as_bytes()))?;
            }
            answers.push(m);
        }
    }
    Ok((answers, took))
}

/// MSH-10 of a message.
fn msh10(m: &[u8]) -> String {
    let sep = m.get(3).copied().unwrap_or(b'|');
    m.split(|&b| b == b'\r')
        .next()
        .and_then(|seg| seg.split(|&b| b == sep).nth(9))
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_default()
}

/// The answer says the host knows nothing: ASTM `L|1|I`, HL7 QAK-2 `NF`.
pub fn nothing_known(answers: &[Vec<u8>]) -> bool {
    answers.iter().any(|m| {
        m.split(|&b| b == b'\r').any(|r| {
            (r.starts_with(b"L") && r.ends_with(b"|I"))
                || (r.starts_with(b"QAK") && r.ends_with(b"|NF"))
        })
    })
}
