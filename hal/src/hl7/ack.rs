//! Deciding and building HL7 acknowledgements.
//!
//! labagent only ever sends *accept-level* answers: original-mode AA/AE/AR, or the
//! enhanced-mode commit ACK CA/CE/CR. Application ACKs (MSH-16) belong to the upstream
//! application and are never invented here.
//!
//! Mode ([`decide_ack`]): the message decides. If MSH-15 or MSH-16 holds a table 0155
//! code the message is in enhanced mode, and MSH-15 says whether a commit ACK is wanted
//! (AL or empty: always; NE: never; ER: only CE/CR; SU: only CA). If both are empty (or
//! hold non-table values, see [`super::msh`]) the channel's [`AckMode`] decides; a
//! channel set to enhanced then answers as if MSH-15 were AL.
//!
//! | outcome | original | enhanced |
//! |---|---|---|
//! | [`Outcome::Accepted`] (stored durably) | AA | CA |
//! | [`Outcome::StoreRefused`] (quota, disk: sender should retry) | AR | CE |
//! | [`Outcome::Unparseable`] (not HL7 / not usable) | AE | CR |
//!
//! The ACK ([`build_ack`]) reuses the original's separators and encoding characters, so
//! the copied MSH-3..6 stay valid byte for byte; caller-supplied text is escaped. The
//! timestamp (MSH-7) and the new control id (MSH-10) come from the caller: the hal never
//! reads a clock.

use super::escape::escape_into;
use super::msh::{AckCondition, Delimiters, MshView};
use crate::buf::Sink;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// The channel's `[channel.hl7] ack` setting, used only when MSH-15/16 are both empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum AckMode {
    /// AA / AE / AR.
    #[default]
    Original,
    /// CA / CE / CR.
    Enhanced,
}

/// What happened to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored durably.
    Accepted,
    /// The store could not take it (quota, disk error): the sender should retry.
    StoreRefused,
    /// Not HL7 or not usable.
    Unparseable,
}

/// MSA-1 acknowledgement code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Original mode: accepted.
    AA,
    /// Original mode: error.
    AE,
    /// Original mode: rejected.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// The two letters.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            AckCode::AA => b"AA",
            AckCode::AE => b"AE",
            AckCode::AR => b"AR",
            AckCode::CA => b"CA",
            AckCode::CE => b"CE",
            AckCode::CR => b"CR",
        }
    }

    /// AA or CA.
    pub fn is_positive(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

fn code_for(mode: AckMode, outcome: Outcome) -> AckCode {
    match (mode, outcome) {
        (AckMode::Original, Outcome::Accepted) => AckCode::AA,
        (AckMode::Original, Outcome::StoreRefused) => AckCode::AR,
        (AckMode::Original, Outcome::Unparseable) => AckCode::AE,
        (AckMode::Enhanced, Outcome::Accepted) => AckCode::CA,
        (AckMode::Enhanced, Outcome::StoreRefused) => AckCode::CE,
        (AckMode::Enhanced, Outcome::Unparseable) => AckCode::CR,
    }
}

/// The acknowledgement to send, or `None` when the sender asked for none (MSH-15 NE, or
/// ER on success, or SU on failure). `msg` is `None` for bytes that are not HL7: they are
/// answered in the channel's mode (AE or CR).
pub fn decide_ack(
    msg: Option<&MshView<'_>>,
    channel: AckMode,
    outcome: Outcome,
) -> Option<AckCode> {
    let Some(v) = msg else {
        return Some(code_for(channel, outcome));
    };
    if !v.is_enhanced_mode() {
        return Some(code_for(channel, outcome));
    }
    let code = code_for(AckMode::Enhanced, outcome);
    let wanted = match v.accept_ack_type() {
        AckCondition::Never => false,
        AckCondition::Error => !code.is_positive(),
        AckCondition::Success => code.is_positive(),
        AckCondition::Always | AckCondition::Empty | AckCondition::Other => true,
    };
    wanted.then_some(code)
}

/// An ERR segment's content: an HL7 table 0357 code and a short text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckError<'a> {
    /// Table 0357, e.g. 207 (application internal error), 100..=207.
    pub code: u16,
    /// Human-readable text (escaped by the builder).
    pub text: &'a [u8],
}

