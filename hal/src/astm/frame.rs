//! E1381 frames: `STX FN text ETB|ETX C1 C2 CR LF`.
//!
//! - [`checksum`] is the byte sum from FN through ETB/ETX inclusive, mod 256.
//! - [`encode_frame`] writes one frame; [`split_text`] cuts a record text into chunks of
//!   at most [`MAX_TEXT`] bytes (the sender's ETB split).
//! - [`FrameDecoder`] is fed one byte at a time and reports complete frames, bad frames
//!   and bytes outside frames. Invariants:
//!   * memory is bounded by `max_frame` (FN + text); an oversized frame is discarded
//!     up to its end (ETB/ETX + checksum + trailer) or the next STX/EOT, and reported once
//!     as [`FrameError::TooLong`];
//!   * a frame completes when the checksum and the first trailer byte (CR or LF) are in;
//!     an LF directly after a CR trailer is swallowed (no second reply);
//!   * a missing trailer is tolerated when the next byte is STX, EOT or ENQ (the frame
//!     completes, then that byte is processed): no fixture needs this, but a frame is
//!     never lost for want of a CR;
//!   * checksum hex digits are accepted in either case.

use super::{CR, ENQ, EOT, ETB, ETX, LF, STX};
use crate::buf::Buffer;

/// Text bytes per frame that a standard sender never exceeds.
pub const MAX_TEXT: usize = 240;
/// Frame overhead: STX FN ETX C1 C2 CR LF.
pub const OVERHEAD: usize = 7;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The checksum did not match (or was not two hex digits).
    Checksum,
    /// A control character that LIS1-A forbids appeared in the text.
    ControlChar(u8),
    /// The frame exceeded the configured `max_frame`.
    TooLong,
    /// FN was not an ASCII digit 0..7.
    FrameNumber,
    /// Something other than CR/LF (or STX/EOT/ENQ) followed the checksum.
    Trailer,
}

/// Sum of bytes mod 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// Characters forbidden in frame text (CR is allowed: it ends each record).
pub fn is_forbidden(b: u8) -> bool {
    matches!(b, 0x01..=0x06 | 0x0A | 0x10..=0x17)
}

fn hex_digit(n: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(n & 0x0F)]
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Encode one frame into `out`; returns the length, or `None` if `out` is too small.
/// `fn_digit` is taken mod 8; `last` selects ETX (else ETB).
pub fn encode_frame(fn_digit: u8, text: &[u8], last: bool, out: &mut [u8]) -> Option<usize> {
    let len = text.len().checked_add(OVERHEAD)?;
    let out = out.get_mut(..len)?;
    let fnb = b'0' + (fn_digit % 8);
    let end = if last { ETX } else { ETB };
    let cs = checksum(text).wrapping_add(fnb).wrapping_add(end);
    let (head, rest) = out.split_at_mut(2);
    head.copy_from_slice(&[STX, fnb]);
    let (body, tail) = rest.split_at_mut(text.len());
    body.copy_from_slice(text);
    tail.copy_from_slice(&[end, hex_digit(cs >> 4), hex_digit(cs), CR, LF]);
    Some(len)
}

/// Split `text` into frame-sized chunks (at most `max_text` bytes, at least 1).
pub fn split_text(text: &[u8], max_text: usize) -> core::slice::Chunks<'_, u8> {
    text.chunks(max_text.max(1))
}

/// A decoded, checksum-verified frame borrowed from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Frame number 0..7.
    pub number: u8,
    /// Frame text (between FN and ETB/ETX).
    pub text: &'a [u8],
    /// ETX (true) or ETB (false).
    pub last: bool,
}

