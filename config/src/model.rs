//! The validated, immutable configuration. Every value is typed: durations are
//! [`Duration`], sizes are `u64` bytes, choices are enums. Nothing here is optional
//! because of a default: defaults were filled in by validation (see [`crate::defaults`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{Secret, SecretSource};

/// Defines a fieldless enum that deserializes from the listed lowercase strings and can
/// print itself back (`as_str`) with the same spelling.
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// The spelling used in config.toml.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice!(
    /// `agent.log`.
    LogLevel { Error = "error", Warn = "warn", Info = "info", Debug = "debug", Trace = "trace" }
);
choice!(
    /// `buffer.when_full`.
    WhenFull {
        /// The instrument gets NAK/AR/CE and keeps the result.
        Refuse = "refuse",
        /// Delivered messages go first, then undelivered ones (each logged as loss).
        DropOldest = "drop_oldest",
    }
);
choice!(
    /// `uplink.kind`.
    UplinkKind { Http = "http", Mqtt = "mqtt" }
);
choice!(
    /// `uplink.format`.
    Format {
        Raw = "raw",
        Json = "json",
        /// FHIR R4 transaction Bundles to a FHIR base URL.
        Fhir = "fhir",
    }
);
choice!(
    /// `uplink.auth.method`.
    AuthMethod { ClientCredentials = "client_credentials", Basic = "basic", None = "none" }
);
choice!(
    /// `uplink.auth.client_auth`: `client_secret_basic` or `client_secret_post`.
    ClientAuth { Basic = "basic", Post = "post" }
);
choice!(
    /// `uplink.auth.fallback`.
    Fallback { None = "none", Basic = "basic" }
);
choice!(
    /// `channel.protocol`.
    Protocol { Astm = "astm", Hl7 = "hl7", Raw = "raw" }
);
choice!(
    /// `channel.parity`.
    Parity { None = "none", Even = "even", Odd = "odd" }
);
choice!(
    /// `channel.flow_control`.
    FlowControl { None = "none", Software = "software", Hardware = "hardware" }
);
choice!(
    /// `channel.orders`: how orders reach the instrument.
    #[derive(Default)]
    OrderMode {
        /// Sent as they arrive ("batch download"); queries are answered from the upstream.
        #[default]
        Push = "push",
        /// Kept in the order cache and sent only as the answer to a matching host query.
        Query = "query",
    }
);

choice!(
    /// `channel.hl7.ack`: the acknowledgement mode for messages with MSH-15/16 empty.
    AckMode { Original = "original", Enhanced = "enhanced" }
);

/// `channel.data_bits`: 7 or 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataBits {
    Seven,
    Eight,
}

impl DataBits {
    pub fn get(self) -> u8 {
        match self {
            Self::Seven => 7,
            Self::Eight => 8,
        }
    }
}

/// `channel.stop_bits`: 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopBits {
    One,
    Two,
}

impl StopBits {
    pub fn get(self) -> u8 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: Agent,
    pub buffer: Buffer,
    pub uplink: Uplink,
    /// In file order; names and ports are unique.
    pub channels: Vec<Channel>,
    /// `None`: the file has no `[remote]` table (remote management off). A missing table
    /// and a table with every default are different for the pushed-config rule.
    pub remote: Option<crate::remote::Remote>,
}

impl Config {
    /// `[remote]` with defaults filled in (off when the table is missing).
    pub fn remote_or_default(&self) -> crate::remote::Remote {
        self.remote.clone().unwrap_or_default()
    }

    /// The channel with this name.
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// Absolute.
    pub state_dir: PathBuf,
    pub log: LogLevel,
    pub status_socket: PathBuf,
    /// `None`: metrics off.
    pub metrics: Option<SocketAddr>,
}

/// `[buffer]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    pub max_bytes: u64,
    pub min_free: u64,
    pub when_full: WhenFull,
    pub keep_delivered: Duration,
    /// Cached orders not sent by then are reported `expired`; finished ones are forgotten
    /// after it.
    pub orders_keep: Duration,
}

