//! E1394 records (through hal's zero-copy record view) → [`Doc`].

use labagent_hal::astm::record::{records, unescape, Delimiters, Field, Record, RecordType};

use super::model::{Doc, Obs, Report, Value};
use super::time::Ts;
use super::{ChannelSettings, Skip};

/// The record a C record follows.
enum Last {
    None,
    Order,
    Result,
}

fn text(raw: &[u8], d: Delimiters) -> String {
    let mut out = Vec::with_capacity(raw.len());
    unescape(raw, d, &mut out);
    String::from_utf8_lossy(&out).trim().to_string()
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The first non-empty component of the first repeat of a field, unescaped.
fn first_component(f: Option<Field<'_>>, d: Delimiters) -> Option<String> {
    f?.components().map(|c| text(c, d)).find(|c| !c.is_empty())
}

fn component(f: Option<Field<'_>>, n: usize, d: Delimiters) -> Option<String> {
    opt(text(f?.component(n)?, d))
}

fn field_text(r: &Record<'_>, n: usize, d: Delimiters) -> String {
    r.field(n).map(|f| text(f.raw(), d)).unwrap_or_default()
}

/// Whether a field's value is one of the QC markers.
fn is_marker(r: &Record<'_>, n: usize, d: Delimiters, markers: &[String]) -> bool {
    let v = field_text(r, n, d);
    let v = v.split(char::from(d.component)).next().unwrap_or("").trim();
    !v.is_empty() && (super::QC.contains(&v) || markers.iter().any(|m| m == v))
}

/// Parses one ASTM message (H … L).
pub fn parse(text_in: &str, cs: &ChannelSettings) -> Result<Doc, Skip> {
    let mut doc = Doc::default();
    let mut last = Last::None;
    let mut queries = 0usize;
    let mut header_qc = false;
    let mut seen_header = false;
    let mut patient: Option<String> = None;
    for r in records(text_in.as_bytes()) {
        // Delimiters of this record's message (from its H).
        let d = r.delimiters();
        match r.record_type() {
            RecordType::Header => {
                seen_header = true;
                let sender = r.field(5);
                doc.device.name = component(sender, 1, d);
                doc.device.version = component(sender, 2, d);
                doc.device.serial = component(sender, 3, d);
                doc.sent = Ts::parse(&field_text(&r, 14, d));
                header_qc = is_marker(&r, 12, d, &cs.qc_markers);
                last = Last::None;
            }
            RecordType::Patient => {
                patient = [3, 4, 5]
                    .into_iter()
                    .find_map(|n| first_component(r.field(n), d));
                last = Last::None;
            }
            RecordType::Order => {
                let sid = first_component(r.field(3), d).or_else(|| first_component(r.field(4), d));
                let kind = first_component(r.field(16), d);
                let specimen = sid.map(|s| doc.specimen(s, kind));
                let test = r.field(5);
                doc.reports.push(Report {
                    patient: patient.clone(),
                    code: first_component(test, d),
                    code_text: None,
                    placer: None,
                    specimen,
                    // O-7 as the table says; O-8 (collection time) when O-7 is empty, as
                    // instruments leave the requested time empty (cobas e411).
                    collected: Ts::parse(&field_text(&r, 7, d))
                        .or_else(|| Ts::parse(&field_text(&r, 8, d))),
                    observations: Vec::new(),
                    notes: Vec::new(),
                    qc: is_marker(&r, 12, d, &cs.qc_markers),
                });
                last = Last::Order;
            }
            RecordType::Result => {
                let test = r.field(3);
                let code = match cs.code_component {
                    Some(n) => component(test, n as usize, d),
                    None => first_component(test, d),
                };
                let value = r
                    .field(4)
                    .and_then(|f| f.component(1))
                    .map(|c| text(c, d))
                    .filter(|v| !v.is_empty())
                    .map_or(Value::None, Value::Numeric);
                let flags = r
                    .field(7)
                    .map(|f| {
                        f.repeats()
                            .map(|rep| text(rep.raw(), d))
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                let obs = Obs {
                    code: code.unwrap_or_default(),
                    code_text: None,
                    loinc: None,
                    value,
                    unit: opt(field_text(&r, 5, d)),
                    range: opt(field_text(&r, 6, d)),
                    flags,
                    status: field_text(&r, 9, d),
                    completed: Ts::parse(&field_text(&r, 13, d)),
                    notes: Vec::new(),
                };
                if doc.reports.is_empty() {
                    doc.reports.push(Report {
                        patient: patient.clone(),
                        ..Report::default()
                    });
                }
                if let Some(rep) = doc.reports.last_mut() {
                    rep.observations.push(obs);
                }
                last = Last::Result;
            }
            RecordType::Comment => {
                let note = r
                    .field(4)
                    .map(|f| {
                        f.components()
                            .map(|c| text(c, d))
                            .filter(|c| !c.is_empty())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                if note.is_empty() {
                    continue;
                }
                match last {
                    Last::Result => {
                        if let Some(o) = doc
                            .reports
                            .last_mut()
                            .and_then(|r| r.observations.last_mut())
                        {
                            o.notes.push(note);
                        }
                    }
                    Last::Order => {
                        if let Some(rep) = doc.reports.last_mut() {
                            match rep.specimen {
                                Some(i) => doc.specimens[i].notes.push(note),
                                None => rep.notes.push(note),
                            }
                        }
                    }
                    // Comments on the header or patient have no FHIR resource here.
                    Last::None => {}
                }
            }
            RecordType::Query => queries += 1,
            _ => {}
        }
    }
    if !seen_header {
        return Err(Skip::NotMappable("no ASTM H record".into()));
    }
    if doc.result_count() == 0 {
        return Err(if queries > 0 {
            Skip::Policy("host query (Q records), no results".into())
        } else {
            Skip::Policy("no results (no R records)".into())
        });
    }
    if cs.skip_qc {
        if header_qc {
            return Err(Skip::Policy("quality control (H-12 processing id)".into()));
        }
        doc.reports.retain(|r| !r.qc);
        if doc.result_count() == 0 {
            return Err(Skip::Policy("quality control (O-12 action code)".into()));
        }
    }
    Ok(doc)
}
