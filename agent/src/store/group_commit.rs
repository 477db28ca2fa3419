//! Group commit: many "make my write durable" requests turn into one `Engine::sync`.
//!
//! Every write applied to the engine gets a generation number (assigned under the store's
//! write lock, so generation order = apply order). A writer that needs durability calls
//! [`GroupCommit::wait`] with its generation. If no sync is running, that writer becomes
//! the leader: it reads the newest generation *before* it syncs, so its one sync covers
//! every write with a generation up to that number, and wakes every waiter it covered.
//! Writers arriving during a sync wait for it; if it did not cover them, one of them leads
//! the next. N concurrent appenders therefore share one sync (one fdatasync of the
//! write-ahead log), and a lone appender pays exactly one, in its own thread — no hand-off
//! to another thread and back on the path to its ACK.
//!
//! Async writers ([`GroupCommit::check`], [`GroupCommit::lead`]) follow the same rules
//! without blocking on the condition variable: a writer that finds its generation
//! undecided while a sync runs registers its waker, woken when that sync ends; one that
//! finds no sync running leads one itself (`Store::wait_durable`).

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;

#[derive(Default)]
struct State {
    /// Highest generation applied to the engine.
    written: u64,
    /// Everything up to here is durable.
    synced: u64,
    /// Ranges `(lo, hi]` of generations whose sync failed or whose writes were discarded
    /// by a reopen; their writers get an error even if a later sync covers the number.
    failures: Vec<(u64, u64)>,
    last_error: Option<(io::ErrorKind, String)>,
    syncs: u64,
    /// A leader is syncing.
    syncing: bool,
    stop: bool,
    /// Async waiters for the running sync.
    wakers: Vec<Waker>,
}

impl State {
    /// The sync meant to cover everything up to `target` failed with `e`.
    fn sync_failed(&mut self, target: u64, e: (io::ErrorKind, String)) {
        let lo = self.synced;
        self.push_failure(lo, target);
        self.last_error = Some(e);
    }

    /// Records `(lo, hi]` as failed. Overlapping or adjacent ranges merge; past 64 ranges
    /// the two oldest merge, which may fail generations between them too — never the
    /// other way round: a generation once failed never reads as synced.
    fn push_failure(&mut self, lo: u64, hi: u64) {
        if hi <= lo {
            return;
        }
        if let Some(last) = self.failures.last_mut() {
            if lo <= last.1 && hi >= last.0 {
                *last = (last.0.min(lo), last.1.max(hi));
                return;
            }
        }
        self.failures.push((lo, hi));
        if self.failures.len() > 64 {
            let (a, b) = (self.failures[0], self.failures[1]);
            self.failures[1] = (a.0.min(b.0), a.1.max(b.1));
            self.failures.remove(0);
        }
    }
}

pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    sync: SyncFn,
}

pub(crate) type SyncFn = Box<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Where a generation stands.
pub(crate) enum Check {
    /// Durable, or failed.
    Done(io::Result<()>),
    /// A sync is running (the waker, if given, is woken when it ends).
    Running,
    /// Undecided and no sync running: someone must lead one.
    Idle,
}

impl State {
    fn decided(&self, gen: u64) -> Option<io::Result<()>> {
        if self.failures.iter().any(|&(lo, hi)| gen > lo && gen <= hi) {
            let (kind, msg) = self
                .last_error
                .clone()
                .unwrap_or((io::ErrorKind::Other, "sync failed".into()));
            return Some(Err(io::Error::new(kind, msg)));
        }
        if self.synced >= gen {
            return Some(Ok(()));
        }
        if self.stop {
            return Some(Err(io::Error::other("store is closing")));
        }
        None
    }

    /// A sync ended: wake every waiter.
    fn ended(&mut self, done: &Condvar) {
        done.notify_all();
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }
}

