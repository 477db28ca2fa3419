//! What the store records about each message besides its bytes — its meta, by protocol:
//! header fields, record and segment counts, how the message ended, whether it is a host
//! query, and the encoding label the uplink decodes the bytes with. Never patient data.
//! Channels compute it as messages are stored; the uplink (JSON envelopes), `labagent
//! queue show` and `labagent map` read it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use labagent_hal::astm::record::summary;
use labagent_hal::hl7::charset;
use labagent_hal::hl7::msh::{segment_id, MshView};
use labagent_hal::session::{End, MessageEnd};
use serde::Serialize;

use crate::store::Meta;

// The meta objects are structs serialized once into the stored text, never a
// `serde_json::Value` (a map built, serialized and dropped per message). Fields are in
// alphabetical order: the order a `Value` object writes them in, so meta stored before and
// after reads the same.

#[derive(Serialize)]
struct AstmMeta<'a> {
    encoding: String,
    end: &'a str,
    kind: &'a str,
    orders: u32,
    patients: u32,
    queries: u32,
    records: u32,
    results: u32,
    sender: Option<String>,
}

/// Meta of a stored ASTM message: the H record's sender and record counts.
pub fn astm(text: &[u8], end: &End, enc: &labagent_config::Encoding) -> Meta {
    let s = summary(text);
    let end = match end {
        End::Complete(e) | End::Incomplete(e) => *e,
        End::Rejected(_) => MessageEnd::Terminator,
    };
    Meta::of(&AstmMeta {
        sender: s.sender.map(|b| String::from_utf8_lossy(&b).into_owned()),
        records: s.records,
        patients: s.patients,
        orders: s.orders,
        results: s.results,
        queries: s.queries,
        end: end.as_str(),
        kind: if s.queries > 0 { "query" } else { "result" },
        encoding: crate::text::encoding_label(enc, None, text),
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

#[derive(Serialize)]
struct Hl7Meta<'a> {
    charset: String,
    control_id: String,
    encoding: &'a str,
    kind: &'a str,
    processing_id: String,
    segment_counts: BTreeMap<Cow<'a, str>, u64>,
    segments: u64,
    sending_application: String,
    sending_facility: String,
    separators: String,
    #[serde(rename = "type")]
    ty: String,
    version: String,
}

/// Meta of a stored HL7 message: header fields and segment counts, no patient data.
pub fn hl7_header(v: &MshView<'_>, label: &str) -> Meta {
    // Header fields as text, in the message's encoding (looked up once for all of them).
    let enc = crate::text::encoding(label);
    let text = |f: &[u8]| crate::text::decode_with(f, enc);
    let mut counts = BTreeMap::new();
    let mut segments = 0u64;
    for s in v.segments() {
        segments += 1;
        *counts
            .entry(String::from_utf8_lossy(segment_id(s)))
            .or_insert(0) += 1;
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
    Meta::of(&Hl7Meta {
        ty,
        control_id: text(v.control_id()),
        sending_application: text(v.sending_application()),
        sending_facility: text(v.sending_facility()),
        version: text(v.version()),
        processing_id: text(v.processing_id()),
        charset: text(v.charset()),
        separators: text(&[d.field]) + &text(&d.encoding_chars().0[..d.encoding_chars().1]),
        segments,
        segment_counts: counts,
        encoding: label,
        kind,
    })
}

/// Meta of a stored HL7 message (`End::Rejected`: of bytes that are not HL7).
pub fn hl7(bytes: &[u8], end: &End, enc: &labagent_config::Encoding) -> Meta {
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
            #[derive(Serialize)]
            struct NotHl7 {
                encoding: String,
                error: String,
            }
            Meta::of(&NotHl7 {
                encoding: label,
                error,
            })
        }
    }
}

/// Meta of a stored raw message: line count and encoding (no content).
pub fn raw(bytes: &[u8], enc: &labagent_config::Encoding) -> Meta {
    let lines = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    #[derive(Serialize)]
    struct RawMeta {
        encoding: String,
        lines: usize,
    }
    Meta::of(&RawMeta {
        encoding: crate::text::encoding_label(enc, None, bytes),
        lines,
    })
}

#[cfg(test)]
mod tests {
    use labagent_hal::session::{End, MessageEnd};

    /// The stored text of each meta: keys in alphabetical order (what a `Value` object
    /// wrote before the meta became structs), compact, no patient data.
    #[test]
    fn meta_text_is_as_stored_before() {
        let enc = labagent_config::Encoding::Auto;
        let done = End::Complete(MessageEnd::Terminator);
        let hl7 = b"MSH|^~\\&|LIS|LAB|HIS|H|20260101||ORU^R01|C1|P|2.5.1\rPID|1||X\rOBR|1\rOBX|1\rOBX|2\r";
        assert_eq!(
            super::hl7(hl7, &done, &enc).as_str(),
            r#"{"charset":"","control_id":"C1","encoding":"utf-8","kind":"message","processing_id":"P","segment_counts":{"MSH":1,"OBR":1,"OBX":2,"PID":1},"segments":5,"sending_application":"LIS","sending_facility":"LAB","separators":"|^~\\&","type":"ORU^R01","version":"2.5.1"}"#
        );
        let bad = End::Rejected("no MSH");
        assert_eq!(
            super::hl7(b"XYZ", &bad, &enc).as_str(),
            r#"{"encoding":"utf-8","error":"no MSH"}"#
        );
        let astm = b"H|\\^&|||Chem^1\rP|1\rO|1\rR|1\rR|2\rL|1|N\r";
        assert_eq!(
            super::astm(astm, &done, &enc).as_str(),
            r#"{"encoding":"utf-8","end":"terminator","kind":"result","orders":1,"patients":1,"queries":0,"records":6,"results":2,"sender":"Chem"}"#
        );
        assert_eq!(
            super::raw(b"a\r\nb\n\nc", &enc).as_str(),
            r#"{"encoding":"utf-8","lines":3}"#
        );
    }
}
