//! The downlink half of the session: orders from the broker into the outbox.
//!
//! An order is acknowledged (PUBACK) only once the store said it is durable, and orders are
//! handled one at a time, so acknowledgements go out in arrival order as MQTT 3.1.1 wants.
//! If the store refuses one, nothing more is acknowledged on this connection and the
//! session reconnects: the broker sends the unacknowledged orders again (persistent
//! session), and an id seen before is acknowledged without being stored twice. A malformed
//! order is acknowledged (it would come back forever otherwise) and, when it has an id,
//! reported `failed`; so is an order for a channel whose protocol carries none (`raw`).

use rumqttc::Publish;

use super::Session;
use crate::channel::OrderReport;
use crate::store::NewOrder;

impl Session {
    /// One order from the broker: durable in the outbox before its PUBACK, in arrival order.
    pub(super) async fn on_order(&mut self, p: Publish) {
        if self.orders_broken {
            return; // not acked: the broker sends it again after the reconnect
        }
        let Some(sink) = self.orders.clone() else {
            let _ = self.client.try_ack(&p);
            return;
        };
        let base = format!("{}/{}/", self.s.topic_prefix, self.s.agent_id);
        let channel = p
            .topic
            .strip_prefix(&base)
            .and_then(|r| r.strip_suffix("/orders"))
            .filter(|c| self.s.channels.iter().any(|x| x == c))
            .map(str::to_string);
        let Some(channel) = channel else {
            tracing::warn!(
                len = p.payload.len(),
                "order on an unexpected topic; dropped"
            );
            let _ = self.client.try_ack(&p);
            return;
        };
        #[derive(serde::Deserialize)]
        struct Order {
            id: String,
            text: String,
            /// The specimen ids a host query finds it by; absent: read from the text.
            #[serde(default)]
            specimens: Vec<String>,
        }
        let raw = self.s.no_orders.contains(&channel);
        let order = match serde_json::from_slice::<Order>(&p.payload) {
            Ok(o) if !o.id.is_empty() && !o.text.is_empty() && !raw => o,
            other => {
                let id = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string));
                let why = match other {
                    Err(e) => format!(
                        "invalid order: {}",
                        format!("{:?}", e.classify()).to_lowercase()
                    ),
                    Ok(_) if raw => format!(
                        "channel {channel} speaks raw: orders go to ASTM and HL7 instruments only"
                    ),
                    Ok(_) => "invalid order: empty id or text".to_string(),
                };
                tracing::warn!(%channel, len = p.payload.len(), reason = %why, "order refused");
                let _ = self.client.try_ack(&p);
                if let Some(id) = id.filter(|i| !i.is_empty()) {
                    self.report_q.push_back(OrderReport {
                        channel,
                        id,
                        state: "failed".into(),
                        detail: why,
                    });
                    self.flush_reports();
                }
                return;
            }
        };
        let new = NewOrder {
            id: order.id.clone(),
            channel: channel.clone(),
            text: order.text,
            specimens: order.specimens,
        };
        let s2 = sink.clone();
        let r = tokio::task::spawn_blocking(move || s2.put(new))
            .await
            .unwrap_or_else(|e| Err(format!("order task failed: {e}")));
        match r {
            Ok(fresh) => {
                if self.client.try_ack(&p).is_err() {
                    self.orders_broken = true;
                    let _ = self.client.try_disconnect();
                    return;
                }
                if fresh {
                    tracing::info!(%channel, order = %order.id, "order stored");
                    sink.notify(&channel);
                    self.publish_status(|st| st.orders_received += 1);
                } else {
                    tracing::info!(%channel, order = %order.id, "order seen before; not sent again");
                }
            }
            Err(e) => {
                tracing::error!(%channel, order = %order.id, error = %e,
                    "cannot store the order; not acknowledged, reconnecting");
                self.orders_broken = true;
                let _ = self.client.try_disconnect();
            }
        }
    }
}
