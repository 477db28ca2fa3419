//! The file as written: serde types with `deny_unknown_fields` for every section of
//! CONFIG.md. Every key is optional here and wrapped in [`Spanned`] so validation can
//! fill in defaults, report *all* missing or wrong keys at once, and point at each one.
//! Nothing in this module is public API; [`crate::model`] is.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::model::{
    AckMode, AuthMethod, ClientAuth, Fallback, FlowControl, Format, LogLevel, OrderMode, Parity,
    Protocol, UplinkKind, WhenFull,
};

pub type S<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent: S<RawAgent>,
    pub buffer: S<RawBuffer>,
    pub uplink: S<RawUplink>,
    pub remote: S<RawRemote>,
    #[serde(default)]
    pub channel: Vec<Spanned<RawChannel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: S<String>,
    pub state_dir: S<String>,
    pub log: S<LogLevel>,
    pub status_socket: S<String>,
    pub metrics: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub max_bytes: S<SizeValue>,
    pub min_free: S<SizeValue>,
    pub when_full: S<WhenFull>,
    pub keep_delivered: S<DurationText>,
    pub orders_keep: S<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    pub kind: S<UplinkKind>,
    pub url: S<String>,
    pub format: S<Format>,
    pub batch_max: S<i64>,
    pub timeout: S<DurationText>,
    pub ca_file: S<String>,
    pub client_cert: S<String>,
    pub client_key: S<String>,
    pub allow_plain_http: S<bool>,
    pub auth: S<RawAuth>,
    pub mqtt: S<RawMqtt>,
    pub query_url: S<String>,
    pub orders_url: S<String>,
    pub orders_poll: S<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub method: S<AuthMethod>,
    pub token_url: S<String>,
    pub client_id: S<String>,
    pub client_secret_file: S<String>,
    pub client_secret: S<String>,
    pub scope: S<String>,
    pub client_auth: S<ClientAuth>,
    pub strict_scope: S<bool>,
    pub fallback: S<Fallback>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: S<String>,
    pub allow_plain_mqtt: S<bool>,
    pub client_id: S<String>,
    pub topic_prefix: S<String>,
    pub orders: S<bool>,
    pub qos: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub enabled: S<bool>,
    pub allow: S<Vec<Spanned<String>>>,
    pub status_every: S<DurationText>,
    pub commands_url: S<String>,
    pub rollback_after: S<DurationText>,
    pub signing_key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub name: S<String>,
    pub protocol: S<Protocol>,
    pub serial: S<String>,
    pub listen: S<String>,
    pub connect: S<String>,
    pub baud: S<i64>,
    pub data_bits: S<i64>,
    pub parity: S<Parity>,
    pub stop_bits: S<i64>,
    pub flow_control: S<FlowControl>,
    pub encoding: S<String>,
    pub orders: S<OrderMode>,
    pub query_timeout: S<DurationText>,
    // format = "fhir" (see fhir.rs)
    pub code_map: S<String>,
    pub timezone: S<String>,
    pub patient_id_system: S<String>,
    pub fhir_skip_qc: S<bool>,
    pub fhir_qc_markers: S<Vec<String>>,
    pub code_component: S<i64>,
    pub astm: S<RawAstm>,
    pub hl7: S<RawHl7>,
    pub raw: S<RawRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAstm {
    pub receive_timeout: S<DurationText>,
    pub ack_timeout: S<DurationText>,
    pub max_retries: S<i64>,
    pub max_frame: S<SizeValue>,
    pub max_message: S<SizeValue>,
    pub query_id_component: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHl7 {
    pub ack: S<AckMode>,
    pub max_message: S<SizeValue>,
    pub max_connections: S<i64>,
    pub idle_timeout: S<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRaw {
    pub start: S<Bytes>,
    pub end: S<Bytes>,
    pub reply: S<Bytes>,
    pub max_message: S<SizeValue>,
}

/// A duration as written (`"30s"`); its own type so a wrong type says what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"500ms\", \"30s\", \"10m\", \"2h\" or \"7d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A size as written: `"512MiB"` or a plain integer of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeValue {
    Text(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512MiB\", \"1GB\", \"64KiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Bytes as written: an ASCII string or an array of integers (each checked later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bytes {
    Text(String),
    List(Vec<Spanned<i64>>),
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of byte values like [0x02] or an ASCII string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<Spanned<i64>>()? {
                    out.push(b);
                }
                Ok(Bytes::List(out))
            }
        }
        d.deserialize_any(V)
    }
}
