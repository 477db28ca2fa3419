//! The outbox (orders for the instruments) and the uplink's access token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys;
use super::*;

/// The one secret type of the workspace: `Debug`/`Display` print `[redacted]`.
pub use labagent_config::Secret;

/// The uplink's OAuth2 access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub access_token: Secret,
    pub token_type: String,
    /// Unix seconds.
    pub expires_at_unix: u64,
    pub scope: Option<String>,
    /// Unix seconds when it was obtained (0 in stores written before this field existed).
    #[serde(default)]
    pub obtained_at_unix: u64,
}

/// An order from the downlink, to be sent to an instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The order's own id (e.g. from the broker message); seen again → not stored twice.
    pub id: String,
    pub channel: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Pending,
    Delivered,
    Failed,
}

/// Outcome reported by the channel that tried to send an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    Delivered,
    /// Given up: the order leaves the queue and is kept as failed.
    Failed,
    /// Attempt failed, keep it queued.
    Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub channel: String,
    pub text: String,
    pub state: OrderState,
    pub attempts: u32,
    pub detail: Option<String>,
    /// Queue position (store sequence).
    pub seq: u64,
}

impl Store {
    /// Stores an order; `Ok(false)` if an order with this id was stored before. Durable on
    /// return (the downlink acknowledges the broker after this).
    pub fn put_order(&self, o: NewOrder) -> Result<bool> {
        check_channel(&o.channel)?;
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let key = keys::order(&o.id);
        {
            let g = self.engine()?;
            if g.as_ref().ok_or_else(closed)?.get(&key)?.is_some() {
                let gen = self.shared.gc.fresh();
                drop(g);
                drop(w);
                self.durable(gen)?;
                return Ok(false);
            }
        }
        let seq = w.next_seq;
        let order = Order {
            id: o.id.clone(),
            channel: o.channel.clone(),
            text: o.text,
            state: OrderState::Pending,
            attempts: 0,
            detail: None,
            seq,
        };
        let ops = vec![
            (key, Some(serde_json::to_vec(&order).map_err(corrupt)?)),
            (keys::order_queue(&o.channel, seq), Some(o.id.into_bytes())),
        ];
        let gen = self.apply(&mut w, ops, BTreeMap::new(), seq + 1)?;
        drop(w);
        self.durable(gen)?;
        Ok(true)
    }

    /// Up to `limit` pending orders of `channel`, in arrival order.
    pub fn next_orders(&self, channel: &str, limit: usize) -> Result<Vec<Order>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let p = keys::order_queue_prefix(channel);
        let mut out = Vec::new();
        for (_, id) in eng.range(&p, &keys::prefix_end(&p), limit)? {
            let v = eng
                .get(&keys::order(&String::from_utf8_lossy(&id)))?
                .ok_or_else(|| StoreError::Corrupt("order queue entry without order".into()))?;
            out.push(serde_json::from_slice(&v).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Records an attempt's outcome. Not synced on its own.
    pub fn mark_order(
        &self,
        id: &str,
        outcome: OrderOutcome,
        detail: Option<&str>,
    ) -> Result<Order> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let key = keys::order(id);
        let mut order: Order = {
            let g = self.engine()?;
            let v = g
                .as_ref()
                .ok_or_else(closed)?
                .get(&key)?
                .ok_or_else(|| StoreError::NoOrder(id.into()))?;
            serde_json::from_slice(&v).map_err(corrupt)?
        };
        order.attempts += 1;
        order.detail = detail.map(str::to_string);
        let mut ops = Vec::new();
        match outcome {
            OrderOutcome::Retry => {}
            OrderOutcome::Delivered | OrderOutcome::Failed => {
                order.state = if outcome == OrderOutcome::Delivered {
                    OrderState::Delivered
                } else {
                    OrderState::Failed
                };
                ops.push((keys::order_queue(&order.channel, order.seq), None));
            }
        }
        ops.push((key, Some(serde_json::to_vec(&order).map_err(corrupt)?)));
        let next = w.next_seq;
        self.apply(&mut w, ops, BTreeMap::new(), next)?;
        Ok(order)
    }

    /// Saves the access token (durable on return). The store directory is 0700.
    pub fn save_token(&self, t: &Token) -> Result<()> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let ops = vec![(
            keys::TOKEN.to_vec(),
            Some(serde_json::to_vec(t).map_err(corrupt)?),
        )];
        let next = w.next_seq;
        let gen = self.apply(&mut w, ops, BTreeMap::new(), next)?;
        drop(w);
        self.durable(gen)
    }

    pub fn load_token(&self) -> Result<Option<Token>> {
        let g = self.engine()?;
        match g.as_ref().ok_or_else(closed)?.get(keys::TOKEN)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }
}
