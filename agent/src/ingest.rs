//! The ingest runtime: every channel's driver on one thread.
//!
//! The channel drivers run on a current-thread tokio runtime of their own, on one
//! long-lived thread, apart from the agent's main runtime (uplink, status socket, metrics,
//! signals). On that thread a message costs its work and no thread hand-off: a connection's
//! read, the session, the store's apply and the ACK all happen there; eight connections
//! that wrote in the same wake-up share one `fdatasync`, made by the first of them to wait
//! ([`Store::wait_durable`](crate::store::Store::wait_durable)), and each is woken once by
//! its own socket. A multi-thread runtime would instead wake idle workers to steal every
//! ready task (futex calls and context switches per message, measured in
//! docs/perf/ingest.md).
//!
//! Sockets and serial ports of a channel must be created inside this runtime (they belong
//! to the reactor of the runtime that creates them): build a channel's `Link` under
//! [`Ingest::enter`], then [`Ingest::spawn`] its supervisor.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{EnterGuard, Handle};
use tokio::sync::oneshot;

/// The ingest thread and its runtime; stopped (and its tasks dropped) when dropped.
pub struct Ingest {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Starts the thread `ingest` with its runtime.
    pub fn start() -> io::Result<Ingest> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                crate::store::calls_in_place();
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Ingest {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Makes the ingest runtime current on this thread while the guard lives (to create
    /// sockets and ports that belong to it).
    pub fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }

    /// Runs `f` on the ingest thread.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_on_the_ingest_thread_and_sockets_belong_to_it() {
        let ingest = Ingest::start().unwrap();
        let listener = {
            let _g = ingest.enter();
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(std).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let served = ingest.spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            std::thread::current().name().map(str::to_string)
        });
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(served.await.unwrap().as_deref(), Some("ingest"));
        drop(ingest);
    }
}
