//! Results as FHIR at the edge: one stored message → one FHIR R4 transaction Bundle.
//!
//! # Layers
//!
//! * [`astm`] and [`hl7`] parse the stored text (hal's record and MSH views give the
//!   delimiters; escapes resolved) into a protocol-neutral [`model::Doc`]: device,
//!   patient id, specimens, reports (O / OBR) with their results (R / OBX) and comments;
//! * [`value`] reads values as the mapping table says: plain decimals (a decimal comma is
//!   a point) with `<`, `>`, `<=`, `>=` → `valueQuantity`, else `valueString`; reference
//!   ranges; abnormal flags → v3 ObservationInterpretation; the status table; a table of
//!   common lab unit spellings → UCUM codes;
//! * [`time`] turns instrument local times into `dateTime`s with the offset of the
//!   channel's `timezone` (system tzdata);
//! * [`bundle`] builds the Bundle (Device, Specimens, Observations, DiagnosticReports),
//!   each entry a conditional create (`ifNoneExist` on `urn:labagent:<agent>|<key>/<n>`),
//!   internal references `urn:uuid:`;
//! * [`response`] reads the server's answer: a `transaction-response` whose entries are
//!   all 2xx, or the OperationOutcome that says why not.
//!
//! # What is not posted
//!
//! Queries, messages with no results, and QC (E1394 H-12 or O-12 = `Q`, or a channel's
//! `fhir_qc_markers`; HL7 SPM-11 = `Q`, or a marker in MSH-11 / MSH-16) are
//! [`Skip::Policy`]: the uplink marks them delivered-by-policy with the reason in their
//! meta. Text that is neither ASTM nor HL7 is [`Skip::NotMappable`]: kept as rejected.
//!
//! The mapping is a pure function of the message, its key, its channel's settings and
//! its stored time: a retry produces the same bytes.

pub mod astm;
pub mod bundle;
pub mod hl7;
pub mod model;
pub mod response;
pub mod time;
pub mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use labagent_config::{ChannelFhir, CodeMapEntry};

pub use time::{Zone, ZoneError};

/// The QC markers every channel knows (E1394 `Q`, HL7 table 0369 `Q`).
pub(crate) const QC: &[&str] = labagent_config::fhir::QC_MARKERS;

/// Why a message becomes no Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not results (a query, QC, no result records): delivered by policy, reason kept.
    Policy(String),
    /// Not something the mapping can read: kept as rejected with the reason.
    NotMappable(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Policy(r) => write!(f, "not posted as FHIR: {r}"),
            Skip::NotMappable(r) => write!(f, "cannot be mapped to FHIR: {r}"),
        }
    }
}

/// A channel's mapping settings, ready to use (code map indexed, zone loaded).
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    pub code_map: HashMap<String, CodeMapEntry>,
    pub zone: Zone,
    pub patient_id_system: Option<String>,
    pub skip_qc: bool,
    pub qc_markers: Vec<String>,
    pub code_component: Option<u32>,
}

impl ChannelSettings {
    pub fn from_config(c: &ChannelFhir) -> Result<Self, ZoneError> {
        Ok(ChannelSettings {
            code_map: c
                .code_map
                .as_ref()
                .map(|m| m.codes.clone().into_iter().collect())
                .unwrap_or_default(),
            zone: Zone::load(c.timezone.as_deref())?,
            patient_id_system: c.patient_id_system.clone(),
            skip_qc: c.skip_qc,
            qc_markers: c.qc_markers.clone(),
            code_component: c.code_component,
        })
    }
}

/// One stored message as the mapping needs it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The message id: stable across retries and restarts.
    pub key: &'a str,
    pub channel: &'a str,
    /// `astm`, `hl7` or `raw` (raw text is read as HL7 or ASTM when it is one).
    pub protocol: &'a str,
    pub text: &'a str,
    pub received_at: SystemTime,
}

/// A Bundle ready to post.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub json: Vec<u8>,
    /// Entries in the Bundle (the transaction-response must have as many).
    pub entries: usize,
}

/// Maps messages of every channel; warns once per unmapped (channel, code).
pub struct Mapper {
    agent: String,
    channels: HashMap<String, ChannelSettings>,
    fallback: ChannelSettings,
    warned: Mutex<HashSet<(String, String)>>,
}

