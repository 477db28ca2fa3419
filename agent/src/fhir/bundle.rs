//! [`Doc`] → one FHIR R4 transaction Bundle (typed structs, serialized once).
//!
//! Entry order: the Device, the Specimens, then per report its Observations and the
//! DiagnosticReport. Every entry is a conditional create on an identifier in the system
//! `urn:labagent:<agent>`: `<channel>` for the Device (created once per channel),
//! `<message key>/<n>` for the others, n counting entries from 1 in that order. The
//! Bundle is a pure function of the message, so a retry sends the same bytes, and a
//! server that honours `ifNoneExist` creates nothing twice. `fullUrl`s are `urn:uuid:`s
//! derived from the same identifiers.

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::model::{Doc, Obs, Report, Value};
use super::time::Zone;
use super::value::{self, Decimal, Range};
use super::ChannelSettings;

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const DR_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    pub entry: Vec<Entry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub full_url: String,
    pub resource: Resource,
    pub request: Request,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    method: &'static str,
    pub url: &'static str,
    pub if_none_exist: String,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Resource {
    Device(Device),
    Specimen(Specimen),
    Observation(Box<Observation>),
    DiagnosticReport(DiagnosticReport),
}

#[derive(Serialize, Clone)]
pub struct Identifier {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    value: String,
}

#[derive(Serialize, Clone)]
pub struct Coding {
    system: String,
    code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<String>,
}

