//! Capped exponential backoff with jitter: the one policy behind every retry of the agent —
//! port reconnects (`source`), uploads and token requests (`uplink`), MQTT reconnects.
//!
//! Why jitter: a site with several agents (or one agent with several channels behind one
//! device server) would otherwise retry in lock-step after a shared outage. Why a seed: a
//! test can replay the exact delays. "Equal jitter" keeps every delay at least half the
//! nominal one, so a run of failures can never turn into a busy loop.

use std::time::Duration;

/// Delays of `initial · 2ⁿ`, capped at `max`, each drawn from `[d/2, d]`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// First delay (before jitter) of the default policy.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(250);
    /// Largest delay of the default policy.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

    /// A policy from `initial` to `max`; the same `seed` gives the same delays.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            // splitmix64 cannot get stuck at zero, so any seed is fine.
            rng: seed,
        }
    }

    /// The default policy (250 ms → 30 s) with a [`seed`] that differs between processes
    /// and calls, so agents started together do not retry together.
    pub fn with_random_seed() -> Self {
        Self::new(Self::DEFAULT_INITIAL, Self::DEFAULT_MAX, seed())
    }

    /// The delay before the next attempt; each call doubles the nominal delay up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(31))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = nominal / 2;
        let span = (nominal - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Largest delay this policy returns.
    pub fn max(&self) -> Duration {
        self.max
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed for jitter that differs between hosts, runs and calls.
pub fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}

impl Default for Backoff {
    fn default() -> Self {
        Self::with_random_seed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 7);
        let mut nominal = Duration::from_millis(250);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= nominal / 2 && d <= nominal,
                "{d:?} vs nominal {nominal:?}"
            );
            nominal = (nominal * 2).min(Duration::from_secs(30));
        }
        assert!(b.next_delay() >= Duration::from_secs(15));
    }

    #[test]
    fn same_seed_same_delays_and_reset() {
        let mut a = Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 42);
        let mut b = a.clone();
        let da: Vec<_> = (0..10).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(da, db);
        a.reset();
        assert_eq!(a.attempt(), 0);
        assert!(a.next_delay() <= Duration::from_millis(250));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600), 1);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(3600));
        }
    }
}