impl Mapper {
    /// `channels`: `[uplink] fhir` of the config; a channel not in it (removed from the
    /// config while its backlog drains) uses the defaults.
    pub fn new(agent: &str, channels: &BTreeMap<String, ChannelFhir>) -> Result<Mapper, ZoneError> {
        let mut map = HashMap::new();
        for (name, c) in channels {
            map.insert(name.clone(), ChannelSettings::from_config(c)?);
        }
        Ok(Mapper {
            agent: agent.to_string(),
            channels: map,
            fallback: ChannelSettings::from_config(&ChannelFhir::defaults())?,
            warned: Mutex::default(),
        })
    }

    pub fn settings(&self, channel: &str) -> &ChannelSettings {
        self.channels.get(channel).unwrap_or(&self.fallback)
    }

    /// Parses a message into the protocol-neutral model.
    pub fn parse(&self, m: &Input<'_>) -> Result<model::Doc, Skip> {
        let cs = self.settings(m.channel);
        let t = m
            .text
            .trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n', '\u{2}']);
        match m.protocol {
            "hl7" => hl7::parse(m.text, cs),
            "astm" => astm::parse(m.text, cs),
            _ if t.starts_with("MSH") => hl7::parse(t, cs),
            _ if t.starts_with('H')
                && t.as_bytes()
                    .get(1)
                    .is_some_and(|b| !b.is_ascii_alphanumeric()) =>
            {
                astm::parse(t, cs)
            }
            _ => Err(Skip::NotMappable(
                "raw channel text that is neither HL7 (MSH) nor ASTM records (H)".into(),
            )),
        }
    }

    /// The Bundle of a message; an unmapped test code is warned about once per channel.
    pub fn bundle(&self, m: &Input<'_>) -> Result<bundle::Bundle, Skip> {
        let mut unmapped = Vec::new();
        let b = self.bundle_reporting(m, &mut |code| unmapped.push(code.to_string()))?;
        if !unmapped.is_empty() {
            let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            for code in unmapped {
                if w.insert((m.channel.to_string(), code.clone())) {
                    tracing::warn!(channel = m.channel, code = %code, "test code has no LOINC mapping (add it to the channel's code_map); sent with its local code only");
                }
            }
        }
        Ok(b)
    }

    /// The Bundle of a message; `unmapped` hears every test code without a LOINC coding.
    pub fn bundle_reporting(
        &self,
        m: &Input<'_>,
        unmapped: &mut dyn FnMut(&str),
    ) -> Result<bundle::Bundle, Skip> {
        let doc = self.parse(m)?;
        let cx = bundle::Context {
            agent: &self.agent,
            channel: m.channel,
            key: m.key,
            issued: crate::uplink::queue::rfc3339(m.received_at),
            settings: self.settings(m.channel),
        };
        Ok(bundle::build(&doc, &cx, unmapped))
    }

    /// The Bundle of a message as JSON bytes.
    pub fn map(&self, m: &Input<'_>) -> Result<Mapped, Skip> {
        let b = self.bundle(m)?;
        let json = serde_json::to_vec(&b).map_err(|e| Skip::NotMappable(e.to_string()))?;
        Ok(Mapped {
            json,
            entries: b.entry.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn an_unmapped_code_is_warned_about_once_per_channel() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let mapper = Mapper::new("a", &BTreeMap::new()).unwrap();
        let text = "H|\\^&\rP|1||SECRET-PATIENT\rR|1|^^^GLU|5|mmol/L\rR|2|^^^NA|140|mmol/L\rL|1\r";
        tracing::subscriber::with_default(sub, || {
            for (key, channel) in [("k1", "c1"), ("k2", "c1"), ("k3", "c2")] {
                let m = Input {
                    key,
                    channel,
                    protocol: "astm",
                    text,
                    received_at: SystemTime::UNIX_EPOCH,
                };
                mapper.map(&m).unwrap();
            }
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let warned = |ch: &str, code: &str| {
            log.lines()
                .filter(|l| {
                    l.contains("no LOINC mapping")
                        && l.contains(&format!("channel=\"{ch}\""))
                        && l.contains(&format!("code={code}"))
                })
                .count()
        };
        assert_eq!((warned("c1", "GLU"), warned("c1", "NA")), (1, 1), "{log}");
        assert_eq!((warned("c2", "GLU"), warned("c2", "NA")), (1, 1), "{log}");
        assert!(!log.contains("SECRET-PATIENT"), "{log}");
    }
}
