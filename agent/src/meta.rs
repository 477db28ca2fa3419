//! What the store records about each message besides its bytes — its meta, by protocol:
//! header fields, record and segment counts, how the message ended, whether it is a host
//! query, and the encoding label the uplink decodes the bytes with. Never patient data.
//! Channels compute it as messages are stored; the uplink (JSON envelopes), `labagent
//! queue show` and `labagent map` read it.

use labagent_hal::astm::record::summary;
use labagent_hal::hl7::charset;
use labagent_hal::hl7::msh::{segment_id, MshView};
use labagent_hal::session::{End, MessageEnd};
use serde_json::json;

/// Meta of a stored ASTM message: the H record's sender and record counts.
pub fn astm(text: &[u8], end: &End, enc: &labagent_config::Encoding) -> serde_json::Value {
    let s = summary(text);
    let end = match end {
        End::Complete(e) | End::Incomplete(e) => *e,
        End::Rejected(_) => MessageEnd::Terminator,
    };
    json!({
        "sender": s.sender.map(|b| String::from_utf8_lossy(&b).into_owned()),
        "records": s.records,
        "patients": s.patients,
        "orders": s.orders,
        "results": s.results,
        "queries": s.queries,
        "end": end.as_str(),
        "kind": if s.queries > 0 { "query" } else { "result" },
        "encoding": crate::text::encoding_label(enc, None, text),
    })
}

/// The encoding label stored in a message's meta (what the uplink decodes with): the one
/// rule of [`crate::text::encoding_label`], MSH-18 as the message's declaration.
pub fn hl7_encoding_label(
    enc: &labagent_config::Encoding,
    view: Option<&MshView<'_>>,
    bytes: &[u8],
) -> String {
    let declared = view.and_then(|v| charset::encoding_label(v.charset()));
    crate::text::encoding_label(enc, declared, bytes)
}

/// Meta of a stored HL7 message: header fields and segment counts, no patient data.
pub fn hl7_header(v: &MshView<'_>, label: &str) -> serde_json::Value {
    // Header fields as text, in the message's encoding (looked up once for all of them).
    let enc = crate::text::encoding(label);
    let text = |f: &[u8]| crate::text::decode_with(f, enc);
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
    let mut ty = text(t.code);
    if !t.trigger.is_empty() {
        ty.push('^');
        ty.push_str(&text(t.trigger));
    }
    let kind = if labagent_hal::query::hl7_query(v).is_some() {
        "query"
    } else {
        "message"
    };
    json!({
        "type": ty,
        "control_id": text(v.control_id()),
        "sending_application": text(v.sending_application()),
        "sending_facility": text(v.sending_facility()),
        "version": text(v.version()),
        "processing_id": text(v.processing_id()),
        "charset": text(v.charset()),
        "separators": text(&[d.field]) + &text(&d.encoding_chars().0[..d.encoding_chars().1]),
        "segments": segments,
        "segment_counts": counts,
        "encoding": label,
        "kind": kind,
    })
}

/// Meta of a stored HL7 message (`End::Rejected`: of bytes that are not HL7).
pub fn hl7(bytes: &[u8], end: &End, enc: &labagent_config::Encoding) -> serde_json::Value {
    match (MshView::new_checked(bytes), end) {
        (Ok(v), End::Complete(_)) => {
            let label = hl7_encoding_label(enc, Some(&v), bytes);
            hl7_header(&v, &label)
        }
        (r, _) => {
            let label = hl7_encoding_label(enc, None, bytes);
            let error = match (r, end) {
                (_, End::Rejected(why)) => why.to_string(),
                (Err(e), _) => e.to_string(),
                (Ok(_), _) => "incomplete".to_string(),
            };
            json!({ "error": error, "encoding": label })
        }
    }
}

/// Meta of a stored raw message: line count and encoding (no content).
pub fn raw(bytes: &[u8], enc: &labagent_config::Encoding) -> serde_json::Value {
    let lines = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    json!({ "lines": lines, "encoding": crate::text::encoding_label(enc, None, bytes) })
}
