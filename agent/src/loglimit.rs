//! Per-channel budget for the "message stored" log lines.
//!
//! At the rates instruments send (a message every few seconds) every stored message gets
//! its info line, which is what a technician looks for in the journal. Under a flood the
//! lines would cost more than storing the message (formatting, the journal write, the
//! remote log ring: 7 % of the ingest thread at 10 000 messages a second, issue 23), so past
//! [`LINES_PER_SECOND`] a second a channel's further messages are only counted (and logged
//! at debug), and the next line that is written says how many went without one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Info lines per channel and second, at most.
pub const LINES_PER_SECOND: u32 = 20;

#[derive(Default)]
pub struct LineBudget(Mutex<Window>);

#[derive(Default)]
struct Window {
    start: Option<Instant>,
    used: u32,
    /// Messages stored without a line since the last line.
    held: u64,
}

impl LineBudget {
    /// `Some(held)`: write the line (and say that `held` messages went without one before
    /// it, if any); `None`: over budget, counted.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(w.start, Some(s) if now.duration_since(s) < Duration::from_secs(1)) {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used >= LINES_PER_SECOND {
            w.held += 1;
            return None;
        }
        w.used += 1;
        Some(std::mem::take(&mut w.held))
    }
}

/// Logs a stored (or duplicate) message within `budget`: ids and lengths only, never data.
pub fn stored(
    budget: &LineBudget,
    channel: &str,
    id: &dyn std::fmt::Display,
    len: usize,
    duplicate: bool,
) {
    let Some(held) = budget.admit(Instant::now()) else {
        tracing::debug!(channel, id = %id, len, duplicate, "message stored");
        return;
    };
    if held > 0 {
        tracing::info!(
            channel,
            held,
            "more messages stored without a line each (over {LINES_PER_SECOND} a second)"
        );
    }
    if duplicate {
        tracing::info!(channel, id = %id, len, "duplicate message, already stored");
    } else {
        tracing::info!(channel, id = %id, len, "message stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_lines_a_second_then_a_count_with_the_next_line() {
        let b = LineBudget::default();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(b.admit(t0), Some(0));
        }
        for i in 0..5 {
            assert_eq!(b.admit(t0 + Duration::from_millis(10 * i)), None);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            b.admit(t1),
            Some(5),
            "the first line of the next second counts the held ones"
        );
        assert_eq!(b.admit(t1), Some(0));
    }
}