/// What one input byte produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Nothing yet.
    Nothing,
    /// A good frame.
    Frame(Frame<'a>),
    /// A bad frame (reply NAK).
    Bad(FrameError),
    /// A byte outside any frame (ENQ, EOT, ACK, noise...).
    Outside(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Body,
    Discard,
    Cs1,
    Cs2,
    Trailer,
    AfterCr,
}

/// Incremental frame decoder with a bounded buffer.
#[derive(Debug)]
pub struct FrameDecoder<B> {
    max_frame: usize,
    buf: B,
    st: St,
    last: bool,
    cs_hi: u8,
    cs_given: Option<u8>,
    err: Option<FrameError>,
    /// A byte that must be processed again after the frame it ended was reported.
    replay: Option<u8>,
}

impl<B: Buffer> FrameDecoder<B> {
    /// A decoder accepting frames of up to `max_frame` bytes of FN + text (at most the
    /// buffer's capacity).
    pub fn new(max_frame: usize) -> Self {
        let buf = B::with_limit(max_frame.max(2));
        FrameDecoder {
            max_frame: max_frame.max(2).min(buf.limit()),
            buf,
            st: St::Idle,
            last: false,
            cs_hi: 0,
            cs_given: None,
            err: None,
            replay: None,
        }
    }

    /// Forget any partial frame.
    pub fn reset(&mut self) {
        self.st = St::Idle;
        self.buf.clear();
        self.err = None;
        self.replay = None;
    }

    /// Bytes currently buffered (always `<= max_frame`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The effective frame limit (FN + text).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// FN and text of the frame the last [`Decoded::Frame`] reported, until the next STX.
    pub fn last_frame(&self) -> &[u8] {
        self.buf.as_slice()
    }

    /// True while inside a frame.
    pub fn in_frame(&self) -> bool {
        !matches!(self.st, St::Idle | St::AfterCr)
    }

    /// Take the byte that ended a trailer-less frame, to be fed again.
    pub fn take_replay(&mut self) -> Option<u8> {
        self.replay.take()
    }

    fn start(&mut self) {
        self.buf.clear();
        self.err = None;
        self.st = St::Body;
    }

    fn finish(&mut self, next: St) -> Decoded<'_> {
        self.st = next;
        if let Some(e) = self.err.take() {
            return Decoded::Bad(e);
        }
        let (fnb, text) = match self.buf.as_slice().split_first() {
            Some((f, t)) => (*f, t),
            None => return Decoded::Bad(FrameError::FrameNumber),
        };
        let end = if self.last { ETX } else { ETB };
        let cs = checksum(self.buf.as_slice()).wrapping_add(end);
        if Some(cs) != self.cs_given {
            return Decoded::Bad(FrameError::Checksum);
        }
        if !(b'0'..=b'7').contains(&fnb) {
            return Decoded::Bad(FrameError::FrameNumber);
        }
        Decoded::Frame(Frame {
            number: fnb - b'0',
            text,
            last: self.last,
        })
    }

    /// Feed one byte.
    pub fn push(&mut self, b: u8) -> Decoded<'_> {
        match self.st {
            St::Idle | St::AfterCr => {
                let after_cr = self.st == St::AfterCr;
                self.st = St::Idle;
                if b == STX {
                    self.start();
                    Decoded::Nothing
                } else if after_cr && b == LF {
                    Decoded::Nothing
                } else {
                    Decoded::Outside(b)
                }
            }
            St::Body | St::Discard => match b {
                STX => {
                    // A new frame starts: the old one is abandoned without a reply.
                    self.start();
                    Decoded::Nothing
                }
                EOT => {
                    self.st = St::Idle;
                    self.buf.clear();
                    Decoded::Outside(EOT)
                }
                ETX | ETB => {
                    self.last = b == ETX;
                    self.st = St::Cs1;
                    Decoded::Nothing
                }
                _ => {
                    if self.st == St::Discard {
                        return Decoded::Nothing;
                    }
                    if self.buf.len() >= self.max_frame {
                        self.err = Some(FrameError::TooLong);
                        self.buf.clear();
                        self.st = St::Discard;
                        return Decoded::Nothing;
                    }
                    if !self.buf.is_empty() && is_forbidden(b) && self.err.is_none() {
                        self.err = Some(FrameError::ControlChar(b));
                    }
                    // Cannot fail: the length was checked against max_frame <= limit.
                    let _ = self.buf.try_push(b);
                    Decoded::Nothing
                }
            },
            St::Cs1 | St::Cs2 => match hex_value(b) {
                Some(v) if self.st == St::Cs1 => {
                    self.cs_hi = v;
                    self.st = St::Cs2;
                    Decoded::Nothing
                }
                Some(v) => {
                    self.cs_given = Some((self.cs_hi << 4) | v);
                    self.st = St::Trailer;
                    Decoded::Nothing
                }
                None => self.bad_tail(b),
            },
            St::Trailer => match b {
                CR => self.finish(St::AfterCr),
                LF => self.finish(St::Idle),
                STX | EOT | ENQ => {
                    self.replay = Some(b);
                    self.finish(St::Idle)
                }
                _ => {
                    self.err.get_or_insert(FrameError::Trailer);
                    self.finish(St::Idle)
                }
            },
        }
    }

    fn bad_tail(&mut self, b: u8) -> Decoded<'_> {
        if matches!(b, STX | EOT | ENQ) {
            self.replay = Some(b);
        }
        self.err.get_or_insert(FrameError::Checksum);
        self.cs_given = None;
        self.finish(St::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    type Dec = FrameDecoder<heapless::Vec<u8, 64>>;

    fn cs_of(frame_without_stx: &[u8]) -> u8 {
        checksum(frame_without_stx)
    }

    #[test]
    fn golden_vectors() {
        assert_eq!(cs_of(b"1A|B|C|D\r\x03"), 0xBF);
        assert_eq!(cs_of(b"7G\r\x03"), 0x8E);
        assert_eq!(cs_of(b"0H\r\x03"), 0x88);
        assert_eq!(cs_of(b"1foo|1\rb\x17"), 0xA8);
        let mut out = [0u8; 32];
        let n = encode_frame(1, b"A|B|C|D\r", true, &mut out).unwrap();
        assert_eq!(&out[..n], b"\x021A|B|C|D\r\x03BF\r\n");
        let n = encode_frame(1, b"foo|1\rb", false, &mut out).unwrap();
        assert_eq!(&out[..n], b"\x021foo|1\rb\x17A8\r\n");
        assert!(encode_frame(1, b"A|B|C|D\r", true, &mut out[..10]).is_none());
    }

    type Decoded3 = Result<(u8, Vec<u8>, bool), FrameError>;

    fn decode_all(d: &mut Dec, bytes: &[u8]) -> Vec<Decoded3> {
        let mut v = Vec::new();
        let mut q: Vec<u8> = bytes.iter().rev().copied().collect();
        while let Some(b) = q.pop() {
            match d.push(b) {
                Decoded::Frame(f) => v.push(Ok((f.number, f.text.to_vec(), f.last))),
                Decoded::Bad(e) => v.push(Err(e)),
                _ => {}
            }
            if let Some(r) = d.take_replay() {
                q.push(r);
            }
        }
        v
    }

    #[test]
    fn decoder_trailers_and_case() {
        let mut d = Dec::new(64);
        let r = decode_all(
            &mut d,
            b"\x027G\r\x038e\r\n\x020H\r\x0388\n\x021A|B|C|D\r\x03BF\r",
        );
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|x| x.is_ok()));
        // No trailer, next byte is EOT.
        let r = decode_all(&mut d, b"\x027G\r\x038E\x04");
        assert_eq!(r, [Ok((7, b"G\r".to_vec(), true))]);
    }

    #[test]
    fn decoder_errors() {
        let mut d = Dec::new(12);
        assert_eq!(
            decode_all(&mut d, b"\x021A|B|C|D\r\x0300\r\n"),
            [Err(FrameError::Checksum)]
        );
        assert_eq!(
            decode_all(&mut d, b"\x021A\x05\r\x0300\r\n"),
            [Err(FrameError::ControlChar(5))]
        );
        assert_eq!(
            decode_all(&mut d, b"\x021ABCDEFGHIJKLMNOP\r\x03BF\r\n"),
            [Err(FrameError::TooLong)]
        );
        assert!(d.buffered() <= 12);
        assert_eq!(
            decode_all(&mut d, b"\x027G\r\x038E\r\n"),
            [Ok((7, b"G\r".to_vec(), true))]
        );
    }
}
