//! The outbox (orders for the instruments) and the uplink's access token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::engine::Op;
use super::keys::{self, Counters};
use super::*;

/// The protocol an order's text looks like, for orders stored without one: HL7 if it
/// starts with MSH (after framing), else ASTM.
fn guess_protocol(text: &str) -> Protocol {
    let t = text.trim_start_matches(|c: char| c.is_ascii_control() || c.is_whitespace());
    if t.starts_with("MSH") {
        Protocol::Hl7
    } else {
        Protocol::Astm
    }
}

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

/// The reserved inbox channel of order reports (`StoreOptions::order_reports`): a `#`
/// is never valid in a configured channel name, so no instrument's messages mix in.
pub const ORDER_REPORTS: &str = "#order-reports";

/// An order from the downlink, to be sent to an instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The order's own id (e.g. from the broker message); seen again → not stored twice.
    pub id: String,
    pub channel: String,
    pub text: String,
    /// The specimen ids a host query finds it by; empty: read from `text`
    /// ([`order_specimens`](super::order_specimens), by the protocol `put_order` is given).
    pub specimens: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Pending,
    Delivered,
    Failed,
    /// Sent as (part of) the answer to a host query from the order cache.
    AnsweredQuery,
    /// Still pending after `orders_keep`: never sent.
    Expired,
}

impl OrderState {
    /// The status reported upstream for a final state (`None`: pending).
    pub fn report_status(self) -> Option<&'static str> {
        match self {
            Self::Pending => None,
            Self::Delivered => Some("delivered"),
            Self::Failed => Some("failed"),
            Self::AnsweredQuery => Some("answered-query"),
            Self::Expired => Some("expired"),
        }
    }
}

/// Outcome reported by the channel that tried to send an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    Delivered,
    /// Given up: the order leaves the queue and is kept as failed.
    Failed,
    /// Attempt failed, keep it queued.
    Retry,
    /// Sent as the answer to a host query (see also [`Store::answer_orders`]).
    AnsweredQuery,
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
    /// The ids the specimen index holds for it while it is pending.
    #[serde(default)]
    pub specimens: Vec<String>,
    /// Unix seconds when it was stored (`None` in stores written before the order cache:
    /// the first sweep stamps it).
    #[serde(default)]
    pub stored_at: Option<u64>,
    /// Unix seconds when it left pending.
    #[serde(default)]
    pub finished_at: Option<u64>,
}

/// An order report as it travels upstream (`#order-reports` inbox messages hold this
/// JSON): `{"id","status","detail","at"}` plus the order's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReportRecord {
    pub id: String,
    /// `delivered`, `failed`, `answered-query` or `expired`.
    pub status: String,
    pub detail: String,
    /// RFC 3339 with milliseconds, UTC.
    pub at: String,
    pub channel: String,
}

/// What [`Store::sweep_orders`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Pending orders older than `orders_keep`, now `expired` (reported).
    pub expired: Vec<Order>,
    /// Finished orders forgotten (their ids may be stored again).
    pub forgotten: usize,
}

fn detail_or(detail: Option<&str>, state: OrderState) -> String {
    match detail {
        Some(d) => d.to_string(),
        None => state.report_status().unwrap_or("pending").to_string(),
    }
}

impl Store {
    /// Stores an order; `Ok(false)` if an order with this id was stored before. Durable on
    /// return (the downlink acknowledges the broker after this). Its specimen ids (given,
    /// or read from the text as `protocol`) go into the channel's specimen index.
    pub fn put_order(&self, o: NewOrder) -> Result<bool> {
        self.put_order_as(o, None, None)
    }

    /// [`put_order`](Self::put_order) reading the specimen ids as `protocol` when the
    /// order brings none (an MQTT or feed order for an HL7 channel, say).
    pub fn put_order_for(&self, o: NewOrder, protocol: Protocol) -> Result<bool> {
        self.put_order_as(o, Some(protocol), None)
    }

