//! Waiting: capped exponential backoff with jitter, and the clock the uplink waits on.
//!
//! The uplink never calls `std::thread::sleep` or `SystemTime::now` directly; it asks a
//! [`Clock`]. [`SystemClock`] waits on a condition variable so shutdown and "new data"
//! wake it at once; [`VirtualClock`] advances virtual time instead of sleeping, so a test
//! of a 30 s `Retry-After` takes microseconds and can read back every wait.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Wall-clock time and waiting, injected into the uplink.
pub trait Clock: Send + Sync {
    /// Wall-clock now (token expiry, `Retry-After` dates, status times).
    fn now(&self) -> SystemTime;
    /// Monotonic now (timeouts between events).
    fn instant(&self) -> Instant;
    /// Waits up to `d`. Returns early when woken ([`Clock::wake`]); returns `false` when
    /// the uplink must stop.
    fn sleep(&self, d: Duration) -> bool;
    /// Ends the current or next `sleep` early (new data queued).
    fn wake(&self);
    /// Makes every `sleep` return `false` from now on.
    fn shutdown(&self);
    fn is_shutdown(&self) -> bool;
}

#[derive(Default)]
struct Flags {
    shutdown: bool,
    woken: bool,
}

/// The real clock.
#[derive(Default)]
pub struct SystemClock {
    flags: Mutex<Flags>,
    cv: Condvar,
}

impl SystemClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    fn flags(&self) -> MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut f = self.flags();
        loop {
            if f.shutdown {
                return false;
            }
            if f.woken {
                f.woken = false;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            f = self
                .cv
                .wait_timeout(f, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn wake(&self) {
        self.flags().woken = true;
        self.cv.notify_all();
    }
    fn shutdown(&self) {
        self.flags().shutdown = true;
        self.cv.notify_all();
    }
    fn is_shutdown(&self) -> bool {
        self.flags().shutdown
    }
}

struct VState {
    now: SystemTime,
    offset: Duration,
    sleeps: Vec<Duration>,
    budget: usize,
    shutdown: bool,
}

/// A test clock: `sleep` records the wait and moves virtual time forward instantly.
/// After `budget` sleeps it reports shutdown, so a test of an endless pause ends.
pub struct VirtualClock {
    st: Mutex<VState>,
    base: Instant,
}

impl VirtualClock {
    pub fn new(start: SystemTime, budget: usize) -> Arc<Self> {
        Arc::new(VirtualClock {
            st: Mutex::new(VState {
                now: start,
                offset: Duration::ZERO,
                sleeps: Vec::new(),
                budget,
                shutdown: false,
            }),
            base: Instant::now(),
        })
    }
    fn st(&self) -> MutexGuard<'_, VState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Every wait asked for so far.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.st().sleeps.clone()
    }
    /// Moves time forward without a sleep (e.g. to pass a token's lifetime).
    pub fn advance(&self, d: Duration) {
        let mut s = self.st();
        s.now += d;
        s.offset += d;
    }
    /// Sets the wall clock (e.g. backwards) without moving the monotonic clock.
    pub fn set_wall(&self, t: SystemTime) {
        self.st().now = t;
    }
    /// Allows `n` more sleeps and clears shutdown.
    pub fn refill(&self, n: usize) {
        let mut s = self.st();
        s.budget = n;
        s.shutdown = false;
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> SystemTime {
        self.st().now
    }
    fn instant(&self) -> Instant {
        self.base + self.st().offset
    }
    fn sleep(&self, d: Duration) -> bool {
        let mut s = self.st();
        if s.shutdown || s.budget == 0 {
            s.shutdown = true;
            return false;
        }
        s.budget -= 1;
        s.sleeps.push(d);
        s.now += d;
        s.offset += d;
        true
    }
    fn wake(&self) {}
    fn shutdown(&self) {
        self.st().shutdown = true;
    }
    fn is_shutdown(&self) -> bool {
        self.st().shutdown
    }
}

/// Capped exponential backoff with "equal jitter": the n-th wait is uniformly drawn from
/// `[d/2, d]` with `d = min(cap, base * 2^n)`, so retries of many agents spread out but
/// never wait less than half the step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next wait, then one step further.
    pub fn next_wait(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let d = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let span = (d - half).as_millis() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.rand() % (span + 1)
        };
        half + Duration::from_millis(jitter)
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn rand(&mut self) -> u64 {
        // xorshift64: plenty for jitter, no dependency.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A seed for jitter that differs between hosts and runs.
pub fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        let mut prev_max = Duration::ZERO;
        for n in 0..12u32 {
            let d = Duration::from_secs(1)
                .saturating_mul(1 << n)
                .min(Duration::from_secs(60));
            let w = b.next_wait();
            assert!(
                w >= d / 2 && w <= d,
                "step {n}: {w:?} not in [{:?}, {d:?}]",
                d / 2
            );
            prev_max = prev_max.max(w);
        }
        assert!(prev_max <= Duration::from_secs(60));
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }

    #[test]
    fn virtual_clock_budget() {
        let c = VirtualClock::new(SystemTime::UNIX_EPOCH, 2);
        assert!(c.sleep(Duration::from_secs(5)));
        assert!(c.sleep(Duration::from_secs(5)));
        assert!(!c.sleep(Duration::from_secs(5)));
        assert_eq!(c.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(c.sleeps().len(), 2);
    }

    #[test]
    fn system_clock_wakes_and_stops() {
        let c = SystemClock::new();
        c.wake();
        assert!(c.sleep(Duration::from_secs(3600)));
        c.shutdown();
        assert!(!c.sleep(Duration::from_secs(3600)));
    }
}
