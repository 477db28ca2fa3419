//! One write for a request's head and a small body.
//!
//! ureq hands its transport the request head and then the body, one `transmit_output`
//! each, so every POST was two `sendto` calls: two TCP segments, two wake-ups of the
//! server, and over HTTPS two TLS records. Nothing needs the head on the wire before the
//! body (the uplink never sends `Expect: 100-continue`, and ureq waits for input before
//! anything that depends on the server), so this layer holds what ureq writes and sends it
//! at once when the call first waits for the server, or as soon as more than
//! [`HOLD_MAX`] bytes are held: a large Bundle still streams, in runs of that size.
//!
//! It sits on top of ureq's own chain (TCP, proxy, TLS): plain text is gathered before TLS
//! sees it, so a small request is also one TLS record.

use std::fmt;

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use ureq::Error;

/// Most bytes held before they are written anyway.
pub(crate) const HOLD_MAX: usize = 16 * 1024;

/// The [`Connector`] that wraps the transport the chain before it made.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Coalesce;

impl<In: Transport> Connector<In> for Coalesce {
    type Out = Coalescing<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        Ok(chained.map(Coalescing::new))
    }
}

/// A transport whose writes wait until the call reads (see the module's text).
pub(crate) struct Coalescing<T> {
    inner: T,
    held: Vec<u8>,
}

impl<T: Transport> Coalescing<T> {
    pub(crate) fn new(inner: T) -> Self {
        Coalescing {
            inner,
            held: Vec::new(),
        }
    }

    /// Writes what is held through the inner transport, in runs of its output buffer.
    fn flush(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        let result = self.write_held(timeout);
        // After an error the connection is not reused; nothing held may go out later.
        self.held.clear();
        result
    }

    fn write_held(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        let mut from = 0;
        while from < self.held.len() {
            let out = self.inner.buffers().output();
            let n = out.len().min(self.held.len() - from);
            if n == 0 {
                return Err(Error::Io(std::io::Error::other(
                    "transport has no output buffer",
                )));
            }
            out[..n].copy_from_slice(&self.held[from..from + n]);
            self.inner.transmit_output(n, timeout)?;
            from += n;
        }
        Ok(())
    }
}

impl<T: Transport> Transport for Coalescing<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        if self.held.is_empty() && amount > HOLD_MAX {
            // A large piece on its own: no copy.
            return self.inner.transmit_output(amount, timeout);
        }
        let out = &self.inner.buffers().output()[..amount];
        self.held.extend_from_slice(out);
        if self.held.len() > HOLD_MAX {
            self.flush(timeout)?;
        }
        Ok(())
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.flush(timeout)?;
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.flush(timeout)?;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        // Bytes still held mean a request was left half-written: not reusable.
        self.held.is_empty() && self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl<T: fmt::Debug> fmt::Debug for Coalescing<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescing")
            .field("inner", &self.inner)
            .field("held", &self.held.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::LazyBuffers;

    /// Records each write the layer below receives, and each wait for input.
    #[derive(Debug)]
    struct Wire {
        buffers: LazyBuffers,
        writes: Vec<Vec<u8>>,
        waits: usize,
    }

    impl Wire {
        fn new(output: usize) -> Self {
            Wire {
                buffers: LazyBuffers::new(4096, output),
                writes: Vec::new(),
                waits: 0,
            }
        }
    }

    impl Transport for Wire {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, amount: usize, _: NextTimeout) -> Result<(), Error> {
            let out = self.buffers.output()[..amount].to_vec();
            self.writes.push(out);
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, Error> {
            self.waits += 1;
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            true
        }
    }

    /// What ureq does: write into the transport's output buffer, then transmit it.
    fn write(t: &mut impl Transport, bytes: &[u8]) {
        for piece in bytes.chunks(t.buffers().output().len()) {
            t.buffers().output()[..piece.len()].copy_from_slice(piece);
            t.transmit_output(piece.len(), NextTimeout::default())
                .unwrap();
        }
    }

    fn joined(w: &Wire) -> Vec<u8> {
        w.writes.concat()
    }

    #[test]
    fn head_and_small_body_leave_in_one_write_when_the_call_waits() {
        let mut t = Coalescing::new(Wire::new(64 * 1024));
        let head = b"POST /ingest HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
        let body = vec![b'x'; 1000];
        write(&mut t, head);
        write(&mut t, &body);
        assert!(t.inner.writes.is_empty(), "nothing written before the wait");
        assert!(!t.is_open(), "a half-written request is not reusable");
        t.await_input(NextTimeout::default()).unwrap();
        assert_eq!(t.inner.writes.len(), 1);
        assert_eq!(t.inner.waits, 1);
        assert_eq!(joined(&t.inner), [&head[..], &body[..]].concat());
        assert!(t.is_open());
        // The next wait has nothing to send.
        t.maybe_await_input(NextTimeout::default()).unwrap();
        assert_eq!(t.inner.writes.len(), 1);
    }

    #[test]
    fn a_large_body_streams_in_bounded_runs_and_in_order() {
        let mut t = Coalescing::new(Wire::new(8 * 1024));
        let head = b"POST /fhir HTTP/1.1\r\nContent-Length: 300000\r\n\r\n".to_vec();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write(&mut t, &head);
        write(&mut t, &body);
        // Most of it is on the wire before the call waits, never more than HOLD_MAX + one
        // output buffer held.
        let sent: usize = t.inner.writes.iter().map(Vec::len).sum();
        assert!(head.len() + body.len() - sent <= HOLD_MAX);
        t.await_input(NextTimeout::default()).unwrap();
        assert_eq!(joined(&t.inner), [&head[..], &body[..]].concat());
        assert!(t.inner.writes.iter().all(|w| w.len() <= 8 * 1024));
    }

    #[test]
    fn a_piece_larger_than_the_hold_is_written_before_any_wait() {
        let mut t = Coalescing::new(Wire::new(64 * 1024));
        let big = vec![7u8; HOLD_MAX + 1];
        write(&mut t, &big);
        assert_eq!(t.inner.writes, vec![big]);
    }
}
