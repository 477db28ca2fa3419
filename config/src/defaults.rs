//! Every default of CONFIG.md, in one place. Validation fills them in; printing shows the
//! resulting values, so the effective settings and these constants never disagree.

use std::time::Duration;

use crate::model::{
    AckMode, AuthMethod, ClientAuth, DataBits, Fallback, FlowControl, Format, LogLevel, OrderMode,
    Parity, StopBits, WhenFull,
};

const MIB: u64 = 1 << 20;

// [agent]
pub const STATE_DIR: &str = "/var/lib/labagent";
pub const LOG: LogLevel = LogLevel::Info;
pub const STATUS_SOCKET: &str = "/run/labagent/status.sock";

// [buffer]
pub const MAX_BYTES: u64 = 1 << 30;
pub const MIN_FREE: u64 = 256 * MIB;
pub const WHEN_FULL: WhenFull = WhenFull::Refuse;
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 86_400);
pub const ORDERS_KEEP: Duration = Duration::from_secs(7 * 86_400);

// [uplink]
pub const FORMAT: Format = Format::Raw;
pub const BATCH_MAX: u32 = 100;
pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const ALLOW_PLAIN_HTTP: bool = false;
pub const ORDERS_POLL: Duration = Duration::from_secs(10);

// [uplink.auth]
pub const AUTH_METHOD: AuthMethod = AuthMethod::ClientCredentials;
pub const CLIENT_AUTH: ClientAuth = ClientAuth::Basic;
pub const STRICT_SCOPE: bool = false;
pub const FALLBACK: Fallback = Fallback::None;

// [uplink.mqtt]
pub const ALLOW_PLAIN_MQTT: bool = false;
pub const TOPIC_PREFIX: &str = "labagent";
pub const ORDERS: bool = false;
pub const QOS: u8 = 1;

// [remote]
pub const REMOTE_ENABLED: bool = false;
pub const REMOTE_ALLOW: &[&str] = &["status", "ping", "logs"];
pub const REMOTE_STATUS_EVERY: Duration = Duration::from_secs(60);
pub const REMOTE_ROLLBACK_AFTER: Duration = Duration::from_secs(60);

// [[channel]]
pub const BAUD: u32 = 9600;
pub const DATA_BITS: DataBits = DataBits::Eight;
pub const PARITY: Parity = Parity::None;
pub const STOP_BITS: StopBits = StopBits::One;
pub const FLOW_CONTROL: FlowControl = FlowControl::None;
pub const ENCODING: &str = "auto";
pub const CHANNEL_ORDERS: OrderMode = OrderMode::Push;
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

// [channel.astm]
pub const ASTM_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
pub const ASTM_ACK_TIMEOUT: Duration = Duration::from_secs(15);
pub const ASTM_MAX_RETRIES: u32 = 6;
pub const ASTM_MAX_FRAME: u64 = 64 << 10;
pub const ASTM_MAX_MESSAGE: u64 = 4 * MIB;

// [channel.hl7]
pub const HL7_ACK: AckMode = AckMode::Original;
pub const HL7_MAX_MESSAGE: u64 = 4 * MIB;
pub const HL7_MAX_CONNECTIONS: u32 = 16;
pub const HL7_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

// [channel.raw]
pub const RAW_MAX_MESSAGE: u64 = MIB;

// Sanity limits (not defaults, but bounds checked by validation).
/// The highest baud rate accepted; common UARTs top out at 4 Mbit/s.
pub const MAX_BAUD: u32 = 4_000_000;
/// `query_timeout` must stay below this: no instrument waits a minute for its answer, and
/// the agent holds the line for the query until then.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
