//! Blocking store calls from async code.

use std::cell::Cell;
use std::io;

use super::{Store, StoreError};

thread_local! {
    /// This thread runs its store calls in place (see [`calls_in_place`]).
    static IN_PLACE: Cell<bool> = const { Cell::new(false) };
}

/// From now on, [`Store::call`] on this thread runs the call in place, blocking the
/// thread's runtime for its length. For the ingest thread (`crate::ingest`): its commits
/// already run their store writes in place, and its other calls (orders, host-query
/// lookups) are as short; through a blocking pool each would cost two thread hand-offs and
/// the runtime a pool thread of its own (a thread more, created again after each idle
/// spell; issue 23 asks for a fixed count under load).
pub fn calls_in_place() {
    IN_PLACE.with(|c| c.set(true));
}

impl Store {
    /// Runs a blocking store call without stalling the runtime's other tasks.
    ///
    /// On a multi-thread runtime the call runs in place: `block_in_place` first hands this
    /// worker's other tasks to another thread, and the task goes on with the result at
    /// once. A current-thread runtime (the channels' ingest thread, tests on tokio's paused
    /// clock) cannot block in place; there the call goes to the blocking pool, except on
    /// the ingest thread, which runs it in place ([`calls_in_place`]). None of this is on
    /// the ingest hot path: a channel's commits use the store's `*_nowait` calls and wait
    /// for their sync without blocking ([`super::commits`]); orders, order reports and
    /// host-query lookups come here.
    ///
    /// One difference remains: aborting the task (a channel stopped past its deadline)
    /// takes effect only once a call under way returns, where through the pool the task
    /// went at once and the call finished detached. A store that hangs for good starves the
    /// systemd watchdog instead (`service`), and the agent is restarted.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::Io(io::Error::other(format!("store task failed: {e}")))
        };
        if IN_PLACE.with(Cell::get) {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&store)))
                .unwrap_or_else(|_| Err(failed(&"panicked")));
        }
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // A panic in the store stays a store error, as it is through the pool.
            return tokio::task::block_in_place(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&store)))
            })
            .unwrap_or_else(|_| Err(failed(&"panicked")));
        }
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(failed(&e)),
        }
    }
}
