//! Bounded byte buffers: one trait, two backings.
//!
//! Every buffer a session holds (a frame being decoded, the last accepted frame, an MLLP
//! block, an order being sent, bytes to transmit) is a [`Buffer`] with a limit fixed at
//! construction. At the limit `try_push`/`try_extend` return [`Full`] — never a panic, never
//! growth — and the session turns that into a typed error that names the limit
//! ([`CapacityError`]).
//!
//! - `heapless::Vec<u8, N>`: the capacity is the const `N` (a limit asked for at
//!   construction is clamped to it). No allocator is needed: this is what firmware uses.
//! - [`VecBuf`] (feature `alloc`): grows on demand up to a limit chosen at run time (the
//!   agent's `max_frame = "64KiB"`, `max_message = "4MiB"`), so a channel configured for
//!   big messages costs memory only when one arrives.
//!
//! Sessions are generic over the backing (`Receiver<B: Buffer>`), so one set of rules and
//! one set of tests serve both builds.

/// A buffer is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Which limit a session ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_frame`: FN and text of one ASTM frame.
    Frame,
    /// `max_message`: one message (ASTM records, an MLLP block, a raw message).
    Message,
    /// The buffer that holds an outgoing order or answer.
    Order,
    /// The buffer that holds bytes waiting to be written (an HL7 ACK).
    Transmit,
}

/// A limit was reached: which one, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityError {
    /// The limit.
    pub limit: Limit,
    /// Its size in bytes.
    pub capacity: usize,
}

impl core::fmt::Display for CapacityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self.limit {
            Limit::Frame => "max_frame",
            Limit::Message => "max_message",
            Limit::Order => "the order buffer",
            Limit::Transmit => "the transmit buffer",
        };
        write!(f, "over {what} ({} bytes)", self.capacity)
    }
}

/// A byte buffer with a fixed limit.
pub trait Buffer {
    /// An empty buffer holding at most `limit` bytes (a fixed-capacity backing clamps
    /// `limit` to its capacity).
    fn with_limit(limit: usize) -> Self;
    /// The most bytes it will hold.
    fn limit(&self) -> usize;
    /// The bytes held.
    fn as_slice(&self) -> &[u8];
    /// Forget the bytes (a growable backing keeps its allocation).
    fn clear(&mut self);
    /// Keep the first `len` bytes.
    fn truncate(&mut self, len: usize);
    /// Append one byte, or `Full` at the limit.
    fn try_push(&mut self, b: u8) -> Result<(), Full>;
    /// Append all of `bytes`, or nothing and `Full` if they do not fit.
    fn try_extend(&mut self, bytes: &[u8]) -> Result<(), Full>;

    /// Bytes held.
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// True when nothing is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes that still fit.
    fn room(&self) -> usize {
        self.limit().saturating_sub(self.len())
    }
    /// Replace the contents with `bytes`.
    fn try_set(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.clear();
        self.try_extend(bytes)
    }
}

impl<const N: usize> Buffer for heapless::Vec<u8, N> {
    fn with_limit(_limit: usize) -> Self {
        heapless::Vec::new()
    }
    fn limit(&self) -> usize {
        N
    }
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn clear(&mut self) {
        heapless::Vec::clear(self)
    }
    fn truncate(&mut self, len: usize) {
        heapless::Vec::truncate(self, len)
    }
    fn try_push(&mut self, b: u8) -> Result<(), Full> {
        self.push(b).map_err(|_| Full)
    }
    fn try_extend(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.extend_from_slice(bytes).map_err(|_| Full)
    }
}

/// A growable buffer with a run-time limit (feature `alloc`).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecBuf {
    v: alloc::vec::Vec<u8>,
    limit: usize,
}

#[cfg(feature = "alloc")]
impl VecBuf {
    /// The bytes, as a `Vec`.
    pub fn into_vec(self) -> alloc::vec::Vec<u8> {
        self.v
    }

    /// Gives back memory past `keep` bytes of capacity (after an unusually big message).
    pub fn shrink_to(&mut self, keep: usize) {
        if self.v.capacity() > keep.max(self.v.len()) {
            self.v.shrink_to(keep.max(self.v.len()));
        }
    }
}

