//! What every link session has in common: the [`Session`] trait a driver runs, the commit
//! a session asks for before it acknowledges anything, its events, and orders.
//!
//! # Call order (quinn-proto style)
//!
//! Inputs: [`Session::handle_input`] (bytes from the wire; returns how many it took),
//! [`Session::handle_timeout`] (once [`Session::poll_timeout`] has passed),
//! [`Session::handle_line_lost`], [`Session::commit_done`] (the answer to a commit),
//! [`Session::send_order`]. After any input, a driver
//!
//! 1. takes [`Session::poll_commit`]: if `Some`, makes its pieces durable, then calls
//!    `commit_done(ok)`. While a commit is outstanding `handle_input` takes no bytes (it
//!    returns 0): the driver keeps them and offers them again after `commit_done`;
//! 2. drains [`Session::poll_transmit`] and writes what it returns;
//! 3. drains [`Session::poll_event`];
//! 4. sleeps until more input, [`Session::poll_timeout`], or an order for
//!    [`Session::order_wanted`].
//!
//! `handle_input` also stops early when its event queue is nearly full, so a driver must
//! loop: feed, handle commit, drain, feed the rest.
//!
//! # Durability
//!
//! No session queues a positive acknowledgement (ASTM ACK, HL7 AA/CA, a raw reply) for
//! bytes it has not handed out in a [`Commit`] that the driver answered with
//! `commit_done(true)`. A commit answered `false` is answered negatively on the wire (NAK,
//! AR/CE, no reply) so the instrument keeps the data and sends it again.
//!
//! # Pieces
//!
//! A commit is a short sequence of [`Piece`]s, each a borrowed run of message text with
//! what it does to the driver's durable state:
//!
//! | `begins` | `end` | the driver |
//! |---|---|---|
//! | true | `Some(Complete)` | stores a whole message |
//! | true | `None` | opens a partial message with the text |
//! | false | `None` | appends the text to the open partial |
//! | false | `Some(Complete)` | appends the text, then completes the partial |
//! | any | `Some(Incomplete)` | appends the text, keeps the partial as incomplete |
//! | true | `Some(Rejected)` | keeps the bytes as rejected (not a message) |
//!
//! For ASTM the text of a commit is what one frame added (no copy of the message so
//! far); for HL7 and raw one piece is one whole message.

use crate::time::Instant;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    /// At its terminator: ASTM L record, the end of an MLLP block, a raw end sequence.
    Terminator,
    /// ASTM: an H record began the next message before an L record ended this one.
    NextHeader,
    /// ASTM: at EOT, without an L record.
    Eot,
    /// ASTM: at an L record, but the message has no H record (its start was lost).
    Headless,
    /// The receive timer fired.
    Timeout,
    /// The line was lost.
    LineLost,
    /// Raw: the start sequence came again before the end.
    Restarted,
}

impl MessageEnd {
    /// Lowercase name, as stored in a message's meta.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageEnd::Terminator => "terminator",
            MessageEnd::NextHeader => "next_header",
            MessageEnd::Eot => "eot",
            MessageEnd::Headless => "headless",
            MessageEnd::Timeout => "timeout",
            MessageEnd::LineLost => "line_lost",
            MessageEnd::Restarted => "restarted",
        }
    }
}

/// What a piece does to the message it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The message is whole: store it for the uplink.
    Complete(MessageEnd),
    /// It will never complete: keep it, marked incomplete, not forwarded.
    Incomplete(MessageEnd),
    /// The bytes are not a message of this protocol: keep them as rejected.
    Rejected(&'static str),
}

/// One run of message text to make durable; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The text (ASTM records without frame envelopes; an HL7 message; raw bytes).
    pub text: &'a [u8],
    /// A CR follows the text (an ASTM ETX frame whose last record lacked one).
    pub cr: bool,
    /// The text opens a new message.
    pub begins: bool,
    /// The text closes the message.
    pub end: Option<End>,
}

impl Piece<'_> {
    /// Length of the text including the added CR.
    pub fn len(&self) -> usize {
        self.text.len() + usize::from(self.cr)
    }
    /// True when the piece adds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a session asks the driver to make durable before it acknowledges.
