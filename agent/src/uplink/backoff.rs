//! Waiting: the clock the uplink waits on, and the agent's one [`Backoff`] policy.
//!
//! The uplink never calls `std::thread::sleep` or `SystemTime::now` directly; it asks a
//! [`Clock`]. Two kinds of wait, because "new data" must end one and never the other:
//!
//! * [`Clock::idle`]: nothing to send; a stored message ([`Clock::wake`]) ends it at once;
//! * [`Clock::sleep`]: a backoff or the server's `Retry-After`; only shutdown ends it early.
//!   An instrument sending 200 messages/s must not turn a `503` with `Retry-After: 1` into
//!   200 attempts a second.
//!
//! [`SystemClock`] waits on a condition variable so shutdown and wakes arrive at once;
//! [`VirtualClock`] advances virtual time instead of waiting, so a test of a 30 s
//! `Retry-After` takes microseconds and can read back every wait.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Wall-clock time and waiting, injected into the uplink.
pub trait Clock: Send + Sync {
    /// Wall-clock now (token expiry, `Retry-After` dates, status times).
    fn now(&self) -> SystemTime;
    /// Monotonic now (timeouts between events).
    fn instant(&self) -> Instant;
    /// Waits out `d` (a backoff, a `Retry-After`): a wake does not end it. Returns `false`
    /// when the uplink must stop.
    fn sleep(&self, d: Duration) -> bool;
    /// Waits up to `d` with nothing to do: returns early when woken ([`Clock::wake`]).
    /// Returns `false` when the uplink must stop.
    fn idle(&self, d: Duration) -> bool;
    /// Ends the current or next [`Clock::idle`] early (new data queued); a [`Clock::sleep`]
    /// under way is not shortened.
    fn wake(&self);
    /// Makes every `sleep` return `false` from now on.
    fn shutdown(&self);
    fn is_shutdown(&self) -> bool;
}

#[derive(Default)]
struct Flags {
    shutdown: bool,
    woken: bool,
    /// An idle wait is under way (a wake must notify it).
    idling: bool,
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

    /// Waits until `d` has passed or shutdown, or a wake if `wakeable`. A wake that comes
    /// during an unwakeable wait stays pending: the next idle wait returns at once, so the
    /// message that came meanwhile is looked at right after the wait.
    fn wait(&self, d: Duration, wakeable: bool) -> bool {
        let deadline = Instant::now() + d;
        let mut f = self.flags();
        loop {
            if f.shutdown {
                return false;
            }
            if wakeable && f.woken {
                f.woken = false;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            f.idling = wakeable;
            f = self
                .cv
                .wait_timeout(f, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            f.idling = false;
        }
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
        self.wait(d, false)
    }
    fn idle(&self, d: Duration) -> bool {
        self.wait(d, true)
    }
    /// Called for every stored message: only the first wake of an idle wait notifies (a
    /// futex call and a context switch); a wake that is already pending, or one that comes
    /// while the uplink uploads or waits out a backoff, only sets the flag.
    fn wake(&self) {
        let mut f = self.flags();
        if f.woken {
            return;
        }
        f.woken = true;
        if f.idling {
            drop(f);
            self.cv.notify_all();
        }
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

/// A test clock: `sleep` and `idle` record the wait and move virtual time forward
/// instantly. After `budget` waits it reports shutdown, so a test of an endless pause ends.
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
    fn idle(&self, d: Duration) -> bool {
        self.sleep(d)
    }
    fn wake(&self) {}
    fn shutdown(&self) {
        self.st().shutdown = true;
    }
    fn is_shutdown(&self) -> bool {
        self.st().shutdown
    }
}

/// The agent's one backoff policy and its seed (`crate::backoff`).
pub use crate::backoff::{seed, Backoff};

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.idle(Duration::from_secs(3600)));
        c.shutdown();
        assert!(!c.idle(Duration::from_secs(3600)));
        assert!(!c.sleep(Duration::from_secs(3600)));
    }

    /// Wakes do not shorten a backoff: a thread waking the clock all the time during a
    /// 200 ms sleep leaves it at least 200 ms long; the wake that came meanwhile ends the
    /// next idle wait at once.
    #[test]
    fn wakes_do_not_shorten_a_sleep() {
        let c = SystemClock::new();
        let waker = c.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                waker.wake();
                n += 1;
                std::thread::yield_now();
            }
            n
        });
        let start = Instant::now();
        assert!(c.sleep(Duration::from_millis(200)));
        let slept = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let wakes = t.join().unwrap();
        assert!(wakes > 0);
        assert!(
            slept >= Duration::from_millis(200),
            "{slept:?} after {wakes} wakes"
        );
        let start = Instant::now();
        assert!(c.idle(Duration::from_secs(3600)));
        assert!(start.elapsed() < Duration::from_secs(60));
    }
}
