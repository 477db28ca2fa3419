//! HL7 v2 over MLLP: the hal's [`Hl7Session`] (framing, the commit before every ACK, the
//! ACK per MSH-15/16 and the channel's `ack`, orders awaiting their ACK) with the channel's
//! settings, and the meta stored with each message.
//!
//! # Text
//!
//! The store keeps the wire bytes; the meta records the encoding the uplink decodes with
//! ([`encoding_label`]): an explicit channel `encoding` wins; `auto` takes MSH-18 when it
//! names a known set (`ASCII` only when the bytes are ASCII), else UTF-8 when the bytes are
//! valid UTF-8, else windows-1252.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use labagent_hal::buf::VecBuf;
use labagent_hal::hl7::ack::AckMode;
use labagent_hal::hl7::charset;
use labagent_hal::hl7::msh::{segment_id, MshView};
use labagent_hal::hl7::session::{Hl7Config, Hl7Session};
use labagent_hal::session::{End, OrderPolicy};
use serde_json::json;

use super::astm::hal_duration;
use super::driver::LinkSession;

impl LinkSession for Hl7Session<VecBuf> {
    fn set_wall_clock(&mut self, unix_secs: i64) {
        Hl7Session::set_wall_clock(self, unix_secs)
    }
}

/// How long the instrument has to acknowledge an order.
pub const ORDER_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A session with the channel's settings; its ACKs' MSH-10 start with a prefix unique to
/// this connection and process start (at most 10 characters, so the id fits the 20 of
/// v2.3's MSH-10).
pub fn session(cfg: &labagent_config::Hl7) -> Hl7Session<VecBuf> {
    static CONN: AtomicU32 = AtomicU32::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = CONN.fetch_add(1, Ordering::Relaxed) % (36 * 36 * 36);
    let prefix = format!("L{:06x}{}-", secs & 0xff_ffff, base36(n));
    Hl7Session::new(
        Hl7Config {
            max_message: usize::try_from(cfg.max_message).unwrap_or(usize::MAX),
            mode: ack_mode(&cfg.ack),
            orders: OrderPolicy::default(),
            ack_timeout: hal_duration(ORDER_ACK_TIMEOUT),
            ..Hl7Config::default()
        },
        prefix.as_bytes(),
    )
}

fn base36(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The channel's `[channel.hl7] ack` as the hal's mode.
pub fn ack_mode(a: &labagent_config::AckMode) -> AckMode {
    match a {
        labagent_config::AckMode::Original => AckMode::Original,
        labagent_config::AckMode::Enhanced => AckMode::Enhanced,
    }
}

/// The encoding label stored in a message's meta (what the uplink decodes with): the one
/// rule of [`crate::text::encoding_label`], MSH-18 as the message's declaration.
pub fn encoding_label(
    enc: &labagent_config::Encoding,
    view: Option<&MshView<'_>>,
    bytes: &[u8],
) -> String {
    let declared = view.and_then(|v| charset::encoding_label(v.charset()));
    crate::text::encoding_label(enc, declared, bytes)
}

/// A header field as text for the meta (header fields are ASCII in practice).
fn text(v: &[u8], label: &str) -> String {
    crate::text::decode(v, label)
}

/// Meta of a stored HL7 message: header fields and segment counts, no patient data.
pub fn meta(v: &MshView<'_>, label: &str) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    let mut segments = 0u64;
    for s in v.segments() {
        segments += 1;
        let id = String::from_utf8_lossy(segment_id(s)).into_owned();
        let n = counts.entry(id).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    let d = v.delimiters();
    let t = v.message_type();
    let mut ty = text(t.code, label);
    if !t.trigger.is_empty() {
        ty.push('^');
        ty.push_str(&text(t.trigger, label));
    }
    let kind = if labagent_hal::query::hl7_query(v).is_some() {
        "query"
    } else {
        "message"
    };
    json!({
        "type": ty,
        "control_id": text(v.control_id(), label),
        "sending_application": text(v.sending_application(), label),
        "sending_facility": text(v.sending_facility(), label),
        "version": text(v.version(), label),
        "processing_id": text(v.processing_id(), label),
        "charset": text(v.charset(), label),
        "separators": text(&[d.field], label) + &text(&d.encoding_chars().0[..d.encoding_chars().1], label),
        "segments": segments,
        "segment_counts": counts,
        "encoding": label,
        "kind": kind,
    })
}

/// Meta of a stored HL7 message (`End::Rejected`: of bytes that are not HL7).
pub fn stored_meta(bytes: &[u8], end: &End, enc: &labagent_config::Encoding) -> serde_json::Value {
    match (MshView::new_checked(bytes), end) {
        (Ok(v), End::Complete(_)) => {
            let label = encoding_label(enc, Some(&v), bytes);
            meta(&v, &label)
        }
        (r, _) => {
            let label = encoding_label(enc, None, bytes);
            let error = match (r, end) {
                (_, End::Rejected(why)) => why.to_string(),
                (Err(e), _) => e.to_string(),
                (Ok(_), _) => "incomplete".to_string(),
            };
            json!({ "error": error, "encoding": label })
        }
    }
}
