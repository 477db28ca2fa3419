//! What the hal tests share: a model of the driver's durable store that applies commit
//! pieces exactly as the agent does, a loop that runs a session to quiescence, and a
//! tiny PRNG. Works in both builds (`--no-default-features` too): tests link std anyway.
#![allow(dead_code)]

use labagent_hal::session::{Commit, End, Event, MessageEnd, Session};
use labagent_hal::time::Instant;

/// The durable state a driver builds from commits: whole messages, incomplete ones,
/// rejected bytes, and the open partial.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Model {
    pub messages: Vec<(Vec<u8>, MessageEnd)>,
    pub incomplete: Vec<(Vec<u8>, MessageEnd)>,
    pub rejected: Vec<Vec<u8>>,
    pub open: Option<Vec<u8>>,
    /// Commits answered, and how many were refused on purpose.
    pub commits: usize,
    pub refused: usize,
}

impl Model {
    /// Applies every piece (see `labagent_hal::session`); returns true.
    pub fn apply(&mut self, c: Commit<'_>) -> bool {
        self.commits += 1;
        for p in c {
            if p.begins {
                if let Some(stale) = self.open.take() {
                    // A driver keeps an abandoned partial as incomplete.
                    self.incomplete.push((stale, MessageEnd::LineLost));
                }
                self.open = Some(Vec::new());
            }
            let open = self.open.get_or_insert_with(Vec::new);
            open.extend_from_slice(p.text);
            if p.cr {
                open.push(b'\r');
            }
            match p.end {
                None => {}
                Some(End::Complete(e)) => self.messages.push((self.open.take().unwrap(), e)),
                Some(End::Incomplete(e)) => self.incomplete.push((self.open.take().unwrap(), e)),
                Some(End::Rejected(_)) => self.rejected.push(self.open.take().unwrap()),
            }
        }
        true
    }

    /// The texts of the complete messages.
    pub fn texts(&self) -> Vec<Vec<u8>> {
        self.messages.iter().map(|(t, _)| t.clone()).collect()
    }
}

/// Runs commits (answered by `answer`), transmits and events until the session is idle;
/// returns the bytes it wrote and its events.
pub fn pump<S: Session>(
    s: &mut S,
    now: Instant,
    answer: &mut dyn FnMut(Commit<'_>) -> bool,
) -> (Vec<u8>, Vec<Event>) {
    let mut tx = Vec::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; s.max_transmit()];
    loop {
        let mut progressed = false;
        if let Some(c) = s.poll_commit() {
            let ok = answer(c);
            s.commit_done(ok, now);
            progressed = true;
        }
        while let Some(n) = s.poll_transmit(&mut buf) {
            tx.extend_from_slice(&buf[..n]);
            progressed = true;
        }
        while let Some(e) = s.poll_event() {
            events.push(e);
            progressed = true;
        }
        if !progressed {
            return (tx, events);
        }
    }
}

/// Offers all of `input` (pumping between offers); returns bytes written and events.
pub fn feed<S: Session>(
    s: &mut S,
    mut input: &[u8],
    now: Instant,
    answer: &mut dyn FnMut(Commit<'_>) -> bool,
) -> (Vec<u8>, Vec<Event>) {
    let (mut tx, mut events) = (Vec::new(), Vec::new());
    loop {
        let n = s.handle_input(input, now);
        input = &input[n..];
        let (t, e) = pump(s, now, answer);
        let idle = n == 0 && t.is_empty() && e.is_empty();
        tx.extend(t);
        events.extend(e);
        if input.is_empty() || idle {
            assert!(
                input.is_empty(),
                "the session stopped taking input: {} left",
                input.len()
            );
            return (tx, events);
        }
    }
}

/// Jumps the virtual clock to the session's next deadline, if any, and fires it.
pub fn advance<S: Session>(s: &mut S, now: &mut Instant) -> bool {
    match s.poll_timeout() {
        Some(t) => {
            *now = (*now).max(t);
            s.handle_timeout(*now);
            true
        }
        None => false,
    }
}

/// xorshift64*: a tiny deterministic PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The session's buffer type in these tests: growable with `alloc`, a big fixed one
/// without (the fixtures hold frames up to 4.4 KB and messages up to ~64 KB).
#[cfg(feature = "alloc")]
pub type Buf = labagent_hal::buf::VecBuf;
#[cfg(not(feature = "alloc"))]
pub type Buf = heapless::Vec<u8, 65536>;

/// An MLLP framer event, owned (the framer's events borrow its buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    Message(Vec<u8>),
    TooLarge { len: usize, head: Vec<u8> },
    Interrupted { discarded: usize },
}

impl From<labagent_hal::hl7::mllp::MllpEvent<'_>> for Framed {
    fn from(e: labagent_hal::hl7::mllp::MllpEvent<'_>) -> Self {
        use labagent_hal::hl7::mllp::MllpEvent;
        match e {
            MllpEvent::Message(m) => Framed::Message(m.to_vec()),
            MllpEvent::TooLarge { len, head } => Framed::TooLarge {
                len,
                head: head.to_vec(),
            },
            MllpEvent::Interrupted { discarded } => Framed::Interrupted { discarded },
        }
    }
}

/// Every event of `f` for `input`, owned.
pub fn frame_all<B: labagent_hal::buf::Buffer>(
    f: &mut labagent_hal::hl7::mllp::MllpFramer<B>,
    input: &[u8],
) -> Vec<Framed> {
    let mut v = Vec::new();
    f.feed(input, |e| v.push(Framed::from(e)));
    v
}

/// `VT msg FS CR`.
pub fn mllp(msg: &[u8]) -> Vec<u8> {
    let mut v = vec![0x0B];
    v.extend_from_slice(msg);
    v.extend_from_slice(&[0x1C, 0x0D]);
    v
}
