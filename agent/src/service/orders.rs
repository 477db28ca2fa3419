//! The order cache's upkeep: [`sweep`] at start and every [`SWEEP_EVERY`] — pending
//! orders older than `[buffer] orders_keep` are expired (reported `expired`), finished
//! ones are forgotten after it.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::channel::{Hooks, OrderReport};
use crate::store::Store;

/// How often the order cache is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// One sweep (blocking): expired orders are logged (ids only) and, when the store does
/// not keep reports itself, handed to `hooks.order`.
pub fn sweep(store: &Store, keep: Duration, hooks: &Hooks) {
    match store.sweep_orders(keep, SystemTime::now()) {
        Ok(s) => {
            for o in &s.expired {
                tracing::warn!(channel = %o.channel, order = %o.id, "order expired: not sent within orders_keep");
                if !store.options().order_reports {
                    (hooks.order)(OrderReport {
                        channel: o.channel.clone(),
                        id: o.id.clone(),
                        state: "expired".into(),
                        detail: o.detail.clone().unwrap_or_default(),
                    });
                }
            }
            if s.forgotten > 0 {
                tracing::info!(
                    forgotten = s.forgotten,
                    "finished orders past orders_keep forgotten"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "order sweep failed; tried again later"),
    }
}

/// Sweeps now and every [`SWEEP_EVERY`] until `stopping` turns true.
pub async fn sweeper(
    store: Store,
    keep: Duration,
    hooks: Hooks,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let (s, h) = (store.clone(), hooks.clone());
        let _ = tokio::task::spawn_blocking(move || sweep(&s, keep, &h)).await;
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
