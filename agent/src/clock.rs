//! Is the system clock synchronized? Lab results carry the time they were received; a
//! Raspberry Pi-class board without a real-time clock boots in the past until NTP has
//! run, and such times must be flagged (`clock_synced = false` on the stored message, and
//! in `labagent status`).
//!
//! The kernel knows: `adjtimex(2)` with no modes set only reads, and returns
//! `TIME_ERROR` while the clock is not synchronized (the flag NTP daemons — chrony,
//! systemd-timesyncd, ntpd — clear once they discipline it; `timedatectl` shows the same
//! bit as "System clock synchronized").
//!
//! When the call fails the answer is **unknown**, and stays unknown everywhere: `null` in
//! envelopes, stored headers and `status --json`, no `labagent_clock_synchronized` sample.
//! seccomp cannot tell a read from a write, so the shipped unit allows `adjtimex` (and
//! `clock_adjtime`) explicitly and does not set `ProtectClock=`, whose filter denies them;
//! `CapabilityBoundingSet=` (empty) still keeps `CAP_SYS_TIME` out, so a call that would
//! set the clock fails with `EPERM` (`tests/tests/packaging.rs` checks the unit's filter).

use std::sync::atomic::{AtomicU8, Ordering};

/// `Some(true)` when the kernel considers the clock synchronized, `Some(false)` when it
/// does not, `None` when it cannot be asked.
pub fn synchronized() -> Option<bool> {
    // SAFETY: necessary — no safe wrapper for adjtimex exists in std, rustix or our other
    // dependencies. `timex` is a plain C struct for which all-zero bytes are a valid value
    // (`modes = 0`: read only, nothing is changed), and the pointer passed is to a live,
    // exclusively borrowed local for the duration of the call.
    let rc = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut t)
    };
    match rc {
        -1 => None,
        libc::TIME_ERROR => Some(false),
        _ => Some(true),
    }
}

/// The clock's state shared with every channel (stored with each message): known
/// synchronized, known not synchronized, or unknown.
#[derive(Debug, Default)]
pub struct ClockFlag(AtomicU8);

const UNKNOWN: u8 = 0;
const SYNCED: u8 = 1;
const UNSYNCED: u8 = 2;

impl ClockFlag {
    pub fn new(state: Option<bool>) -> Self {
        let f = ClockFlag::default();
        f.set(state);
        f
    }

    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            SYNCED => Some(true),
            UNSYNCED => Some(false),
            _ => None,
        }
    }

    pub fn set(&self, state: Option<bool>) {
        let v = match state {
            Some(true) => SYNCED,
            Some(false) => UNSYNCED,
            None => UNKNOWN,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_answers() {
        // Outside a sandbox that denies adjtimex, the read-only call succeeds.
        assert!(synchronized().is_some());
    }

    #[test]
    fn flag_has_three_states() {
        let f = ClockFlag::default();
        assert_eq!(f.get(), None, "unknown until read");
        for s in [Some(true), Some(false), None] {
            f.set(s);
            assert_eq!(f.get(), s);
        }
        assert_eq!(ClockFlag::new(Some(false)).get(), Some(false));
    }
}