impl GroupCommit {
    /// `sync` makes everything applied so far durable.
    pub(crate) fn new(sync: SyncFn) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            sync,
        })
    }

    /// Records that a write was applied; call under the store's write lock.
    pub(crate) fn note_write(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.written += 1;
        st.written
    }

    /// Blocks until generation `gen` is durable, or returns the error of the sync that
    /// covered it. Syncs itself when nobody else is syncing.
    pub(crate) fn wait(&self, gen: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = st.decided(gen) {
                return r;
            }
            if st.syncing {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: one sync for everything written so far.
            st.syncing = true;
            let target = st.written;
            drop(st);
            let r = {
                // If the sync panics, its range fails and the other waiters wake.
                let guard = LeaderGuard { gc: self, target };
                let r = (self.sync)();
                std::mem::forget(guard);
                r
            };
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.syncing = false;
            st.syncs += 1;
            match r {
                Ok(()) => st.synced = st.synced.max(target),
                Err(e) => st.sync_failed(target, (e.kind(), e.to_string())),
            }
            st.ended(&self.done);
        }
    }

    /// Where `gen` stands, without blocking; with `waker`, registers it while a sync runs.
    pub(crate) fn check(&self, gen: u64, waker: Option<&Waker>) -> Check {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = st.decided(gen) {
            return Check::Done(r);
        }
        if st.syncing {
            if let Some(w) = waker {
                if !st.wakers.iter().any(|x| x.will_wake(w)) {
                    st.wakers.push(w.clone());
                }
            }
            return Check::Running;
        }
        Check::Idle
    }

    /// Leads one sync for everything written so far, on this thread, unless one is
    /// running already (then returns at once). Wakes every waiter when it ends.
    pub(crate) fn lead(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.syncing || st.stop {
            return;
        }
        st.syncing = true;
        let target = st.written;
        drop(st);
        let r = {
            let guard = LeaderGuard { gc: self, target };
            let r = (self.sync)();
            std::mem::forget(guard);
            r
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.syncing = false;
        st.syncs += 1;
        match r {
            Ok(()) => st.synced = st.synced.max(target),
            Err(e) => st.sync_failed(target, (e.kind(), e.to_string())),
        }
        st.ended(&self.done);
    }

    /// A generation no write has: waiting for it waits for a sync that starts from now
    /// (a duplicate's original, or everything before `Store::sync`, may sit in a range
    /// that failed before a reopen; a fresh sync decides).
    pub(crate) fn fresh(&self) -> u64 {
        self.note_write()
    }

    /// The engine is being replaced: writes applied but not yet synced are gone.
    pub(crate) fn discard_unsynced(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (lo, hi) = (st.synced, st.written);
        if hi > lo {
            st.push_failure(lo, hi);
            if st.last_error.is_none() {
                st.last_error = Some((
                    io::ErrorKind::Other,
                    "store reopened after an IO error".into(),
                ));
            }
        }
        st.synced = st.synced.max(hi);
        st.ended(&self.done);
    }

    /// Number of syncs done so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).syncs
    }

    pub(crate) fn stop(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.stop = true;
        st.ended(&self.done);
    }
}

/// Unwinds a leader whose sync panicked: fails its range, frees the leadership, wakes all.
struct LeaderGuard<'a> {
    gc: &'a GroupCommit,
    target: u64,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.gc.state.lock().unwrap_or_else(|p| p.into_inner());
        st.syncing = false;
        st.sync_failed(
            self.target,
            (io::ErrorKind::Other, "store sync panicked".into()),
        );
        st.ended(&self.gc.done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_panicking_sync_fails_its_range_and_hangs_nobody() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let gc = GroupCommit::new(Box::new(move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("sync blew up");
            }
            Ok(())
        }));
        let g1 = gc.note_write();
        let gc2 = Arc::clone(&gc);
        let led = std::thread::spawn(move || gc2.wait(g1)).join();
        assert!(
            led.is_err(),
            "the leader's panic propagates to its own caller"
        );
        // The failed generation never reads as synced, even after a good sync.
        assert!(gc.wait(g1).is_err());
        let g2 = gc.note_write();
        gc.wait(g2).unwrap();
        assert!(gc.wait(g1).is_err());
    }

    #[test]
    fn failures_merge_and_a_failed_generation_stays_failed() {
        let gc = GroupCommit::new(Box::new(|| Err(io::Error::other("disk gone"))));
        let first = gc.note_write();
        assert!(gc.wait(first).is_err());
        // Many more failed rounds, more than the range list keeps separately.
        for _ in 0..200 {
            let g = gc.note_write();
            assert!(gc.wait(g).is_err());
            gc.discard_unsynced();
        }
        assert!(gc.wait(first).is_err(), "the first failure was forgotten");
    }
}
