//! The board-independent half of the firmware: the link's configuration and buffer sizes,
//! and the committer that prints each committed message as one line of hex. The board
//! half (UARTs, SysTick, interrupts) is in `main.rs`; docs/FIRMWARE.md explains both.
//!
//! No allocator: the session's buffers are `heapless::Vec`s whose capacity is a const
//! ([`Buf`]), and a message is never held whole — each frame's text is printed when the
//! session commits it, before the frame is acknowledged. So RAM does not grow with the
//! message: a 30 KB message needs the same few KiB as a 30-byte one.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use embedded_io::Write;
use labagent_hal::astm::link::LinkConfig;
use labagent_hal::astm::receiver::ReceiverConfig;
use labagent_hal::astm::sender::SenderConfig;
use labagent_hal::drive::Committer;
use labagent_hal::session::{Commit, End};
use labagent_hal::time::Duration;

/// Text bytes of the longest frame the link accepts (LIS1-A's limit).
pub const MAX_TEXT: usize = 240;
/// A session buffer: FN and text of one frame.
pub type Buf = heapless::Vec<u8, { MAX_TEXT + 1 }>;
/// The link session the firmware runs.
pub type Link = labagent_hal::astm::link::Link<Buf>;
/// Bytes the driver reads from UART0 in one go.
pub const RX: usize = 16;
/// The driver's write buffer: the longest thing the session writes. The receiver only
/// writes single bytes (ACK, NAK, EOT); the link's sender, never used here (this board
/// sends no orders), is configured for one-byte frames so this stays small.
pub const TX: usize = 16;

/// The receive timer: a message whose next frame does not come within this is abandoned
/// (its line ends with `-\n`).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The link's configuration: frames of up to [`MAX_TEXT`] text bytes, LIS1-A's timers.
///
/// `max_message` is only a count here (the firmware never holds a message), so it is left
/// high: a frame that would take a message past it is NAKed.
pub fn link_config() -> LinkConfig {
    LinkConfig {
        receiver: ReceiverConfig {
            max_frame: MAX_TEXT + 1,
            max_message: 16 * 1024 * 1024,
            receive_timeout: RECEIVE_TIMEOUT,
            ..ReceiverConfig::default()
        },
        sender: SenderConfig {
            max_text: TX - labagent_hal::astm::frame::OVERHEAD,
            max_message: 1,
            ..SenderConfig::default()
        },
        ..LinkConfig::default()
    }
}

/// Prints committed text to `out` as lowercase hex; `\n` ends a complete message, `-\n` one
/// that will never complete (the receive timer fired). Nothing else is written: no banner,
/// no blank line.
///
/// A commit is answered `true` only once every byte was written; a write error answers it
/// `false` (the frame is NAKed and the instrument sends it again).
pub struct HexLines<W> {
    out: W,
    /// Bytes printed for the message being printed (its line is open).
    open: usize,
}

impl<W: Write> HexLines<W> {
    /// Lines go to `out`.
    pub fn new(out: W) -> Self {
        HexLines { out, open: 0 }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn hex(&mut self, text: &[u8]) -> Result<(), W::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        for chunk in text.chunks(buf.len() / 2) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = DIGITS[usize::from(b >> 4)];
                buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
            }
            self.out.write_all(&buf[..2 * chunk.len()])?;
        }
        self.open += text.len();
        Ok(())
    }

    fn write_commit(&mut self, pieces: Commit<'_>) -> Result<(), W::Error> {
        for p in pieces {
            if p.begins && self.open > 0 {
                // The session closes a message before it opens the next one; should that
                // ever not hold, the old line must not run into the new one.
                self.out.write_all(b"-\n")?;
                self.open = 0;
            }
            self.hex(p.text)?;
            if p.cr {
                self.hex(b"\r")?;
            }
            let Some(end) = p.end else { continue };
            // A message with no text has no line (no blank lines).
            if self.open > 0 {
                match end {
                    End::Complete(_) => self.out.write_all(b"\n")?,
                    End::Incomplete(_) | End::Rejected(_) => self.out.write_all(b"-\n")?,
                }
            }
            self.open = 0;
        }
        self.out.flush()
    }
}

impl<W: Write> Committer for HexLines<W> {
    fn commit(&mut self, pieces: Commit<'_>) -> bool {
        self.write_commit(pieces).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labagent_hal::session::{MessageEnd, Piece};

    fn piece(text: &[u8], cr: bool, begins: bool, end: Option<End>) -> Commit<'_> {
        Commit::One(Some(Piece {
            text,
            cr,
            begins,
            end,
        }))
    }

    #[test]
    fn a_line_per_message_and_a_dash_for_an_abandoned_one() {
        let mut h = HexLines::new(Vec::new());
        assert!(h.commit(piece(b"H|\\^&\r", false, true, None)));
        assert!(h.commit(piece(
            b"L|1",
            true,
            false,
            Some(End::Complete(MessageEnd::Terminator))
        )));
        assert!(h.commit(piece(b"H\r", false, true, None)));
        assert!(h.commit(piece(
            b"",
            false,
            false,
            Some(End::Incomplete(MessageEnd::Timeout))
        )));
        let out = String::from_utf8(h.into_inner()).unwrap();
        assert_eq!(out, "487c5c5e260d4c7c310d\n480d-\n");
    }

    #[test]
    fn no_blank_line_for_an_empty_message_and_no_run_on_lines() {
        let mut h = HexLines::new(Vec::new());
        assert!(h.commit(piece(
            b"",
            false,
            true,
            Some(End::Complete(MessageEnd::Eot))
        )));
        assert!(h.commit(piece(b"\xff", false, true, None)));
        assert!(h.commit(piece(b"\x00", false, true, None)));
        assert_eq!(h.into_inner(), b"ff-\n00");
    }

    #[test]
    fn a_long_text_is_written_in_chunks() {
        let text: Vec<u8> = (0..=255u8).collect();
        let mut h = HexLines::new(Vec::new());
        assert!(h.commit(piece(
            &text,
            false,
            true,
            Some(End::Complete(MessageEnd::Terminator))
        )));
        let want: String = text.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n";
        assert_eq!(String::from_utf8(h.into_inner()).unwrap(), want);
    }

    #[test]
    fn a_write_error_refuses_the_commit() {
        let mut buf = [0u8; 4];
        let mut h = HexLines::new(&mut buf[..]);
        assert!(!h.commit(piece(b"H|\\^&\r", false, true, None)));
    }

    #[test]
    fn the_config_fits_the_buffers() {
        let cfg = link_config();
        let link = Link::new(cfg);
        use labagent_hal::session::Session;
        assert!(link.max_transmit() <= TX);
        assert_eq!(link.receiver().max_frame(), MAX_TEXT + 1);
    }
}
