//! HL7 v2 ORU^R01 and OUL^R21–R24 → [`Doc`]. Separators come from the message (hal's
//! [`MshView`]); field values are unescaped with them.

use labagent_hal::hl7::escape::unescape;
use labagent_hal::hl7::msh::{segment_id, Delimiters, MshView};

use super::model::{Doc, Obs, Report, Value};
use super::time::Ts;
use super::{ChannelSettings, Skip};

/// One segment split into fields: `field(n)` is SEG-n (for MSH use [`MshView`]).
struct Seg<'a> {
    fields: Vec<&'a [u8]>,
    d: Delimiters,
}

impl<'a> Seg<'a> {
    fn new(raw: &'a [u8], d: Delimiters) -> Self {
        Seg {
            fields: raw.split(|&b| b == d.field).collect(),
            d,
        }
    }

    fn raw(&self, n: usize) -> &'a [u8] {
        self.fields.get(n).copied().unwrap_or(&[])
    }

    /// Repetitions of SEG-n.
    fn repeats(&self, n: usize) -> impl Iterator<Item = &'a [u8]> + '_ {
        let rep = self.d.repetition;
        self.raw(n).split(move |&b| b == rep)
    }

    /// Components of a repetition.
    fn components(&self, rep: &'a [u8]) -> Vec<&'a [u8]> {
        rep.split(|&b| b == self.d.component).collect()
    }

    fn text(&self, raw: &[u8]) -> String {
        String::from_utf8_lossy(&unescape(raw, &self.d))
            .trim()
            .to_string()
    }

    /// Component `c` (1-based) of the first repetition of SEG-n, unescaped.
    fn comp(&self, n: usize, c: usize) -> Option<String> {
        let first = self.repeats(n).next()?;
        let comps = self.components(first);
        let t = self.text(comps.get(c - 1)?);
        (!t.is_empty()).then_some(t)
    }

    /// The first non-empty component (or subcomponent) of SEG-n.
    fn first(&self, n: usize) -> Option<String> {
        let first = self.repeats(n).next()?;
        first
            .split(|&b| b == self.d.component || b == self.d.subcomponent)
            .map(|c| self.text(c))
            .find(|c| !c.is_empty())
    }

    fn whole(&self, n: usize) -> String {
        self.text(self.raw(n))
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

enum Last {
    None,
    Order,
    Result,
}

/// Parses one HL7 message.
pub fn parse(text: &str, cs: &ChannelSettings) -> Result<Doc, Skip> {
    let v = MshView::new_checked(text.as_bytes())
        .map_err(|e| Skip::NotMappable(format!("not HL7: {e}")))?;
    let d = v.delimiters();
    let t = v.message_type();
    let code = String::from_utf8_lossy(t.code).trim().to_string();
    let trigger = String::from_utf8_lossy(t.trigger).trim().to_string();
    let is_result = matches!(
        (code.as_str(), trigger.as_str()),
        ("ORU", "R01") | ("OUL", "R21" | "R22" | "R23" | "R24")
    );
    if !is_result {
        return Err(Skip::Policy(format!(
            "{code}^{trigger} is not a result message (ORU^R01, OUL^R21/R22)"
        )));
    }
    let marker = |raw: &[u8]| {
        let s = String::from_utf8_lossy(raw);
        let s = s
            .split(char::from(d.component))
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        !s.is_empty() && (super::QC.contains(&s.as_str()) || cs.qc_markers.contains(&s))
    };
    let mut qc = marker(v.processing_id()) || marker(v.field(16));
    let mut doc = Doc::default();
    doc.device.name = opt(String::from_utf8_lossy(&unescape(v.component(3, 1), &d))
        .trim()
        .to_string());
    doc.sent = Ts::parse(&String::from_utf8_lossy(v.component(7, 1)));
    let mut last = Last::None;
    // The last SPM's specimen, and whether the current report's specimen came from OBR
    // (an SPM after the OBR replaces it).
    let mut spm: Option<usize> = None;
    let mut from_obr = false;
    let mut patient: Option<String> = None;
    for raw in v.segments().skip(1) {
        let s = Seg::new(raw, d);
        match segment_id(raw) {
            b"PID" => {
                patient = s
                    .repeats(3)
                    .next()
                    .and_then(|r| s.components(r).first().map(|c| s.text(c)))
                    .filter(|x| !x.is_empty())
                    .or_else(|| s.first(2))
                    .or_else(|| s.first(4));
                last = Last::None;
            }
            b"OBR" => {
                let specimen = match spm {
                    Some(i) => {
                        from_obr = false;
                        Some(i)
                    }
                    None => {
                        from_obr = true;
                        s.first(3)
                            .or_else(|| s.first(2))
                            .map(|id| doc.specimen(id, None))
                    }
                };
                let (code, code_text) = match s.comp(4, 1) {
                    Some(c) => (Some(c), s.comp(4, 2)),
                    None => (s.comp(4, 2), None),
                };
                doc.reports.push(Report {
                    patient: patient.clone(),
                    code,
                    code_text,
                    placer: s.first(2),
                    specimen,
                    collected: Ts::parse(&s.comp(7, 1).unwrap_or_default()),
                    observations: Vec::new(),
                    notes: Vec::new(),
                    qc: false,
                });
                last = Last::Order;
            }
            b"SPM" => {
                let id = s.first(2).or_else(|| s.first(3));
                let kind = s.comp(4, 2).or_else(|| s.comp(4, 1));
                if s.first(11)
                    .is_some_and(|r| super::QC.contains(&r.as_str()) || cs.qc_markers.contains(&r))
                {
                    qc = true;
                }
                if let Some(id) = id {
                    let i = doc.specimen(id, kind);
                    spm = Some(i);
                    if from_obr {
                        if let Some(rep) = doc.reports.last_mut() {
                            rep.specimen = Some(i);
                        }
                        from_obr = false;
                    }
                }
            }
            b"OBX" => {
                let ty = s.comp(2, 1).unwrap_or_default();
                let first = s.repeats(3).next().unwrap_or(&[]);
                let c3 = s.components(first);
                let ct = |i: usize| c3.get(i).map(|c| s.text(c)).filter(|x| !x.is_empty());
                let (mut code, mut text, mut loinc) = (ct(0), ct(1), None);
                if ct(2).as_deref() == Some("LN") {
                    loinc = code.clone().map(|c| (c, text.clone()));
                    // The local coding: the alternate identifier, if any.
                    if ct(3).is_some() {
                        code = ct(3);
                        text = ct(4).or(text);
                    }
                } else if ct(5).as_deref() == Some("LN") {
                    loinc = ct(3).map(|c| (c, ct(4)));
                }
                let value = obx_value(&s, &ty);
                let obs = Obs {
                    code: code.or_else(|| text.clone()).unwrap_or_default(),
                    code_text: text,
                    loinc,
                    value,
                    unit: s.comp(6, 1).or_else(|| s.comp(6, 2)),
                    range: opt(s.whole(7)),
                    flags: s
                        .repeats(8)
                        .map(|r| s.text(r))
                        .filter(|f| !f.is_empty())
                        .collect(),
                    status: s.whole(11),
                    completed: Ts::parse(&s.comp(14, 1).unwrap_or_default()),
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
            b"NTE" => {
                let note: Vec<String> = s
                    .repeats(3)
                    .map(|r| s.text(r))
                    .filter(|x| !x.is_empty())
                    .collect();
                let note = note.join("\n");
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
                    Last::None => {}
                }
            }
            _ => {}
        }
    }
    if doc.result_count() == 0 {
        return Err(Skip::Policy(format!(
            "{code}^{trigger} without results (no OBX)"
        )));
    }
    if cs.skip_qc && qc {
        return Err(Skip::Policy(
            "quality control (QC marker in MSH-11, MSH-16 or SPM-11)".into(),
        ));
    }
    Ok(doc)
}

/// OBX-5 read by its OBX-2 type.
fn obx_value(s: &Seg<'_>, ty: &str) -> Value {
    let first = s.repeats(5).next().unwrap_or(&[]);
    let comps = s.components(first);
    let c = |i: usize| comps.get(i).map(|x| s.text(x)).unwrap_or_default();
    match ty {
        "SN" => Value::Structured {
            comparator: c(0),
            num1: c(1),
            sep: c(2),
            num2: c(3),
        },
        "CE" | "CWE" | "CNE" => {
            let code = c(0);
            if code.is_empty() && c(1).is_empty() {
                return Value::None;
            }
            Value::Coded {
                code,
                text: opt(c(1)),
                system: opt(c(2)),
            }
        }
        "ST" | "TX" | "FT" => {
            let all: Vec<String> = s
                .repeats(5)
                .map(|r| s.text(r))
                .filter(|x| !x.is_empty())
                .collect();
            if all.is_empty() {
                Value::None
            } else {
                Value::Text(all.join("\n"))
            }
        }
        _ => {
            let t = s.whole(5);
            if t.is_empty() {
                Value::None
            } else {
                // NM, and untyped values (cITm): a number when it is one, else text.
                Value::Numeric(t)
            }
        }
    }
}
