//! HL7 v2 over MLLP.
//!
//! - [`mllp`]: the bounded, incremental MLLP framer (`VT msg FS CR`) and its encoder;
//! - [`msh`]: a zero-copy, validate-once view of the MSH segment and the segments;
//! - [`ack`]: which acknowledgement to send ([`ack::decide_ack`]) and building it with the
//!   original message's own separators ([`ack::build_ack`]);
//! - [`escape`]: `\F\ \S\ \T\ \R\ \E\ \P\ \Xhh\ \H\ \N\` with any encoding characters;
//! - [`charset`]: MSH-18 (table 0211) to a WHATWG encoding label for the agent's decoder;
//! - [`session`]: all of it on one link, with orders: [`session::Hl7Session`].
//!
//! The pieces on their own (the session does this for a driver):
//!
//! ```
//! use labagent_hal::buf::Bounded;
//! use labagent_hal::hl7::{ack, mllp, msh::MshView};
//! // A fixed buffer, as on a microcontroller (with `alloc`, `VecBuf` grows instead).
//! let mut framer = mllp::MllpFramer::<heapless::Vec<u8, 1024>>::new(1024);
//! let mut reply = heapless::Vec::<u8, 256>::new();
//! framer.feed(b"\x0bMSH|^~\\&|A|B|C|D|2024||ORU^R01|42|P|2.4\r\x1c\r", |ev| {
//!     if let mllp::MllpEvent::Message(msg) = ev {
//!         let view = MshView::new_checked(msg).ok();
//!         // ... store `msg` durably, then:
//!         let outcome = ack::Outcome::Accepted;
//!         let params = ack::AckParams { timestamp: b"20240101120000", control_id: b"1",
//!                                       text: None, error: None };
//!         if let Some(code) = ack::decide_ack(view.as_ref(), ack::AckMode::Original, outcome) {
//!             let mut out = Bounded::new(&mut reply);
//!             match &view {
//!                 Some(v) => ack::build_ack_into(v, code, &params, &mut out),
//!                 None => ack::build_minimal_ack_into(code, &params, &mut out),
//!             }
//!             out.finish().expect("fits");
//!         }
//!     }
//! });
//! assert!(reply.windows(9).any(|w| w == b"MSA|AA|42"));
//! ```

pub mod ack;
pub mod charset;
pub mod escape;
pub mod mllp;
pub mod msh;
pub mod session;
