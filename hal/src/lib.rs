//! # labagent-hal — everything between the wire and a complete message
//!
//! This crate is `#![no_std]` with `alloc` and does no IO: it never reads a clock, never
//! touches a socket or a file, never blocks. Each protocol is a state machine that is fed
//! bytes and time and says what to do next (the "sans-IO" style of quinn-proto and
//! smoltcp):
//!
//! ```text
//! session.handle_input(&bytes, now);         // bytes from the wire
//! session.handle_timeout(now);               // when poll_timeout() has passed
//! session.poll_transmit(&mut buf)            // bytes to write (ACK, NAK, EOT, frames)
//! session.poll_event()                       // what happened (frame accepted, message complete, ...)
//! session.poll_timeout()                     // the next deadline, if any
//! ```
//!
//! Modules:
//! - [`time`]: the crate's own [`time::Instant`] and [`time::Duration`] (milliseconds),
//!   supplied by the driver;
//! - [`astm`]: ASTM E1381 (LIS1-A) frames, checksum and link sessions, E1394 (LIS2-A2) records;
//! - [`hl7`]: HL7 v2 MLLP framing, the MSH view, ACK building and escapes;
//! - [`raw`]: delimited byte streams for instruments that speak neither.
//!
//! Every buffer is bounded by a limit the caller configures; at a limit the code returns a
//! typed error, never panics and never grows without bound.
//!
//! Durability hook: before a session acknowledges bytes to the instrument it raises an event
//! asking the driver to make them durable, and waits for `commit_ok()` / `commit_failed()`.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod astm;
pub mod hl7;
pub mod raw;
pub mod time;