#[derive(Debug, Clone)]
// The frame variant is the common one (one per ASTM frame) and holds the splitter state;
// boxing it would need a heap, which the no-alloc build has not.
#[allow(clippy::large_enum_variant)]
pub enum Commit<'a> {
    /// The pieces of one ASTM frame.
    Frame(crate::astm::receiver::Pieces<'a>),
    /// One piece (an HL7 message, a raw message, an ASTM end without text).
    One(Option<Piece<'a>>),
}

impl<'a> Iterator for Commit<'a> {
    type Item = Piece<'a>;
    fn next(&mut self) -> Option<Piece<'a>> {
        match self {
            Commit::Frame(p) => p.next(),
            Commit::One(p) => p.take(),
        }
    }
}

/// The driver's handle for an order it gave the session, and how many attempts the order
/// had before (from the driver's durable outbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRef {
    /// Chosen by the driver; echoed in [`Event::Order`].
    pub handle: u32,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Why an order attempt did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFailure {
    /// ASTM: the instrument never accepted our ENQ.
    NotEstablished,
    /// ASTM: a frame was refused `max_retries` times.
    FrameRetries,
    /// ASTM: no reply to a frame within the reply timer.
    NoReply,
    /// ASTM: the instrument interrupted the transfer (EOT).
    Interrupted,
    /// The line was lost during the attempt.
    LineLost,
    /// HL7: no ACK within the order's ACK timeout.
    NoAck,
    /// HL7: the instrument answered AR or CE (it may take it later).
    Refused([u8; 2]),
    /// HL7: the instrument answered AE or CR (it will not take it).
    Rejected([u8; 2]),
    /// The order is not a message of this protocol (HL7 without an MSH, ...).
    Invalid,
    /// The order is empty or over the order buffer.
    BadSize,
    /// This protocol carries no orders.
    Unsupported,
}

impl core::fmt::Display for OrderFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fn code(c: &[u8; 2]) -> &str {
            core::str::from_utf8(c).unwrap_or("??")
        }
        match self {
            OrderFailure::NotEstablished => f.write_str("the instrument did not accept our ENQ"),
            OrderFailure::FrameRetries => f.write_str("a frame was refused on every attempt"),
            OrderFailure::NoReply => f.write_str("no reply to a frame"),
            OrderFailure::Interrupted => f.write_str("the instrument interrupted the transfer"),
            OrderFailure::LineLost => f.write_str("line lost"),
            OrderFailure::NoAck => f.write_str("no ACK from the instrument"),
            OrderFailure::Refused(c) | OrderFailure::Rejected(c) => {
                write!(f, "instrument answered {}", code(c))
            }
            OrderFailure::Invalid => f.write_str("the order is not a message of this protocol"),
            OrderFailure::BadSize => f.write_str("the order is empty or too large"),
            OrderFailure::Unsupported => f.write_str("this channel's protocol carries no orders"),
        }
    }
}

/// What became of an order attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    /// The instrument took it.
    Delivered,
    /// This attempt failed; the session will want it again after its retry wait.
    Retry(OrderFailure),
    /// Given up: the last allowed attempt failed, or the instrument rejected it.
    Failed(OrderFailure),
    /// Not an attempt: the instrument took the line first (ASTM contention), or the
    /// session is stopping. Offer the order again later.
    Deferred,
}

/// How a session treats orders: attempts and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPolicy {
    /// Attempts per order in total (each a whole transfer), then it is failed.
    pub max_attempts: u32,
    /// Wait after a failed attempt before the next order is taken.
    pub retry_wait: crate::time::Duration,
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            max_attempts: 5,
            retry_wait: crate::time::Duration::from_secs(30),
        }
    }
}

impl OrderPolicy {
    /// The outcome of a failed attempt of `order`: retry, or failed after the last one.
    pub fn after_failure(&self, order: OrderRef, why: OrderFailure) -> OrderOutcome {
        if order.attempts.saturating_add(1) >= self.max_attempts.max(1) {
            OrderOutcome::Failed(why)
        } else {
            OrderOutcome::Retry(why)
        }
    }
}

/// Why an ASTM frame was answered NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Bad frame (checksum, control character, too long, trailer, FN).
    Frame(crate::astm::frame::FrameError),
    /// FN neither the last accepted one nor the next.
    Sequence {
        /// Last accepted FN.
        last: u8,
        /// FN received.
        got: u8,
    },
    /// The message would exceed `max_message`.
    MessageTooLong,
    /// The driver could not commit.
    CommitFailed,
}