#[cfg(feature = "alloc")]
impl Buffer for VecBuf {
    fn with_limit(limit: usize) -> Self {
        VecBuf {
            v: alloc::vec::Vec::new(),
            limit,
        }
    }
    fn limit(&self) -> usize {
        self.limit
    }
    fn as_slice(&self) -> &[u8] {
        &self.v
    }
    fn clear(&mut self) {
        self.v.clear()
    }
    fn truncate(&mut self, len: usize) {
        self.v.truncate(len)
    }
    fn try_push(&mut self, b: u8) -> Result<(), Full> {
        if self.v.len() >= self.limit {
            return Err(Full);
        }
        self.v.push(b);
        Ok(())
    }
    fn try_extend(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if bytes.len() > self.room() {
            return Err(Full);
        }
        self.v.extend_from_slice(bytes);
        Ok(())
    }
}

/// Somewhere to write bytes that cannot fail part-way: a `Vec` grows, a [`Bounded`]
/// remembers that something did not fit.
pub trait Sink {
    /// Append one byte.
    fn put(&mut self, b: u8);
    /// Append bytes.
    fn put_all(&mut self, bytes: &[u8]);
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    fn put(&mut self, b: u8) {
        self.push(b)
    }
    fn put_all(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
}

/// A [`Sink`] over a [`Buffer`]: writes what fits, and [`Bounded::finish`] says whether
/// everything did.
pub struct Bounded<'a, B> {
    buf: &'a mut B,
    full: bool,
}

impl<'a, B: Buffer> Bounded<'a, B> {
    /// Writes append to `buf`.
    pub fn new(buf: &'a mut B) -> Self {
        Bounded { buf, full: false }
    }
    /// `Err(Full)` if some byte did not fit.
    pub fn finish(self) -> Result<(), Full> {
        if self.full {
            Err(Full)
        } else {
            Ok(())
        }
    }
}

impl<B: Buffer> Sink for Bounded<'_, B> {
    fn put(&mut self, b: u8) {
        if self.buf.try_push(b).is_err() {
            self.full = true;
        }
    }
    fn put_all(&mut self, bytes: &[u8]) {
        if self.buf.try_extend(bytes).is_err() {
            self.full = true;
        }
    }
}

/// A small FIFO of bytes or events with a fixed capacity; pushing past it drops nothing
/// silently: it returns the item back.
#[derive(Debug)]
pub(crate) struct Queue<T, const N: usize>(heapless::Deque<T, N>);

impl<T, const N: usize> Queue<T, N> {
    pub(crate) const fn new() -> Self {
        Queue(heapless::Deque::new())
    }
    pub(crate) fn push(&mut self, t: T) -> Result<(), T> {
        self.0.push_back(t)
    }
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    pub(crate) fn clear(&mut self) {
        self.0.clear()
    }
    pub(crate) fn room(&self) -> usize {
        N - self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<B: Buffer>(mut b: B) -> B {
        assert_eq!(b.try_extend(b"abcd"), Ok(()));
        assert_eq!(b.try_extend(b"efg"), Err(Full), "all or nothing");
        assert_eq!(b.as_slice(), b"abcd");
        assert_eq!(b.try_push(b'e'), Ok(()));
        assert_eq!(b.try_push(b'f'), Err(Full));
        assert_eq!(b.room(), 0);
        b
    }

    #[test]
    fn both_backings_stop_at_their_limit() {
        let h = fill(heapless::Vec::<u8, 5>::with_limit(1000));
        assert_eq!(h.limit(), 5, "a fixed capacity clamps the asked limit");
        #[cfg(feature = "alloc")]
        {
            let v = fill(VecBuf::with_limit(5));
            assert_eq!(v.as_slice(), h.as_slice());
        }
    }

    #[test]
    fn capacity_errors_name_the_limit() {
        use core::fmt::Write;
        let mut s = heapless::String::<64>::new();
        write!(
            s,
            "{}",
            CapacityError {
                limit: Limit::Frame,
                capacity: 256
            }
        )
        .unwrap();
        assert_eq!(s.as_str(), "over max_frame (256 bytes)");
    }
}