#[derive(Serialize, Clone, Default)]
pub struct CodeableConcept {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    coding: Vec<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

#[derive(Serialize, Clone, Default)]
pub struct Reference {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier>,
}

/// A decimal written as a JSON number with its precision (`4.20`, not `4.2`).
#[derive(Clone)]
pub struct Num(Box<RawValue>);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Num {
    fn of(d: &Decimal) -> Option<Num> {
        RawValue::from_string(d.0.clone()).ok().map(Num)
    }
}

#[derive(Serialize, Clone)]
pub struct Quantity {
    value: Num,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparator: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

#[derive(Serialize)]
pub struct RefRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    low: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    high: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

#[derive(Serialize)]
pub struct Annotation {
    text: String,
}

#[derive(Serialize)]
pub struct DeviceName {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
pub struct DeviceVersion {
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    resource_type: &'static str,
    identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    device_name: Vec<DeviceName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_number: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    version: Vec<DeviceVersion>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Specimen {
    resource_type: &'static str,
    identifier: Vec<Identifier>,
    accession_identifier: Identifier,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    note: Vec<Annotation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    resource_type: &'static str,
    identifier: Vec<Identifier>,
    pub status: &'static str,
    category: Vec<CodeableConcept>,
    pub code: CodeableConcept,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_date_time: Option<String>,
    issued: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_quantity: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_codeable_concept: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_string: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interpretation: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    note: Vec<Annotation>,
    device: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    specimen: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reference_range: Vec<RefRange>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticReport {
    resource_type: &'static str,
    identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    based_on: Vec<Reference>,
    status: &'static str,
    category: Vec<CodeableConcept>,
    code: CodeableConcept,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_date_time: Option<String>,
    issued: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    specimen: Vec<Reference>,
    result: Vec<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conclusion: Option<String>,
}

/// Everything a Bundle needs besides the parsed message.
pub struct Context<'a> {
    pub agent: &'a str,
    pub channel: &'a str,
    pub key: &'a str,
    /// `issued`: when the agent stored the message (RFC 3339).
    pub issued: String,
    pub settings: &'a ChannelSettings,
}

/// A deterministic `urn:uuid:` for a name (SHA-256, formatted as a version-8 UUID).
pub fn urn_uuid(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `ifNoneExist` value: `identifier=<system>|<value>`, percent-encoding what a query
/// string cannot carry.
fn if_none_exist(system: &str, value: &str) -> String {
    let mut o = String::from("identifier=");
    for c in format!("{system}|{value}").chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '.' | '_' | '~' | ':' | '|' | '/' => {
                o.push(c)
            }
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    o.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    o
}

fn category(system: &str, code: &str, display: &str) -> CodeableConcept {
    CodeableConcept {
        coding: vec![Coding {
            system: system.into(),
            code: code.into(),
            display: Some(display.into()),
        }],
        text: None,
    }
}

fn reference(url: &str) -> Reference {
    Reference {
        reference: Some(url.to_string()),
        ..Reference::default()
    }
}

/// Builds the Bundle. Returns it with the number of entries.
pub fn build(doc: &Doc, cx: &Context<'_>, warn_unmapped: &mut dyn FnMut(&str)) -> Bundle {
    let system = format!("urn:labagent:{}", cx.agent);
    let local_system = format!("urn:labagent:{}:{}", cx.agent, cx.channel);
    let zone = &cx.settings.zone;
    let mut entries = Vec::new();
    let mut n = 0usize;
    let mut next = |kind: &'static str| {
        n += 1;
        let value = format!("{}/{n}", cx.key);
        (
            urn_uuid(&format!("{system}|{value}")),
            Request {
                method: "POST",
                url: kind,
                if_none_exist: if_none_exist(&system, &value),
            },
            Identifier {
                system: Some(system.clone()),
                value,
            },
        )
    };

    // Device: one per channel.
    let device_url = urn_uuid(&format!("{system}|{}", cx.channel));
    let dv = &doc.device;
    entries.push(Entry {
        full_url: device_url.clone(),
        request: Request {
            method: "POST",
            url: "Device",
            if_none_exist: if_none_exist(&system, cx.channel),
        },
        resource: Resource::Device(Device {
            resource_type: "Device",
            identifier: vec![Identifier {
                system: Some(system.clone()),
                value: cx.channel.to_string(),
            }],
            manufacturer: dv.manufacturer.clone(),
            device_name: dv
                .name
                .iter()
                .map(|n| DeviceName {
                    name: n.clone(),
                    kind: "model-name",
                })
                .collect(),
            model_number: dv.name.clone(),
            serial_number: dv.serial.clone(),
            version: dv
                .version
                .iter()
                .map(|v| DeviceVersion { value: v.clone() })
                .collect(),
        }),
    });

    let subject_of = |p: &Option<String>| {
        p.as_ref().map(|p| Reference {
            reference: None,
            kind: Some("Patient"),
            identifier: Some(Identifier {
                system: cx.settings.patient_id_system.clone(),
                value: p.clone(),
            }),
        })
    };

    // Specimens that a report refers to.
    let mut specimen_urls: Vec<Option<String>> = vec![None; doc.specimens.len()];
    for (i, s) in doc.specimens.iter().enumerate() {
        let Some(first) = doc.reports.iter().find(|r| r.specimen == Some(i)) else {
            continue;
        };
        let (url, request, id) = next("Specimen");
        specimen_urls[i] = Some(url.clone());
        entries.push(Entry {
            full_url: url,
            request,
            resource: Resource::Specimen(Specimen {
                resource_type: "Specimen",
                identifier: vec![id],
                accession_identifier: Identifier {
                    system: None,
                    value: s.id.clone(),
                },
                kind: s.kind.as_ref().map(|k| CodeableConcept {
                    coding: Vec::new(),
                    text: Some(k.clone()),
                }),
                subject: subject_of(&first.patient),
                note: s
                    .notes
                    .iter()
                    .map(|t| Annotation { text: t.clone() })
                    .collect(),
            }),
        });
    }

    for rep in &doc.reports {
        let subject = subject_of(&rep.patient);
        let spec_ref = rep
            .specimen
            .and_then(|i| specimen_urls.get(i).cloned().flatten())
            .map(|u| reference(&u));
        let mut results = Vec::new();
        let mut statuses = Vec::new();
        for o in &rep.observations {
            let (url, request, id) = next("Observation");
            let obs = observation(o, rep, doc, cx, &local_system, zone, warn_unmapped);
            let mut obs = obs;
            obs.identifier = vec![id];
            obs.subject = subject.clone();
            obs.device = reference(&device_url);
            obs.specimen = spec_ref.clone();
            statuses.push(obs.status);
            results.push(reference(&url));
            entries.push(Entry {
                full_url: url,
                request,
                resource: Resource::Observation(Box::new(obs)),
            });
        }
        let (url, request, id) = next("DiagnosticReport");
        let status = if statuses.iter().all(|s| *s == "final") {
            "final"
        } else if statuses.contains(&"corrected") {
            "corrected"
        } else {
            "preliminary"
        };
        let code = match &rep.code {
            Some(c) => {
                let mut coding = Vec::new();
                if let Some(m) = cx.settings.code_map.get(c) {
                    coding.push(Coding {
                        system: LOINC.into(),
                        code: m.loinc.clone(),
                        display: m.display.clone(),
                    });
                }
                coding.push(Coding {
                    system: local_system.clone(),
                    code: c.clone(),
                    display: rep.code_text.clone(),
                });
                CodeableConcept {
                    coding,
                    text: Some(rep.code_text.clone().unwrap_or_else(|| c.clone())),
                }
            }
            None => CodeableConcept {
                coding: vec![Coding {
                    system: LOINC.into(),
                    code: "11502-2".into(),
                    display: Some("Laboratory report".into()),
                }],
                text: None,
            },
        };
        let effective = rep
            .collected
            .or_else(|| rep.observations.iter().find_map(|o| o.completed))
            .or(doc.sent)
            .map(|t| t.to_fhir(zone));
        entries.push(Entry {
            full_url: url,
            request,
            resource: Resource::DiagnosticReport(DiagnosticReport {
                resource_type: "DiagnosticReport",
                identifier: vec![id],
                based_on: rep
                    .placer
                    .iter()
                    .map(|p| Reference {
                        reference: None,
                        kind: Some("ServiceRequest"),
                        identifier: Some(Identifier {
                            system: None,
                            value: p.clone(),
                        }),
                    })
                    .collect(),
                status,
                category: vec![category(DR_CATEGORY, "LAB", "Laboratory")],
                code,
                subject: subject.clone(),
                effective_date_time: effective,
                issued: cx.issued.clone(),
                specimen: spec_ref.into_iter().collect(),
                result: results,
                conclusion: (!rep.notes.is_empty()).then(|| rep.notes.join("\n")),
            }),
        });
    }
    Bundle {
        resource_type: "Bundle",
        kind: "transaction",
        entry: entries,
    }
}

/// The unit of a value: the code map's, else the instrument's with its UCUM code when the
/// table knows it.
fn unit_of(
    o: &Obs,
    mapped: Option<&labagent_config::CodeMapEntry>,
) -> (Option<String>, Option<String>) {
    if let Some(u) = mapped.and_then(|m| m.unit.as_ref()) {
        let code = labagent_config::ucum::is_valid(u).then(|| u.clone());
        return (Some(u.clone()), code);
    }
    match &o.unit {
        Some(u) => (Some(u.clone()), value::ucum(u).map(str::to_string)),
        None => (None, None),
    }
}

fn quantity(
    d: &Decimal,
    comparator: Option<&'static str>,
    unit: &(Option<String>, Option<String>),
) -> Option<Quantity> {
    Some(Quantity {
        value: Num::of(d)?,
        comparator,
        unit: unit.0.clone(),
        system: unit.1.as_ref().map(|_| UCUM),
        code: unit.1.clone(),
    })
}

fn observation(
    o: &Obs,
    rep: &Report,
    doc: &Doc,
    cx: &Context<'_>,
    local_system: &str,
    zone: &Zone,
    warn_unmapped: &mut dyn FnMut(&str),
) -> Observation {
    let mapped = cx.settings.code_map.get(&o.code);
    let mut coding = Vec::new();
    if let Some(m) = mapped {
        coding.push(Coding {
            system: LOINC.into(),
            code: m.loinc.clone(),
            display: m.display.clone(),
        });
    } else if let Some((c, d)) = &o.loinc {
        coding.push(Coding {
            system: LOINC.into(),
            code: c.clone(),
            display: d.clone(),
        });
    } else if !o.code.is_empty() {
        warn_unmapped(&o.code);
    }
    if !o.code.is_empty() {
        coding.push(Coding {
            system: local_system.to_string(),
            code: o.code.clone(),
            display: o.code_text.clone(),
        });
    }
    let text = o
        .code_text
        .clone()
        .or_else(|| mapped.and_then(|m| m.display.clone()))
        .or_else(|| (!o.code.is_empty()).then(|| o.code.clone()))
        .or_else(|| Some("unknown test".to_string()));
    let unit = unit_of(o, mapped);
    let (mut vq, mut vs, mut vc) = (None, None, None);
    match &o.value {
        Value::None => {}
        Value::Numeric(t) => {
            match value::comparator_decimal(t).and_then(|(c, d)| quantity(&d, c, &unit)) {
                Some(q) => vq = Some(q),
                None => vs = Some(t.clone()),
            }
        }
        Value::Structured {
            comparator,
            num1,
            sep,
            num2,
        } => {
            let cmp = match comparator.as_str() {
                "" | "=" => Some(None),
                "<" => Some(Some("<")),
                ">" => Some(Some(">")),
                "<=" => Some(Some("<=")),
                ">=" => Some(Some(">=")),
                _ => None,
            };
            let q = match (cmp, sep.is_empty() && num2.is_empty()) {
                (Some(c), true) => value::decimal(num1).and_then(|d| quantity(&d, c, &unit)),
                _ => None,
            };
            match q {
                Some(q) => vq = Some(q),
                None => {
                    let t = [comparator.as_str(), num1, sep, num2].concat();
                    if !t.is_empty() {
                        vs = Some(t);
                    }
                }
            }
        }
        Value::Text(t) => vs = Some(t.clone()),
        Value::Coded { code, text, system } => {
            let system = match system.as_deref() {
                Some("LN") => LOINC.to_string(),
                _ => local_system.to_string(),
            };
            vc = Some(CodeableConcept {
                coding: (!code.is_empty())
                    .then(|| Coding {
                        system,
                        code: code.clone(),
                        display: text.clone(),
                    })
                    .into_iter()
                    .collect(),
                text: text.clone().or_else(|| Some(code.clone())),
            });
        }
    }
    let reference_range = o
        .range
        .as_deref()
        .and_then(value::range)
        .map(|r| match r {
            Range::Bounds { low, high } => RefRange {
                low: low.and_then(|d| quantity(&d, None, &unit)),
                high: high.and_then(|d| quantity(&d, None, &unit)),
                text: None,
            },
            Range::Text(t) => RefRange {
                low: None,
                high: None,
                text: Some(t),
            },
        })
        .into_iter()
        .collect();
    let interpretation = o
        .flags
        .iter()
        .map(|f| match value::interpretation(f) {
            Some((code, display)) => CodeableConcept {
                coding: vec![Coding {
                    system: INTERPRETATION.into(),
                    code: code.into(),
                    display: Some(display.into()),
                }],
                text: None,
            },
            None => CodeableConcept {
                coding: Vec::new(),
                text: Some(f.clone()),
            },
        })
        .collect();
    let effective = o
        .completed
        .or(rep.collected)
        .or(doc.sent)
        .map(|t| t.to_fhir(zone));
    Observation {
        resource_type: "Observation",
        identifier: Vec::new(),
        status: value::status(&o.status),
        category: vec![category(OBS_CATEGORY, "laboratory", "Laboratory")],
        code: CodeableConcept { coding, text },
        subject: None,
        effective_date_time: effective,
        issued: cx.issued.clone(),
        value_quantity: vq,
        value_codeable_concept: vc,
        value_string: vs,
        interpretation,
        note: o
            .notes
            .iter()
            .map(|t| Annotation { text: t.clone() })
            .collect(),
        device: Reference::default(),
        specimen: None,
        reference_range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_deterministic_and_well_formed() {
        let a = urn_uuid("urn:labagent:x|k/1");
        assert_eq!(a, urn_uuid("urn:labagent:x|k/1"));
        assert_ne!(a, urn_uuid("urn:labagent:x|k/2"));
        let u = a.strip_prefix("urn:uuid:").unwrap();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'));
    }

    #[test]
    fn if_none_exist_encodes_query_characters() {
        assert_eq!(
            if_none_exist("urn:labagent:a", "1a2b3c4d-000000000042/3"),
            "identifier=urn:labagent:a|1a2b3c4d-000000000042/3"
        );
        assert_eq!(if_none_exist("s", "a&b =#"), "identifier=s|a%26b%20%3D%23");
    }
}
