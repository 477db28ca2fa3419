//! Fleet management on the uplink's own MQTT connection (docs/FLEET.md):
//!
//! - **presence**: `{prefix}/{agent}/status`, retained, QoS 1: `{"state":"online", ...the
//!   status JSON...}` on every connect and whenever it changes (the service refreshes it
//!   at most every `[remote] status_every`); the Last Will `{"state":"offline"}` (set in
//!   `Pending::set_remote`) is published by the broker when the connection dies without a
//!   DISCONNECT — after 1.5 × keep-alive (`uplink.timeout`), or at once when the socket
//!   closes (a SIGKILL); a clean stop publishes `offline` itself;
//! - **commands**: `{prefix}/{agent}/commands`, QoS 1, acknowledged only once the command
//!   is recorded in the store (or refused and reported): `CommandPort::intake`. If the
//!   store cannot take it, nothing more is acknowledged on this connection and the session
//!   reconnects (as for orders): the broker sends it again;
//! - **results**: `{prefix}/{agent}/commands/{id}/result`, QoS 1, read from the store
//!   until the broker's PUBACK (`CommandPort::delivered`); after a reconnect everything
//!   unacknowledged goes again (same id: a receiver deduplicates by it).

use std::collections::HashSet;
use std::sync::Arc;

use rumqttc::{Publish, QoS};
use tokio::sync::{watch, Notify};

use super::{Session, Tag};
use crate::mqtt::MqttSettings;
use crate::remote::port::CommandPort;

/// The Last Will's payload, and what a clean stop publishes.
pub const OFFLINE: &str = r#"{"state":"offline"}"#;

pub fn status_topic(s: &MqttSettings) -> String {
    format!("{}/{}/status", s.topic_prefix, s.agent_id)
}

pub fn commands_topic(s: &MqttSettings) -> String {
    format!("{}/{}/commands", s.topic_prefix, s.agent_id)
}

/// What a remote publish carries.
#[derive(Debug, Clone)]
pub(crate) enum RemoteTag {
    Presence,
    Result(String),
}

/// What woke the session for fleet management.
pub(crate) enum RemoteStep {
    Presence,
    Results,
}

/// The session's fleet-management state.
pub struct RemoteMqtt {
    port: Arc<dyn CommandPort>,
    presence: watch::Receiver<Option<Vec<u8>>>,
    ready: Arc<Notify>,
    /// Results published on this connection and not yet acknowledged.
    in_flight: HashSet<String>,
    status_topic: String,
    commands_topic: String,
}

impl RemoteMqtt {
    pub fn new(port: Arc<dyn CommandPort>, s: &MqttSettings) -> RemoteMqtt {
        RemoteMqtt {
            presence: port.presence(),
            ready: port.results_ready(),
            port,
            in_flight: HashSet::new(),
            status_topic: status_topic(s),
            commands_topic: commands_topic(s),
        }
    }
}

/// Waits for a presence change or a new result (forever without fleet management).
pub(crate) async fn next(r: &mut Option<RemoteMqtt>) -> RemoteStep {
    let Some(r) = r.as_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        Ok(()) = r.presence.changed() => RemoteStep::Presence,
        _ = r.ready.notified() => RemoteStep::Results,
        else => std::future::pending().await,
    }
}

impl Session {
    pub(super) fn is_command(&self, p: &Publish) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| p.topic == r.commands_topic)
    }

    /// One command from the broker: recorded (or refused and reported) before its PUBACK.
    pub(super) async fn on_command(&mut self, p: Publish) {
        if self.orders_broken {
            return; // not acked: the broker sends it again after the reconnect
        }
        let Some(r) = self.remote.as_ref() else {
            return;
        };
        let port = r.port.clone();
        let topic = p.topic.clone();
        let payload = p.payload.clone();
        let res = tokio::task::spawn_blocking(move || port.intake(&payload, &topic))
            .await
            .unwrap_or_else(|e| Err(format!("command task failed: {e}")));
        match res {
            Ok(()) => {
                if self.client.try_ack(&p).is_err() {
                    self.orders_broken = true;
                    let _ = self.client.try_disconnect();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a remote command; not acknowledged, reconnecting");
                self.orders_broken = true;
                let _ = self.client.try_disconnect();
            }
        }
    }

    /// On connect: subscribe to commands, say `online`, send results still unacknowledged.
    pub(super) async fn remote_up(&mut self) {
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        r.in_flight.clear();
        if let Err(e) = self
            .client
            .try_subscribe(r.commands_topic.clone(), QoS::AtLeastOnce)
        {
            tracing::warn!(error = %e, "cannot subscribe to remote commands; reconnecting");
            let _ = self.client.try_disconnect();
            return;
        }
        self.publish_presence();
        self.publish_results().await;
    }

    pub(super) async fn on_remote(&mut self, step: RemoteStep) {
        if !self.up || self.stopping {
            return;
        }
        match step {
            RemoteStep::Presence => self.publish_presence(),
            RemoteStep::Results => self.publish_results().await,
        }
    }

    fn publish_presence(&mut self) {
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        let Some(doc) = r.presence.borrow_and_update().clone() else {
            return;
        };
        let topic = r.status_topic.clone();
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, doc)
            .is_ok()
        {
            self.fifo.push_back(Tag::Remote(RemoteTag::Presence));
        }
    }

    async fn publish_results(&mut self) {
        let Some(r) = self.remote.as_ref() else {
            return;
        };
        let port = r.port.clone();
        let results = tokio::task::spawn_blocking(move || port.pending_results())
            .await
            .unwrap_or_default();
        if !self.up || self.stopping {
            return;
        }
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        for (id, doc) in results {
            if r.in_flight.contains(&id) {
                continue;
            }
            let topic = format!("{}/{id}/result", r.commands_topic);
            match self.client.try_publish(topic, QoS::AtLeastOnce, false, doc) {
                Ok(()) => {
                    r.in_flight.insert(id.clone());
                    self.fifo.push_back(Tag::Remote(RemoteTag::Result(id)));
                }
                Err(_) => {
                    // The request channel is full: the next wake-up sends the rest.
                    r.ready.notify_one();
                    break;
                }
            }
        }
    }

    pub(super) fn remote_lost(&mut self, t: RemoteTag) {
        if let (Some(r), RemoteTag::Result(id)) = (self.remote.as_mut(), t) {
            r.in_flight.remove(&id);
        }
    }

    pub(super) fn remote_acked(&mut self, t: RemoteTag) {
        let (Some(r), RemoteTag::Result(id)) = (self.remote.as_mut(), t) else {
            return;
        };
        r.in_flight.remove(&id);
        let port = r.port.clone();
        tokio::task::spawn_blocking(move || port.delivered(&id));
    }

    /// A clean stop: `offline`, retained (the drain that follows waits for its PUBACK).
    pub(super) fn remote_offline(&mut self) {
        let Some(r) = self.remote.as_ref() else {
            return;
        };
        if !self.up {
            return;
        }
        let topic = r.status_topic.clone();
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, OFFLINE.as_bytes().to_vec())
            .is_ok()
        {
            self.fifo.push_back(Tag::Remote(RemoteTag::Presence));
        }
    }
}
