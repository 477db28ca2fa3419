//! A blocking driver: any [`Session`] on any `embedded-io` byte pipe, with no allocator
//! and no operating system — a microcontroller's UART, or a test's in-memory line.
//!
//! The driver owns nothing but two fixed buffers. What it needs from the board:
//! - the pipe: [`embedded_io::Read`] + [`embedded_io::Write`] + [`embedded_io::ReadReady`]
//!   (a UART driver implements them);
//! - a [`Clock`]: milliseconds from a timer;
//! - a [`Committer`]: makes a commit's pieces durable (flash, a second UART, an SD card)
//!   and says whether it did; it also hears every [`Event`].
//!
//! One [`Runner::step`] does: offer held input to the session; answer its commit; write
//! what it wants written; pass on its events; fire its timer; read when the pipe has bytes
//! (never blocking on a read while a timer is due). [`Runner::run`] loops, calling an idle
//! hook (`wfi`, a sleep) when a step did nothing.
//!
//! Orders are not fed here (bare-metal boards in this project only receive); a host driver
//! offers them with [`Session::send_order`] when [`Session::order_wanted`] says so.

use embedded_io::{Read, ReadReady, Write};

use crate::session::{Commit, Event, Session};
use crate::time::Instant;

/// Milliseconds on a monotonic timer.
pub trait Clock {
    /// Now.
    fn now(&mut self) -> Instant;
}

/// Where committed text goes.
pub trait Committer {
    /// Make every piece durable; `true` only if all of them are.
    fn commit(&mut self, pieces: Commit<'_>) -> bool;
    /// Something happened (counters, order outcomes). Default: ignored.
    fn event(&mut self, _event: Event) {}
}

/// The driver's state: input read but not yet taken by the session, and a write buffer.
pub struct Runner<const RX: usize, const TX: usize> {
    input: [u8; RX],
    start: usize,
    end: usize,
    out: [u8; TX],
    line_lost: bool,
}

impl<const RX: usize, const TX: usize> Default for Runner<RX, TX> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const RX: usize, const TX: usize> Runner<RX, TX> {
    /// Empty buffers. `TX` must be at least the session's `max_transmit()`.
    pub const fn new() -> Self {
        Runner {
            input: [0; RX],
            start: 0,
            end: 0,
            out: [0; TX],
            line_lost: false,
        }
    }

    /// True once the pipe reported its end (a 0-byte read).
    pub fn line_lost(&self) -> bool {
        self.line_lost
    }

    /// One round; returns whether anything happened.
    pub fn step<S, IO, C, K>(
        &mut self,
        session: &mut S,
        io: &mut IO,
        clock: &mut C,
        committer: &mut K,
    ) -> Result<bool, IO::Error>
    where
        S: Session,
        IO: Read + Write + ReadReady,
        C: Clock,
        K: Committer,
    {
        let mut progressed = false;
        let now = clock.now();
        if self.start < self.end {
            let n = session.handle_input(&self.input[self.start..self.end], now);
            self.start += n;
            progressed |= n > 0;
        }
        if let Some(c) = session.poll_commit() {
            let ok = committer.commit(c);
            session.commit_done(ok, clock.now());
            progressed = true;
        }
        while let Some(n) = session.poll_transmit(&mut self.out) {
            io.write_all(&self.out[..n])?;
            progressed = true;
        }
        if progressed {
            io.flush()?;
        }
        while let Some(e) = session.poll_event() {
            committer.event(e);
            progressed = true;
        }
        let now = clock.now();
        if session.poll_timeout().is_some_and(|t| now >= t) {
            session.handle_timeout(now);
            progressed = true;
        }
        if self.start >= self.end && !self.line_lost && io.read_ready()? {
            let n = io.read(&mut self.input)?;
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.line_lost = true;
                session.handle_line_lost(clock.now());
            }
            progressed = true;
        }
        Ok(progressed)
    }

    /// Steps forever (until the pipe fails), calling `idle` after a step that did nothing.
    pub fn run<S, IO, C, K>(
        &mut self,
        session: &mut S,
        io: &mut IO,
        clock: &mut C,
        committer: &mut K,
        mut idle: impl FnMut(),
    ) -> Result<core::convert::Infallible, IO::Error>
    where
        S: Session,
        IO: Read + Write + ReadReady,
        C: Clock,
        K: Committer,
    {
        loop {
            if !self.step(session, io, clock, committer)? {
                idle();
            }
        }
    }
}
