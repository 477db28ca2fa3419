//! ASTM E1381 (CLSI LIS1-A) link layer and E1394 (CLSI LIS2-A2) records.
//!
//! - [`frame`]: the frame codec (`STX FN text ETB|ETX C1 C2 CR LF`), checksum, and an
//!   incremental, bounded [`frame::FrameDecoder`];
//! - [`split`]: where a message ends (L record, next H), a byte at a time;
//! - [`receiver`]: the receiving side (instrument → host), a commit per frame: no ACK
//!   leaves the session for bytes the driver has not committed;
//! - [`sender`]: the sending side (host → instrument: orders, query answers);
//! - [`link`]: both on one line, with contention and order attempts: the host's session;
//! - [`record`]: a zero-copy view of E1394 records, fields, repeats and components.
//!
//! All sessions are sans-IO: bytes and time go in, bytes to write and events come out.

pub mod frame;
pub mod link;
pub mod receiver;
pub mod record;
pub mod sender;
pub mod split;

/// Start of text.
pub const STX: u8 = 0x02;
/// End of text (last frame of a record/message).
pub const ETX: u8 = 0x03;
/// End of transmission.
pub const EOT: u8 = 0x04;
/// Enquiry (request to send).
pub const ENQ: u8 = 0x05;
/// Positive acknowledgement.
pub const ACK: u8 = 0x06;
/// Line feed.
pub const LF: u8 = 0x0A;
/// Carriage return (record terminator).
pub const CR: u8 = 0x0D;
/// Negative acknowledgement.
pub const NAK: u8 = 0x15;
/// End of transmission block (intermediate frame).
pub const ETB: u8 = 0x17;