impl AckError<'static> {
    /// 207 "Application internal error": the store refused the message.
    pub const STORE_REFUSED: AckError<'static> = AckError {
        code: 207,
        text: b"Application internal error",
    };
    /// 100 "Segment sequence error": used for unparseable input.
    pub const UNPARSEABLE: AckError<'static> = AckError {
        code: 100,
        text: b"Segment sequence error",
    };
}

/// What the caller supplies for an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckParams<'a> {
    /// MSH-7, e.g. `20240101120000` (the caller's clock).
    pub timestamp: &'a [u8],
    /// MSH-10 of the ACK (new, unique per ACK).
    pub control_id: &'a [u8],
    /// MSA-3 text, if any.
    pub text: Option<&'a [u8]>,
    /// An ERR segment, if any (sensible for non-positive codes only).
    pub error: Option<AckError<'a>>,
}

/// Build the ACK for `orig` (segments CR-terminated, no MLLP framing: wrap with
/// [`super::mllp::encode`]).
#[cfg(feature = "alloc")]
pub fn build_ack(orig: &MshView<'_>, code: AckCode, p: &AckParams<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + orig.control_id().len());
    build_ack_into(orig, code, p, &mut out);
    out
}

/// [`build_ack`] into any [`Sink`].
pub fn build_ack_into(orig: &MshView<'_>, code: AckCode, p: &AckParams<'_>, out: &mut impl Sink) {
    let d = orig.delimiters();
    let trigger = orig.message_type().trigger;
    let mut ty = heapless::Vec::<u8, 24>::new();
    let _ = ty.extend_from_slice(b"ACK");
    if !trigger.is_empty() && trigger.len() <= 8 {
        let _ = ty.push(d.component);
        let _ = ty.extend_from_slice(trigger);
        let _ = ty.push(d.component);
        let _ = ty.extend_from_slice(b"ACK");
    }
    write_reply_msh(orig, &ty, p, out);
    write_msa_err(out, &d, code, orig.control_id(), orig.version(), p);
}

/// The MSH segment (CR-terminated) of a reply to `orig`: its separators, sender and
/// receiver swapped, MSH-9 `msg_type` (components already joined with the message's
/// component separator), MSH-7 and MSH-10 from `p`, MSH-11/12 and MSH-18 copied.
pub fn write_reply_msh(
    orig: &MshView<'_>,
    msg_type: &[u8],
    p: &AckParams<'_>,
    out: &mut impl Sink,
) {
    let d = orig.delimiters();
    let f = d.field;
    out.put_all(b"MSH");
    out.put(f);
    let (enc, n) = d.encoding_chars();
    out.put_all(&enc[..n]);
    for raw in [
        orig.receiving_application(),
        orig.receiving_facility(),
        orig.sending_application(),
        orig.sending_facility(),
    ] {
        out.put(f);
        out.put_all(raw);
    }
    out.put(f);
    escape_into(p.timestamp, &d, out);
    out.put(f); // MSH-8 security
    out.put(f);
    out.put_all(msg_type);
    out.put(f);
    escape_into(p.control_id, &d, out);
    out.put(f);
    out.put_all(orig.processing_id());
    out.put(f);
    out.put_all(orig.version());
    let charset = orig.field(18);
    if !charset.is_empty() {
        // MSH-13..17 empty, MSH-18 copied: the copied MSH-3..6 are in that charset.
        out.put_all(&[f, f, f, f, f, f]);
        out.put_all(charset);
    }
    out.put(b'\r');
}

/// A minimal ACK for bytes that are not HL7 at all: default separators, empty
/// sender/receiver, MSH-9 `ACK`, version 2.5 and an empty MSA-2.
#[cfg(feature = "alloc")]
pub fn build_minimal_ack(code: AckCode, p: &AckParams<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    build_minimal_ack_into(code, p, &mut out);
    out
}

/// [`build_minimal_ack`] into any [`Sink`].
pub fn build_minimal_ack_into(code: AckCode, p: &AckParams<'_>, out: &mut impl Sink) {
    let d = Delimiters::default();
    out.put_all(b"MSH|^~\\&|||||");
    escape_into(p.timestamp, &d, out);
    out.put_all(b"||ACK|");
    escape_into(p.control_id, &d, out);
    out.put_all(b"|P|2.5\r");
    write_msa_err(out, &d, code, b"", b"2.5", p);
}

