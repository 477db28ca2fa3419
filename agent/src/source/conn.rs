//! One connection handed to a protocol driver, and the idle-timeout wrapper.
//!
//! A [`Conn`] watches its own reads and writes: an error or a 0-byte read (EOF, or a
//! hung-up tty) is remembered as the reason it ended, so the link can report it and decide
//! how long to back off without the driver having to explain. Dropping the `Conn` closes
//! the port or socket and releases its slot.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::status::StatusTx;

/// What a [`Conn`] carries: any async byte stream.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// What a connection did, shared with the link that made it.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    bytes_read: AtomicU64,
    ended: Mutex<Option<String>>,
}

impl Tracker {
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub(crate) fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn end(&self, why: String) {
        let mut e = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(why);
        }
    }
}

/// A byte pipe to an instrument: a serial port or a TCP connection.
///
/// Read until an error or EOF, then drop it and ask the link for the next one.
pub struct Conn {
    label: String,
    io: Box<dyn AsyncStream>,
    tracker: Arc<Tracker>,
    status: StatusTx,
    sequential: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Conn {
    pub(crate) fn new(
        label: String,
        io: Box<dyn AsyncStream>,
        status: StatusTx,
        sequential: bool,
        slot: Option<OwnedSemaphorePermit>,
    ) -> (Self, Arc<Tracker>) {
        let tracker = Arc::new(Tracker::default());
        status.conn_opened();
        let conn = Conn {
            label,
            io,
            tracker: tracker.clone(),
            status,
            sequential,
            _slot: slot,
        };
        (conn, tracker)
    }

    /// A connection made outside a link (tests, the simulator, an accepted socket of your
    /// own): no port status is reported, no slot is held.
    pub fn detached(label: impl Into<String>, io: Box<dyn AsyncStream>) -> Conn {
        let label = label.into();
        let status = StatusTx::new(label.clone());
        Conn::new(label, io, status, false, None).0
    }

    /// The device (`path -> /dev/ttyUSB0`) or the peer address, for logs and status.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Why the connection ended (error text or "end of stream"), once it has.
    pub fn end_reason(&self) -> Option<String> {
        self.tracker.ended()
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("label", &self.label).finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.status
            .conn_closed(self.sequential, self.tracker.ended());
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.io).poll_read(cx, buf));
        match &r {
            Ok(()) => {
                let n = buf.filled().len() - before;
                if n == 0 && buf.remaining() > 0 {
                    this.tracker.end("end of stream".to_owned());
                } else {
                    this.tracker
                        .bytes_read
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e) => this.tracker.end(e.to_string()),
        }
        Poll::Ready(r)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        if let Err(e) = &r {
            this.tracker.end(e.to_string());
        }
        Poll::Ready(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.io).poll_flush(cx));
        if let Err(e) = &r {
            this.tracker.end(e.to_string());
        }
        Poll::Ready(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Wraps a stream so that reads fail with [`io::ErrorKind::TimedOut`] once nothing has
/// been read or written for `idle`. A driver that always has a read pending (they all do)
/// thus closes a silent connection without a timer of its own.
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    fn touch(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if r.is_ok() && buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("idle for {:?}", self.idle),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if matches!(r, Ok(n) if n > 0) {
            self.touch();
        }
        Poll::Ready(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_when_silent() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(10));
        let start = Instant::now();
        // Traffic at 6 s keeps it alive past the first 10 s.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            b
        });
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).await.unwrap(), 1);
        let _b = writer.await.unwrap();
        let err = a.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test]
    async fn conn_records_end_of_stream() {
        let (a, b) = tokio::io::duplex(64);
        let status = StatusTx::new("test");
        let rx = status.subscribe();
        let (mut conn, tracker) = Conn::new("peer".into(), Box::new(a), status, true, None);
        drop(b);
        let mut buf = [0u8; 4];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        assert_eq!(tracker.ended().as_deref(), Some("end of stream"));
        assert_eq!(rx.borrow().connections, 1);
        drop(conn);
        assert_eq!(rx.borrow().connections, 0);
        assert_eq!(
            rx.borrow().state,
            crate::source::status::PortState::Reconnecting
        );
    }
}
