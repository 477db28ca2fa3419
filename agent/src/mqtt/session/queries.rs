//! Host queries over MQTT: a query is published at QoS 1 to
//! `{prefix}/{agent}/{channel}/queries` as `{"id","specimens","text"}`; its answer comes on
//! `{prefix}/{agent}/{channel}/answers/{id}` (subscribed at QoS 0 at every connect, for the
//! ASTM and HL7 channels): the answer text in the instrument's protocol, empty = nothing
//! known. An answer that does not parse is `None` (logged without content); the deadline
//! timer answers `None` to a query nobody answered in time; while the broker is away a
//! query is answered `None` at once.

use rumqttc::{Publish, QoS};

use super::{Session, Tag};
use crate::mqtt::QueryJob;
use crate::uplink::query::{check_answer, open, settle};

impl Session {
    /// The answer filters of the channels that can ask (not `raw`).
    pub(super) fn answer_filters(&self) -> Vec<rumqttc::SubscribeFilter> {
        self.s
            .channels
            .iter()
            .filter(|c| !self.s.no_orders.contains(c))
            .map(|c| rumqttc::SubscribeFilter::new(self.topic(c, "answers/+"), QoS::AtMostOnce))
            .collect()
    }

    /// Publishes a query (or answers `None` at once while the broker is away).
    pub(super) fn on_query(&mut self, j: QueryJob) {
        self.queries_pending.retain(|_, (slot, _)| open(slot));
        if !self.up || self.stopping {
            tracing::debug!(channel = %j.q.channel, "host query while the broker is away: nothing known");
            settle(&j.slot, None);
            return;
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            id: &'a str,
            specimens: &'a [String],
            text: &'a str,
        }
        let payload = serde_json::to_vec(&Body {
            id: &j.q.id,
            specimens: &j.q.specimens,
            text: &j.q.text,
        })
        .unwrap_or_default();
        let topic = self.topic(&j.q.channel, "queries");
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.fifo.push_back(Tag::Query);
                tracing::debug!(channel = %j.q.channel, query = %j.q.id, "host query published");
                self.queries_pending
                    .insert(j.q.id.clone(), (j.slot, j.q.protocol));
            }
            Err(e) => {
                tracing::info!(channel = %j.q.channel, error = %e, "host query not published: nothing known");
                settle(&j.slot, None);
            }
        }
    }

    /// `true` if `p` was an answer (handled here).
    pub(super) fn on_answer(&mut self, p: &Publish) -> bool {
        let base = format!("{}/{}/", self.s.topic_prefix, self.s.agent_id);
        let Some(id) = p
            .topic
            .strip_prefix(&base)
            .and_then(|r| r.split_once("/answers/"))
            .map(|(_, id)| id.to_string())
        else {
            return false;
        };
        let _ = self.client.try_ack(p);
        let Some((slot, protocol)) = self.queries_pending.remove(&id) else {
            tracing::debug!(query = %id, "answer to a query no longer waiting; dropped");
            return true;
        };
        let answer = if p.payload.is_empty() {
            None
        } else {
            match check_answer(protocol, &String::from_utf8_lossy(&p.payload)) {
                Ok(a) => Some(a),
                Err(why) => {
                    tracing::warn!(query = %id, len = p.payload.len(), reason = why,
                        "host query: the answer does not parse; not sent");
                    None
                }
            }
        };
        if !settle(&slot, answer) {
            tracing::debug!(query = %id, "answer after the deadline; dropped");
        }
        true
    }

    /// Every waiting query is answered `None` (stopping).
    pub(super) fn drop_queries(&mut self) {
        for (_, (slot, _)) in self.queries_pending.drain() {
            settle(&slot, None);
        }
        if let Some(d) = &self.deadlines {
            d.stop();
        }
    }
}