/// Something the driver should know (for counters, logs, order reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ASTM: an ENQ was accepted; a transmission starts.
    TransmissionStarted,
    /// ASTM: EOT received (or sent on interrupt): back to neutral.
    TransmissionEnded,
    /// ASTM: the receive timer fired: back to neutral.
    TimedOut,
    /// ASTM: an ENQ answered NAK because the session is stopping.
    RefusedBusy,
    /// ASTM: a frame was answered NAK.
    FrameRejected(Reject),
    /// ASTM: a byte-identical retransmission was acknowledged and dropped.
    DuplicateFrame,
    /// A commit was answered positively on the wire; it completed `messages` messages.
    Accepted {
        /// Messages the commit completed.
        messages: u16,
    },
    /// A commit failed and was answered negatively (NAK, AR/CE, no raw reply).
    Refused,
    /// HL7/raw: a message over `max_message` was dropped unstored (and answered AE/CR).
    TooLarge {
        /// Its whole length.
        len: usize,
    },
    /// HL7: an MLLP block was restarted by a VT; its bytes were dropped unacknowledged.
    Interrupted {
        /// Bytes dropped.
        discarded: usize,
    },
    /// The line ended inside a message that was never acknowledged (HL7/raw): dropped.
    Unfinished {
        /// Bytes dropped.
        discarded: usize,
    },
    /// ASTM: the instrument sent ENQ while we waited for the reply to ours; it goes first.
    Contention,
    /// The fate of an order attempt.
    Order(OrderRef, OrderOutcome),
    /// A host query arrived ([`Session::query`]): answer it with
    /// [`Session::answer_query`] before the session's deadline.
    Query,
    /// The answer to a host query went out (`delivered`: the instrument took it).
    QueryAnswered {
        /// The instrument acknowledged the whole answer.
        delivered: bool,
    },
}

/// A link session: every rule of one protocol's link, no IO. See the module doc.
pub trait Session {
    /// Bytes from the wire; returns how many were taken (fewer than offered while a commit
    /// is outstanding, or when a commit or many events were produced: offer the rest again).
    fn handle_input(&mut self, input: &[u8], now: Instant) -> usize;
    /// The commit to make durable, if one is outstanding.
    fn poll_commit(&self) -> Option<Commit<'_>>;
    /// The answer to the outstanding commit.
    fn commit_done(&mut self, ok: bool, now: Instant);
    /// Call once `poll_timeout()` has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The line is gone (EOF, read error, unplugged).
    fn handle_line_lost(&mut self, now: Instant);
    /// Bytes to write; how many were put into `buf` (`buf` must hold
    /// [`max_transmit`](Self::max_transmit) bytes).
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Event>;
    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The size of buffer `poll_transmit` needs.
    fn max_transmit(&self) -> usize;
    /// The agent is stopping (`true`): refuse new transmissions politely.
    fn set_stopping(&mut self, stopping: bool);
    /// Nothing in progress: no transmission, no commit, no order in flight.
    fn is_quiet(&self) -> bool;
    /// The driver knows of (`true`) or has no (`false`) order waiting for this line; the
    /// session then includes its order wait in `poll_timeout`.
    fn orders_waiting(&mut self, waiting: bool);
    /// The session would take an order now.
    fn order_wanted(&self, now: Instant) -> bool;
    /// Send an order (text in the protocol's form). `Err` when it can never be sent: report
    /// it failed.
    fn send_order(
        &mut self,
        order: OrderRef,
        text: &[u8],
        now: Instant,
    ) -> Result<(), OrderFailure>;
    /// The host query waiting for an answer, if any: the specimens it asks about.
    fn query(&self) -> Option<&crate::query::Specimens> {
        None
    }
    /// Answers the waiting host query: the answer in the protocol's form, or `None` for
    /// "nothing known" (the session builds that one). `Err` when there is no query, or the
    /// answer could not be used (the session then answers "nothing known").
    fn answer_query(&mut self, answer: Option<&[u8]>, now: Instant) -> Result<(), OrderFailure> {
        let _ = (answer, now);
        Err(OrderFailure::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_policy_fails_the_last_attempt() {
        let p = OrderPolicy::default();
        let o = |attempts| OrderRef {
            handle: 1,
            attempts,
        };
        assert_eq!(
            p.after_failure(o(0), OrderFailure::NoAck),
            OrderOutcome::Retry(OrderFailure::NoAck)
        );
        assert_eq!(
            p.after_failure(o(4), OrderFailure::NoAck),
            OrderOutcome::Failed(OrderFailure::NoAck)
        );
    }
}
