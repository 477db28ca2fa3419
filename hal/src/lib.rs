//! # labagent-hal — the hardware abstraction layer: every link rule, no IO
//!
//! This crate is `#![no_std]`, does no IO and never reads a clock: each protocol's whole
//! link is a session that is fed bytes and time and says what to do next (the "sans-IO"
//! style of quinn-proto and smoltcp). The same sessions run in the agent (on tokio, over
//! serial ports and sockets) and on a microcontroller (over a UART, with no heap).
//!
//! ```text
//! session.handle_input(&bytes, now) -> taken // bytes from the wire
//! session.poll_commit()                      // make these pieces durable first ...
//! session.commit_done(ok, now)               // ... then the session may acknowledge
//! session.handle_timeout(now)                // when poll_timeout() has passed
//! session.poll_transmit(&mut buf)            // bytes to write (ACK, NAK, EOT, frames)
//! session.poll_event()                       // what happened (NAKs, order outcomes, ...)
//! session.poll_timeout()                     // the next deadline, if any
//! session.send_order(order, text, now)       // when order_wanted(now)
//! ```
//!
//! Modules:
//! - [`session`]: the [`session::Session`] trait, commits and their pieces, events, orders;
//! - [`astm`]: ASTM E1381 (LIS1-A) frames and the host's [`astm::link::Link`] (receiver,
//!   sender, contention, orders), E1394 (LIS2-A2) records and message boundaries;
//! - [`hl7`]: MLLP framing, the MSH view, ACKs and the [`hl7::session::Hl7Session`];
//! - [`raw`]: delimited byte streams and the [`raw::RawSession`];
//! - [`query`]: which specimens a host query (ASTM Q, HL7 QRY^Q02 / QBP^Q11) asks about;
//! - [`drive`]: a blocking driver that runs any session over `embedded-io` (bare metal);
//! - [`buf`]: bounded buffers: `heapless` with a const capacity, or (feature `alloc`) a
//!   growable one with a run-time limit;
//! - [`time`]: the crate's own [`time::Instant`] and [`time::Duration`] (milliseconds),
//!   supplied by the driver.
//!
//! Every buffer is bounded; at a limit the code returns a typed error naming it
//! ([`buf::CapacityError`], `Reject::MessageTooLong`, ...), never panics and never grows.
//!
//! Features: `alloc` (growable buffers, `Vec`-returning helpers), `std` (implies `alloc`;
//! `embedded-io`'s std adapters), `serde`. `--no-default-features` builds for a
//! microcontroller with no allocator (`thumbv7m-none-eabi`).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod astm;
pub mod buf;
pub mod drive;
pub mod hl7;
pub mod query;
pub mod raw;
pub mod session;
pub mod time;
