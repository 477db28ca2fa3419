//! Host queries: which specimens an instrument asks about.
//!
//! - ASTM (LIS2-A2): Q records; the specimen ids are the repeats of Q-3 (starting range
//!   ID), each read from one component: the configured one (counting from 1), else the
//!   first non-empty one. Fixtures: Vitros `^1068687`, Erba `^1007149`1007152`…` (repeat
//!   delimiter `` ` ``), Roche `^^0000000387^587^…` (the third component), Immucor one id
//!   per Q record.
//! - HL7: QRY^Q02 (QRD-8, "who subject filter"), QBP^Q11 (QPD-3, IHE LAW); the first
//!   component of each repeat.
//!
//! Ids are kept as sent (escape sequences included), at most [`MAX_IDS`] of at most
//! [`MAX_ID`] bytes each; more are dropped and `truncated` says so.

use crate::astm::record::{Delimiters, Record, RecordType};
use crate::astm::CR;
use crate::hl7::msh::MshView;

/// Most specimen ids kept for one query.
pub const MAX_IDS: usize = 16;
/// Longest specimen id kept.
pub const MAX_ID: usize = 64;

/// One specimen id.
pub type SpecimenId = heapless::Vec<u8, MAX_ID>;

/// The specimens a query asks about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Specimens {
    ids: heapless::Vec<SpecimenId, MAX_IDS>,
    /// Some id did not fit (too many, or too long).
    pub truncated: bool,
}

impl Specimens {
    /// Adds `id` unless empty or already there.
    pub fn push(&mut self, id: &[u8]) {
        let id = trim(id);
        if id.is_empty() || self.ids.iter().any(|x| x.as_slice() == id) {
            return;
        }
        let pushed = SpecimenId::from_slice(id)
            .ok()
            .is_some_and(|v| self.ids.push(v).is_ok());
        if !pushed {
            self.truncated = true;
        }
    }

    /// Adds every id of `other`.
    pub fn extend(&mut self, other: &Specimens) {
        for id in other.iter() {
            self.push(id);
        }
        self.truncated |= other.truncated;
    }

    /// The ids, in the order the instrument sent them.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ids.iter().map(|v| v.as_slice())
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No id.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e]
}

/// The id in one repeat: component `component` (1-based), else the first non-empty one.
fn pick<'a>(mut components: impl Iterator<Item = &'a [u8]>, component: Option<u32>) -> &'a [u8] {
    match component {
        Some(n) => components
            .nth((n as usize).saturating_sub(1))
            .unwrap_or(&[]),
        None => components.find(|c| !trim(c).is_empty()).unwrap_or(&[]),
    }
}

/// Specimens of the Q records in `text` (CR-separated records of one message, or just its
/// Q records), read with `delims` (the message's H record).
pub fn astm_specimens(text: &[u8], delims: Delimiters, component: Option<u32>) -> Specimens {
    let mut out = Specimens::default();
    for raw in text.split(|&b| b == CR) {
        let rec = Record::new(raw, delims);
        if rec.record_type() != RecordType::Query {
            continue;
        }
        if let Some(f) = rec.field(3) {
            for rep in f.repeats() {
                out.push(pick(rep.components(), component));
            }
        }
    }
    out
}

/// Which HL7 query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hl7Query {
    /// QRY^Q02: answered with QCK^Q02 (and, from the upstream, DSR^Q03).
    Qry02,
    /// QBP^Q11 (IHE LAW): answered with RSP^K11.
    Qbp11,
}

/// If `v` is a query this crate answers, which one and its specimens.
pub fn hl7_query(v: &MshView<'_>) -> Option<(Hl7Query, Specimens)> {
    let t = v.message_type();
    let (kind, seg, field) = match (t.code, t.trigger) {
        (b"QRY", b"Q02") => (Hl7Query::Qry02, &b"QRD"[..], 8),
        (b"QBP", b"Q11") => (Hl7Query::Qbp11, &b"QPD"[..], 3),
        _ => return None,
    };
    let d = v.delimiters();
    let mut out = Specimens::default();
    for s in v.segments() {
        let mut fields = s.split(|&b| b == d.field);
        if fields.next() != Some(seg) {
            continue;
        }
        if let Some(f) = fields.nth(field - 1) {
            for rep in f.split(|&b| b == d.repetition) {
                out.push(rep.split(|&b| b == d.component).next().unwrap_or(&[]));
            }
        }
    }
    Some((kind, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Specimens) -> heapless::Vec<&[u8], 8> {
        s.iter().collect()
    }

    #[test]
    fn astm_q3_repeats_and_components() {
        let d = Delimiters::default();
        let vitros = b"H|\\^&|||3600796\rQ|1|^1068687||ALL||||||||O\rL|1|N\r";
        assert_eq!(ids(&astm_specimens(vitros, d, None)), [&b"1068687"[..]]);
        let erba = b"Q|1|^1007149`1007152`1007151|||S\r";
        let de = Delimiters::from_header(b"H|`^&").unwrap();
        assert_eq!(
            ids(&astm_specimens(erba, de, None)),
            [&b"1007149"[..], b"1007152", b"1007151"]
        );
        let roche = b"Q|1|^^0000000387^587^0^2^^S1^SC||ALL\r";
        assert_eq!(ids(&astm_specimens(roche, d, None)), [&b"0000000387"[..]]);
        assert_eq!(ids(&astm_specimens(roche, d, Some(4))), [&b"587"[..]]);
        let two = b"Q|1|VALI1||ALL\rQ|2|VALI2||ALL\rQ|3|VALI1||ALL\r";
        assert_eq!(
            ids(&astm_specimens(two, d, None)),
            [&b"VALI1"[..], b"VALI2"]
        );
    }

    #[test]
    fn hl7_qry_and_qbp() {
        let qry = b"MSH|^~\\&|||||20120508104700||QRY^Q02|4|P|2.3.1||||||ASCII|||\rQRD|20120508104700|R|D|1|||RD|0019|OTH|||T|\rQRF||||||RCT|COR|ALL||\r";
        let v = MshView::new_checked(qry).unwrap();
        let (k, s) = hl7_query(&v).unwrap();
        assert_eq!(
            (k, ids(&s).as_slice()),
            (Hl7Query::Qry02, &[&b"0019"[..]][..])
        );
        let qbp = b"MSH|^~\\&|AN|A|LIS|L|2024||QBP^Q11^QBP_Q11|9|P|2.5.1\rQPD|WOS^Work Order Step^IHE_LABTF|Q1|S123^^^LAB~S124\rRCP|I||R\r";
        let v = MshView::new_checked(qbp).unwrap();
        let (k, s) = hl7_query(&v).unwrap();
        assert_eq!(
            (k, ids(&s).as_slice()),
            (Hl7Query::Qbp11, &[&b"S123"[..], b"S124"][..])
        );
        let oru = b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5\r";
        assert!(hl7_query(&MshView::new_checked(oru).unwrap()).is_none());
    }
}
