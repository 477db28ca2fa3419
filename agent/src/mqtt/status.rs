//! What `labagent status` shows about the MQTT uplink, through a `tokio::sync::watch`.
//! Never a token or a secret: only the token's expiry.

use crate::uplink::{AuthMode, UplinkStatus};

/// A snapshot of the MQTT uplink: the fields every uplink has (state, auth, deliveries —
/// [`UplinkStatus`], reached through `Deref`) and MQTT's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttStatus {
    /// `state` is `Ok` while connected; `BackingOff` between attempts; `Paused` when the
    /// broker refuses us (credentials, TLS); `CredentialsProblem` when no token can be
    /// had. `delivered` counts messages released from the inbox on PUBACK, `rejected`
    /// those parked because no MQTT packet can carry them.
    pub common: UplinkStatus,
    pub connected: bool,
    /// What the broker said at the last CONNACK.
    pub session_present: Option<bool>,
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
            common: UplinkStatus::new(auth_mode),
            connected: false,
            session_present: None,
            in_flight: 0,
            orders_received: 0,
            reports_published: 0,
        }
    }
}

impl std::ops::Deref for MqttStatus {
    type Target = UplinkStatus;
    fn deref(&self) -> &UplinkStatus {
        &self.common
    }
}

impl std::ops::DerefMut for MqttStatus {
    fn deref_mut(&mut self) -> &mut UplinkStatus {
        &mut self.common
    }
}