    /// Keeps an order that cannot be taken (no such channel, a raw channel, empty text)
    /// as `failed` with `why`, reported like any failed order, in one durable write.
    /// `Ok(false)` if the id was stored before.
    pub fn put_order_failed(&self, o: NewOrder, why: &str) -> Result<bool> {
        self.put_order_as(o, None, Some(why))
    }

    fn put_order_as(
        &self,
        o: NewOrder,
        protocol: Option<Protocol>,
        failed: Option<&str>,
    ) -> Result<bool> {
        check_channel(&o.channel)?;
        if o.id.is_empty() {
            return Err(StoreError::NoOrder(String::new()));
        }
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
        let mut specimens = Vec::new();
        let given = if o.specimens.is_empty() {
            protocol.map_or_else(
                || super::order_specimens(guess_protocol(&o.text), &o.text),
                |p| super::order_specimens(p, &o.text),
            )
        } else {
            o.specimens
        };
        for s in given {
            let s = s.trim();
            if !s.is_empty() && !s.contains('\0') && !specimens.iter().any(|x| x == s) {
                specimens.push(s.to_string());
            }
        }
        let seq = w.next_seq;
        let mut next = seq + 1;
        let now = unix_secs(SystemTime::now());
        let mut order = Order {
            id: o.id.clone(),
            channel: o.channel.clone(),
            text: o.text,
            state: OrderState::Pending,
            attempts: 0,
            detail: None,
            seq,
            specimens,
            stored_at: Some(now),
            finished_at: None,
        };
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        match failed {
            None => {
                ops.push((keys::order_queue(&o.channel, seq), Some(o.id.into_bytes())));
                for s in &order.specimens {
                    ops.push((
                        keys::specimen(&order.channel, s, seq),
                        Some(order.id.clone().into_bytes()),
                    ));
                }
            }
            Some(why) => {
                order.state = OrderState::Failed;
                order.detail = Some(why.to_string());
                order.finished_at = Some(now);
                self.report_ops(&w, &order, why, &mut ops, &mut changed, &mut next)?;
            }
        }
        ops.push((key, Some(serde_json::to_vec(&order).map_err(corrupt)?)));
        let gen = self.apply(&mut w, ops, changed, next)?;
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

    /// The oldest pending order of `channel` that no host query can find (no specimen id
    /// was read from it): what a channel in `orders = "query"` mode still pushes.
    pub fn next_unindexed_order(&self, channel: &str) -> Result<Option<Order>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let p = keys::order_queue_prefix(channel);
        for (_, id) in eng.range(&p, &keys::prefix_end(&p), usize::MAX)? {
            let v = eng
                .get(&keys::order(&String::from_utf8_lossy(&id)))?
                .ok_or_else(|| StoreError::Corrupt("order queue entry without order".into()))?;
            let o: Order = serde_json::from_slice(&v).map_err(corrupt)?;
            if o.specimens.is_empty() {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }

    /// One order, any state.
    pub fn order(&self, id: &str) -> Result<Option<Order>> {
        let g = self.engine()?;
        match g.as_ref().ok_or_else(closed)?.get(&keys::order(id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// The pending orders of `channel` that name any of `specimens`: oldest first, each
    /// once (the order cache's answer to a host query).
    pub fn orders_for_specimens(&self, channel: &str, specimens: &[String]) -> Result<Vec<Order>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let mut found: BTreeMap<u64, String> = BTreeMap::new();
        for s in specimens {
            let s = s.trim();
            if s.is_empty() || s.contains('\0') {
                continue;
            }
            let p = keys::specimen_prefix(channel, s);
            for (k, id) in eng.range(&p, &keys::prefix_end(&p), usize::MAX)? {
                found.insert(
                    keys::seq_suffix(&k),
                    String::from_utf8_lossy(&id).into_owned(),
                );
            }
        }
        let mut out = Vec::with_capacity(found.len());
        for id in found.into_values() {
            let Some(v) = eng.get(&keys::order(&id))? else {
                return Err(StoreError::Corrupt(
                    "specimen index entry without order".into(),
                ));
            };
            let o: Order = serde_json::from_slice(&v).map_err(corrupt)?;
            if o.state == OrderState::Pending {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Kept orders (any state), oldest first: of `channel` if given, naming `specimen` if
    /// given, at most `limit` (for `labagent queue orders`).
    pub fn list_orders(
        &self,
        channel: Option<&str>,
        specimen: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let mut out: Vec<Order> = Vec::new();
        for (_, v) in eng.range(b"O", b"P", usize::MAX)? {
            let o: Order = serde_json::from_slice(&v).map_err(corrupt)?;
            if channel.is_some_and(|c| c != o.channel)
                || specimen.is_some_and(|s| !o.specimens.iter().any(|x| x == s.trim()))
            {
                continue;
            }
            out.push(o);
        }
        out.sort_by_key(|o| o.seq);
        out.truncate(limit);
        Ok(out)
    }

    /// Records an attempt's outcome. Not synced on its own. An order leaves pending once:
    /// marking one that has left is [`StoreError::OrderNotPending`]. The final state, the
    /// removal from the queue and the specimen index, and the report owed upstream are
    /// one atomic write.
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
        if order.state != OrderState::Pending {
            return Err(StoreError::OrderNotPending(id.into()));
        }
        order.attempts += 1;
        order.detail = detail.map(str::to_string);
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        let mut next = w.next_seq;
        let state = match outcome {
            OrderOutcome::Retry => None,
            OrderOutcome::Delivered => Some(OrderState::Delivered),
            OrderOutcome::Failed => Some(OrderState::Failed),
            OrderOutcome::AnsweredQuery => Some(OrderState::AnsweredQuery),
        };
        if let Some(state) = state {
            let d = detail_or(detail, state);
            self.finish_ops(&w, &mut order, state, &d, &mut ops, &mut changed, &mut next)?;
        }
        ops.push((key, Some(serde_json::to_vec(&order).map_err(corrupt)?)));
        self.apply(&mut w, ops, changed, next)?;
        Ok(order)
    }

    /// Claims the pending orders among `ids` as `answered-query` with `detail`, in one
    /// atomic write, durable on return; returns the ids it took (an order already
    /// finished, or unknown, is left out). The answer may be sent for exactly those.
    pub fn answer_orders(&self, ids: &[String], detail: &str) -> Result<Vec<String>> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        let mut next = w.next_seq;
        let mut taken = Vec::new();
        for id in ids {
            if taken.contains(id) {
                continue;
            }
            let key = keys::order(id);
            let v = {
                let g = self.engine()?;
                g.as_ref().ok_or_else(closed)?.get(&key)?
            };
            let Some(v) = v else { continue };
            let mut order: Order = serde_json::from_slice(&v).map_err(corrupt)?;
            if order.state != OrderState::Pending {
                continue;
            }
            order.attempts += 1;
            order.detail = Some(detail.to_string());
            let st = OrderState::AnsweredQuery;
            self.finish_ops(
                &w,
                &mut order,
                st,
                detail,
                &mut ops,
                &mut changed,
                &mut next,
            )?;
            ops.push((key, Some(serde_json::to_vec(&order).map_err(corrupt)?)));
            taken.push(id.clone());
        }
        if taken.is_empty() {
            return Ok(taken);
        }
        let gen = self.apply(&mut w, ops, changed, next)?;
        drop(w);
        self.durable(gen)?;
        Ok(taken)
    }

    /// Expires pending orders stored more than `keep` before `now` (reported `expired`)
    /// and forgets finished ones that left pending more than `keep` before `now`. Durable
    /// on return. Orders from before the order cache get their `stored_at` now.
    pub fn sweep_orders(&self, keep: Duration, now: SystemTime) -> Result<Sweep> {
        let now_s = unix_secs(now);
        let cutoff = now_s.saturating_sub(keep.as_secs());
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let all = {
            let g = self.engine()?;
            g.as_ref()
                .ok_or_else(closed)?
                .range(b"O", b"P", usize::MAX)?
        };
        let mut ops = Vec::new();
        let mut changed = BTreeMap::new();
        let mut next = w.next_seq;
        let mut sweep = Sweep::default();
        for (key, v) in all {
            let mut order: Order = serde_json::from_slice(&v).map_err(corrupt)?;
            match (order.state, order.stored_at, order.finished_at) {
                (OrderState::Pending, None, _) => order.stored_at = Some(now_s),
                (OrderState::Pending, Some(at), _) if at < cutoff => {
                    let d = format!("not sent within orders_keep ({}s)", keep.as_secs());
                    order.detail = Some(d.clone());
                    let st = OrderState::Expired;
                    self.finish_ops(&w, &mut order, st, &d, &mut ops, &mut changed, &mut next)?;
                    sweep.expired.push(order.clone());
                }
                (OrderState::Pending, ..) => continue,
                (_, _, Some(at)) if at < cutoff => {
                    ops.push((key, None));
                    sweep.forgotten += 1;
                    continue;
                }
                (_, _, Some(_)) => continue,
                (_, _, None) => order.finished_at = Some(now_s),
            }
            ops.push((key, Some(serde_json::to_vec(&order).map_err(corrupt)?)));
        }
        if ops.is_empty() {
            return Ok(sweep);
        }
        let gen = self.apply(&mut w, ops, changed, next)?;
        drop(w);
        self.durable(gen)?;
        Ok(sweep)
    }

    /// Ops taking a pending `order` to its final `state`: out of the queue and the
    /// specimen index, `finished_at` set, and its report queued (when reports are kept).
    #[allow(clippy::too_many_arguments)]
    fn finish_ops(
        &self,
        w: &Writer,
        order: &mut Order,
        state: OrderState,
        detail: &str,
        ops: &mut Vec<Op>,
        changed: &mut BTreeMap<String, Counters>,
        next: &mut u64,
    ) -> Result<()> {
        order.state = state;
        order.finished_at = Some(unix_secs(SystemTime::now()));
        ops.push((keys::order_queue(&order.channel, order.seq), None));
        for s in &order.specimens {
            ops.push((keys::specimen(&order.channel, s, order.seq), None));
        }
        self.report_ops(w, order, detail, ops, changed, next)
    }

    /// The report owed upstream for a finished order, as a pending message of
    /// [`ORDER_REPORTS`] at sequence `*next` (only with `StoreOptions::order_reports`).
    fn report_ops(
        &self,
        w: &Writer,
        order: &Order,
        detail: &str,
        ops: &mut Vec<Op>,
        changed: &mut BTreeMap<String, Counters>,
        next: &mut u64,
    ) -> Result<()> {
        if !self.shared.opts.order_reports {
            return Ok(());
        }
        let Some(status) = order.state.report_status() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let r = OrderReportRecord {
            id: order.id.clone(),
            status: status.to_string(),
            detail: detail.to_string(),
            at: rfc3339_ms(time_to_ms(now)),
            channel: order.channel.clone(),
        };
        let bytes = serde_json::to_vec(&r).map_err(corrupt)?;
        let meta = serde_json::json!({
            "kind": "order-report",
            "order": order.id,
            "order_channel": order.channel,
            "status": status,
        });
        let seq = *next;
        *next += 1;
        self.queue_message_ops(
            w,
            ORDER_REPORTS,
            Protocol::Raw,
            now,
            meta.into(),
            &bytes,
            seq,
            ops,
            changed,
        )
    }

    /// A feed's saved cursor (see [`save_cursor`](Self::save_cursor)).
    pub fn cursor(&self, name: &str) -> Result<Option<String>> {
        let g = self.engine()?;
        match g.as_ref().ok_or_else(closed)?.get(&keys::cursor(name))? {
            Some(v) => Ok(Some(String::from_utf8(v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Saves a feed's cursor; durable on return (after the orders it covers are).
    pub fn save_cursor(&self, name: &str, value: &str) -> Result<()> {
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let ops = vec![(keys::cursor(name), Some(value.as_bytes().to_vec()))];
        let next = w.next_seq;
        let gen = self.apply(&mut w, ops, BTreeMap::new(), next)?;
        drop(w);
        self.durable(gen)
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
