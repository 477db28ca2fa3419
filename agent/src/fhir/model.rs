//! What one stored message says, protocol-neutral: the parsers (`astm.rs`, `hl7.rs`) fill
//! it, `bundle.rs` turns it into FHIR. Values are unescaped text, nothing is interpreted
//! yet (numbers, ranges, flags are read in `value.rs` when the Bundle is built).

use super::time::Ts;

/// One message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Doc {
    pub device: DeviceInfo,
    pub specimens: Vec<SpecimenInfo>,
    pub reports: Vec<Report>,
    /// The message's own time (H-14, MSH-7): the last fallback for effective times.
    pub sent: Option<Ts>,
}

impl Doc {
    /// Results in all reports.
    pub fn result_count(&self) -> usize {
        self.reports.iter().map(|r| r.observations.len()).sum()
    }

    /// The index of the specimen with `id`, added if new.
    pub fn specimen(&mut self, id: String, kind: Option<String>) -> usize {
        if let Some(i) = self.specimens.iter().position(|s| s.id == id) {
            if self.specimens[i].kind.is_none() {
                self.specimens[i].kind = kind;
            }
            return i;
        }
        self.specimens.push(SpecimenInfo {
            id,
            kind,
            notes: Vec::new(),
        });
        self.specimens.len() - 1
    }
}

/// The analyzer, from H-5 or MSH-3.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpecimenInfo {
    /// O-3 / O-4, SPM-2 / OBR-3 / OBR-2.
    pub id: String,
    /// O-16, SPM-4.
    pub kind: Option<String>,
    pub notes: Vec<String>,
}

/// One order (O, OBR) and its results.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// The id of the patient the order belongs to (P-3 / P-4 / P-5, PID-3 / PID-2 /
    /// PID-4 of the P or PID before it); a message may carry several patients.
    pub patient: Option<String>,
    /// The local code of O-5 / OBR-4 (first non-empty component).
    pub code: Option<String>,
    pub code_text: Option<String>,
    /// Placer order number (O-3 is the specimen; the placer is O-3 only in HL7: OBR-2).
    pub placer: Option<String>,
    /// Index into [`Doc::specimens`].
    pub specimen: Option<usize>,
    /// O-7 (else O-8) / OBR-7.
    pub collected: Option<Ts>,
    pub observations: Vec<Obs>,
    /// Comments that follow the order and no result.
    pub notes: Vec<String>,
    /// Results of this order are quality control (O-12 marker).
    pub qc: bool,
}

/// One result (R, OBX).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Obs {
    /// The local test code.
    pub code: String,
    pub code_text: Option<String>,
    /// A LOINC coding the message itself carries (HL7 coding system `LN`).
    pub loinc: Option<(String, Option<String>)>,
    pub value: Value,
    /// R-5, OBX-6 (trimmed; empty → None).
    pub unit: Option<String>,
    /// R-6, OBX-7.
    pub range: Option<String>,
    /// R-7, OBX-8 repeats.
    pub flags: Vec<String>,
    /// R-9, OBX-11.
    pub status: String,
    /// R-13, OBX-14.
    pub completed: Option<Ts>,
    pub notes: Vec<String>,
}

/// A result value as sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Value {
    #[default]
    None,
    /// Text to be read as a number if it is one (R-4 component 1, OBX-5 of NM).
    Numeric(String),
    /// HL7 SN: comparator, number, separator, second number.
    Structured {
        comparator: String,
        num1: String,
        sep: String,
        num2: String,
    },
    /// Plain text (ST, TX, FT, anything not numeric).
    Text(String),
    /// HL7 CE / CWE: code, text, coding system.
    Coded {
        code: String,
        text: Option<String>,
        system: Option<String>,
    },
}
