//! What `labagent status` shows about the MQTT uplink, through a `tokio::sync::watch`.
//! Never a token or a secret: only the token's expiry.

use std::time::SystemTime;

use crate::uplink::{AuthMode, UplinkState};

/// A snapshot of the MQTT uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttStatus {
    /// `Ok` while connected; `BackingOff` between attempts; `Paused` when the broker
    /// refuses us (credentials, TLS); `CredentialsProblem` when no token can be had.
    pub state: UplinkState,
    pub connected: bool,
    /// What the broker said at the last CONNACK.
    pub session_present: Option<bool>,
    pub auth_mode: AuthMode,
    pub token_expires_at: Option<SystemTime>,
    pub last_delivery: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Messages released from the inbox on PUBACK (since start).
    pub delivered: u64,
    /// Messages parked because no MQTT packet can carry them.
    pub rejected: u64,
    /// Publishes awaiting their PUBACK.
    pub in_flight: usize,
    /// Orders made durable in the outbox and acknowledged to the broker.
    pub orders_received: u64,
    /// Order status reports the broker acknowledged.
    pub reports_published: u64,
}

impl MqttStatus {
    pub fn new(auth_mode: AuthMode) -> Self {
        MqttStatus {
            state: UplinkState::Starting,
            connected: false,
            session_present: None,
            auth_mode,
            token_expires_at: None,
            last_delivery: None,
            last_error: None,
            delivered: 0,
            rejected: 0,
            in_flight: 0,
            orders_received: 0,
            reports_published: 0,
        }
    }
}
