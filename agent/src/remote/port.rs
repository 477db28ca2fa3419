//! What a transport (the MQTT session, the HTTPS feed) needs from the command side.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The command side as a transport sees it (implemented by `service::remote::RemoteHub`).
pub trait CommandPort: Send + Sync {
    /// One command as received (blocking). `Ok`: it is recorded durably, or refused and
    /// reported — acknowledge it (PUBACK, move the cursor). `Err`: the store could not
    /// record it — do not acknowledge; it comes again.
    fn intake(&self, payload: &[u8], via: &str) -> Result<(), String>;
    /// Results not yet delivered: (command id, result document) (blocking).
    fn pending_results(&self) -> Vec<(String, Vec<u8>)>;
    /// The broker acknowledged / the server accepted this result (blocking).
    fn delivered(&self, id: &str);
    /// Notified when a new result is ready.
    fn results_ready(&self) -> Arc<Notify>;
    /// Blocks until the result generation differs from `seen` or `timeout` passes;
    /// returns the current generation (for threads without a runtime).
    fn wait_results(&self, seen: u64, timeout: Duration) -> u64;
    /// The retained presence document (`{"state":"online", ...status}`), `None` before the
    /// first one.
    fn presence(&self) -> watch::Receiver<Option<Vec<u8>>>;
    /// An upload of a result that started at this wall-clock time succeeded (HTTPS
    /// trial; the command feed's polls are seen through its status).
    fn poll_ok(&self, started: std::time::SystemTime);
}
