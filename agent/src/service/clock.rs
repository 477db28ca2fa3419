//! Is the system clock synchronized? Lab results carry the time they were received; a
//! Raspberry Pi-class board without a real-time clock boots in the past until NTP has
//! run, and such times must be flagged (`clock_synced = false` on the stored message, and
//! in `labagent status`).
//!
//! The kernel knows: `adjtimex(2)` with no modes set only reads, and returns
//! `TIME_ERROR` while the clock is not synchronized (the flag NTP daemons — chrony,
//! systemd-timesyncd, ntpd — clear once they discipline it; `timedatectl` shows the same
//! bit as "System clock synchronized").

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

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_answers() {
        // Whatever this machine's state, the read-only call succeeds.
        assert!(super::synchronized().is_some());
    }
}