/// `[uplink]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub kind: UplinkKind,
    /// The HTTP endpoint; `Some` exactly when `kind` is http.
    pub url: Option<String>,
    pub format: Format,
    pub batch_max: u32,
    pub timeout: Duration,
    /// Extra trusted roots (PEM); `None`: system roots.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub allow_plain_http: bool,
    pub auth: Auth,
    /// `Some` exactly when `kind` is mqtt.
    pub mqtt: Option<Mqtt>,
    /// Host queries are POSTed here (http only).
    pub query_url: Option<String>,
    /// The HTTPS order feed, long-polled (http only).
    pub orders_url: Option<String>,
    /// How long to wait before the next poll when the feed answered at once with nothing.
    pub orders_poll: Duration,
    /// The `[[channel]]` keys of `format = "fhir"` by channel name: every channel when
    /// `format = "fhir"`, else only channels that set one. Kept with the uplink (which
    /// alone uses them), so a changed code map or zone rebuilds the uplink on SIGHUP.
    pub fhir: std::collections::BTreeMap<String, crate::fhir::ChannelFhir>,
}

/// `[uplink.auth]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub method: AuthMethod,
    /// `Some` when method is client_credentials.
    pub token_url: Option<String>,
    /// `Some` when method is client_credentials or basic.
    pub client_id: Option<String>,
    /// `Some` when method is client_credentials or basic.
    pub secret: Option<Secret>,
    /// Where `secret` came from (shown instead of the secret).
    pub secret_source: Option<SecretSource>,
    pub scope: Option<String>,
    pub client_auth: ClientAuth,
    pub strict_scope: bool,
    pub fallback: Fallback,
}

/// `[uplink.mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    pub url: String,
    pub allow_plain_mqtt: bool,
    /// Defaults to `agent.id`.
    pub client_id: String,
    pub topic_prefix: String,
    pub orders: bool,
    /// Always 1 (the inbox is released on PUBACK).
    pub qos: u8,
}

/// One `[[channel]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub transport: Transport,
    pub encoding: Encoding,
    /// The protocol with its settings (`[channel.astm]`, `[channel.hl7]`, `[channel.raw]`).
    pub settings: ProtocolSettings,
    /// `orders`: push (default) or query (host-query mode). Always push on raw channels.
    pub orders: OrderMode,
    /// `query_timeout`: a host query is answered within this (> 0, < 60 s; default 5 s).
    pub query_timeout: Duration,
}

impl Channel {
    pub fn protocol(&self) -> Protocol {
        match self.settings {
            ProtocolSettings::Astm(_) => Protocol::Astm,
            ProtocolSettings::Hl7(_) => Protocol::Hl7,
            ProtocolSettings::Raw(_) => Protocol::Raw,
        }
    }
}

/// How a channel reaches its instrument: exactly one of `serial`, `listen`, `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Serial {
        path: PathBuf,
        baud: u32,
        data_bits: DataBits,
        parity: Parity,
        stop_bits: StopBits,
        flow_control: FlowControl,
    },
    /// TCP server.
    Listen(SocketAddr),
    /// TCP client, `host:port`.
    Connect(String),
}

/// `channel.encoding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// HL7: MSH-18, else UTF-8 if valid, else windows-1252.
    Auto,
    /// An explicit label that always wins (`utf-8`, `latin1`, `windows-1252`, ...).
    Label(String),
}

impl Encoding {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Auto => "auto",
            Self::Label(l) => l,
        }
    }
}

/// Protocol settings of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolSettings {
    Astm(Astm),
    Hl7(Hl7),
    Raw(Raw),
}

/// `[channel.astm]`; defaults follow CLSI LIS1-A.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Astm {
    pub receive_timeout: Duration,
    pub ack_timeout: Duration,
    /// Attempts per frame in total, then EOT.
    pub max_retries: u32,
    pub max_frame: u64,
    pub max_message: u64,
    /// `query_id_component`: which component of each Q-3 repeat is the specimen id
    /// (counting from 1); `None`: the first non-empty one.
    pub query_id_component: Option<u8>,
}

/// `[channel.hl7]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7 {
    pub ack: AckMode,
    pub max_message: u64,
    /// Only used by listen channels.
    pub max_connections: u32,
    pub idle_timeout: Duration,
}

/// `[channel.raw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub reply: Option<Vec<u8>>,
    pub max_message: u64,
}