fn write_msa_err(
    out: &mut impl Sink,
    d: &Delimiters,
    code: AckCode,
    orig_control_id: &[u8],
    version: &[u8],
    p: &AckParams<'_>,
) {
    let f = d.field;
    out.put_all(b"MSA");
    out.put(f);
    out.put_all(code.as_bytes());
    out.put(f);
    out.put_all(orig_control_id);
    if let Some(t) = p.text {
        out.put(f);
        escape_into(t, d, out);
    }
    out.put(b'\r');
    if let Some(e) = p.error {
        let mut num = [0u8; 5];
        let digits = u16_digits(e.code, &mut num);
        out.put_all(b"ERR");
        out.put(f);
        if version_before_2_5(version) {
            // v2.3/2.4: ERR-1 (CM): location^^^code&text&HL70357
            out.put_all(&[d.component, d.component, d.component]);
            out.put_all(digits);
            out.put(d.subcomponent);
            escape_into(e.text, d, out);
            out.put(d.subcomponent);
            out.put_all(b"HL70357");
        } else {
            // v2.5+: ERR-3 (CWE) code^text^HL70357, ERR-4 severity E
            out.put_all(&[f, f]);
            out.put_all(digits);
            out.put(d.component);
            escape_into(e.text, d, out);
            out.put(d.component);
            out.put_all(b"HL70357");
            out.put(f);
            out.put(b'E');
        }
        out.put(b'\r');
    }
}

fn u16_digits(mut v: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `2.1`..`2.4.x` (and unparsable or empty versions, conservatively) use the old ERR-1.
fn version_before_2_5(v: &[u8]) -> bool {
    let v = v
        .split(|b| !b.is_ascii_digit() && *b != b'.')
        .next()
        .unwrap_or(&[]);
    let mut parts = v.split(|b| *b == b'.');
    let major = parts.next().unwrap_or(&[]);
    let minor = parts.next().unwrap_or(&[]);
    if major != b"2" || minor.is_empty() || minor.len() > 2 {
        return true;
    }
    let m = minor.iter().fold(0u8, |a, d| a * 10 + (d - b'0'));
    m < 5
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    const P: AckParams<'static> = AckParams {
        timestamp: b"20240101120000",
        control_id: b"ACK1",
        text: None,
        error: None,
    };

    #[test]
    fn golden_ack() {
        let m = b"MSH|^~\\&|LAB|ELAB|HIS|H1|2024||ORU^R01|C1|P|2.4\rPID|1\r";
        let v = MshView::new_checked(m).unwrap();
        let ack = build_ack(&v, AckCode::AA, &P);
        assert_eq!(
            ack,
            b"MSH|^~\\&|HIS|H1|LAB|ELAB|20240101120000||ACK^R01^ACK|ACK1|P|2.4\rMSA|AA|C1\r"
        );
        let p = AckParams {
            text: Some(b"disk|full"),
            error: Some(AckError::STORE_REFUSED),
            ..P
        };
        let ack = build_ack(&v, AckCode::AR, &p);
        assert_eq!(
            ack,
            &b"MSH|^~\\&|HIS|H1|LAB|ELAB|20240101120000||ACK^R01^ACK|ACK1|P|2.4\rMSA|AR|C1|disk\\F\\full\rERR|^^^207&Application internal error&HL70357\r"[..]
        );
    }

    #[test]
    fn minimal_and_versions() {
        let p = AckParams {
            error: Some(AckError::UNPARSEABLE),
            ..P
        };
        assert_eq!(
            build_minimal_ack(AckCode::AE, &p),
            &b"MSH|^~\\&|||||20240101120000||ACK|ACK1|P|2.5\rMSA|AE|\rERR|||100^Segment sequence error^HL70357|E\r"[..]
        );
        assert!(version_before_2_5(b"2.3.1"));
        assert!(version_before_2_5(b""));
        assert!(!version_before_2_5(b"2.5.1"));
        assert!(!version_before_2_5(b"2.7"));
        assert!(!version_before_2_5(b"2.10"));
        assert_eq!(u16_digits(0, &mut [0; 5]), b"0");
        assert_eq!(u16_digits(65535, &mut [0; 5]), b"65535");
    }
}
