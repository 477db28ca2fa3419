//! The session task: keeps up to `window` QoS 1 publishes in flight, releases a message
//! from the inbox only on its PUBACK, takes orders in and reports their fate.
//!
//! Packet ids: rumqttc's `publish` does not return one. Requests are handled in the order
//! they are submitted, so every `Outgoing::Publish(pkid)` event belongs to the oldest
//! submitted publish that has not had one yet (`fifo`). A publish that collides with a
//! packet id still in flight is announced as `Outgoing::AwaitAck(pkid)` and sent later
//! with that id (`held`). Retransmissions by rumqttc never happen: the network task
//! throws its state away after every connection loss (see `net.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::{AsyncClient, Event, Incoming, Outgoing as MqttOut, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

mod orders;
mod queries;
pub mod remote;

use super::net::NetEvent;
use super::status::MqttStatus;
use super::{MqttSettings, OrderSink};
use crate::channel::OrderReport;
use crate::uplink::queue::Envelope;
use crate::uplink::{Outgoing, Queue, UplinkState};

/// How long a stop waits for PUBACKs of what is in flight.
const STOP_DRAIN: Duration = Duration::from_secs(3);
/// PUBACKed messages confirmed in the store together while publishing goes on.
const CONFIRM_BATCH: usize = 32;
/// Safety net: look at the inbox this often even without a wake-up.
const RESCAN: Duration = Duration::from_secs(30);

/// What a publish carries.
#[derive(Debug, Clone)]
enum Tag {
    Msg {
        id: String,
    },
    Report(OrderReport),
    /// Fleet management (presence, command results): `remote.rs`.
    Remote(remote::RemoteTag),
    /// A host query (its answer comes on another topic; the PUBACK settles nothing).
    Query,
}

/// A message ready to publish (serialized off the runtime).
struct Prepared {
    id: String,
    channel: String,
    topic: String,
    payload: Vec<u8>,
}

enum Step {
    Net(NetEvent),
    Fetched(Result<FetchOut, tokio::task::JoinError>),
    Confirmed(Result<Vec<String>, tokio::task::JoinError>),
    More,
    Report(OrderReport),
    Renew,
    Remote(remote::RemoteStep),
    Query(super::QueryJob),
}

struct FetchOut {
    epoch: u64,
    fetched: Vec<Prepared>,
    /// Some channel may hold more than was fetched.
    more: bool,
    rejected: u64,
}

/// The JSON envelope of ARCHITECTURE.md "Upload contract", one per message.
pub fn envelope(agent: &str, m: &Outgoing) -> Vec<u8> {
    serde_json::to_vec(&Envelope::of(agent, m)).unwrap_or_default()
}

#[derive(Serialize)]
struct Report<'a> {
    id: &'a str,
    state: &'a str,
    detail: &'a str,
}

pub(crate) struct Session {
    pub s: Arc<MqttSettings>,
    pub client: AsyncClient,
    pub queue: Arc<dyn Queue>,
    pub orders: Option<Arc<dyn OrderSink>>,
    pub net: mpsc::UnboundedReceiver<NetEvent>,
    pub net_stop: watch::Sender<bool>,
    pub wake: Arc<Notify>,
    pub reports: mpsc::UnboundedReceiver<OrderReport>,
    pub stop: watch::Receiver<bool>,
    pub status: watch::Sender<MqttStatus>,
    // books
    pub up: bool,
    pub epoch: u64,
    fifo: VecDeque<Tag>,
    held: Option<(u16, Tag)>,
    inflight: HashMap<u16, Tag>,
    /// Message id → channel, from submission until the store confirmed it.
    outstanding: HashMap<String, String>,
    to_confirm: Vec<String>,
    /// Read ahead from the inbox, not yet published (their ids are outstanding).
    ready: VecDeque<Prepared>,
    report_q: VecDeque<OrderReport>,
    more: bool,
    /// An order could not be stored: no more acks on this connection.
    orders_broken: bool,
    /// Shutting down: publish nothing new.
    stopping: bool,
    reconnect_at: Option<tokio::time::Instant>,
    /// Fleet management on this connection, if enabled.
    pub remote: Option<remote::RemoteMqtt>,
    /// Host queries from the channels (see `queries.rs`); `None`: no query hook.
    queries: Option<mpsc::UnboundedReceiver<super::QueryJob>>,
    deadlines: Option<crate::uplink::query::Deadlines>,
    /// Published queries waiting for their answer, by query id.
    queries_pending: HashMap<String, (crate::uplink::query::Slot, crate::store::Protocol)>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: Arc<MqttSettings>,
        client: AsyncClient,
        queue: Arc<dyn Queue>,
        orders: Option<Arc<dyn OrderSink>>,
        net: mpsc::UnboundedReceiver<NetEvent>,
        net_stop: watch::Sender<bool>,
        wake: Arc<Notify>,
        reports: mpsc::UnboundedReceiver<OrderReport>,
        stop: watch::Receiver<bool>,
        status: watch::Sender<MqttStatus>,
    ) -> Self {
        Session {
            s,
            client,
            queue,
            orders,
            net,
            net_stop,
            wake,
            reports,
            stop,
            status,
            up: false,
            epoch: 0,
            fifo: VecDeque::new(),
            held: None,
            inflight: HashMap::new(),
            outstanding: HashMap::new(),
            to_confirm: Vec::new(),
            ready: VecDeque::new(),
            report_q: VecDeque::new(),
            more: true,
            orders_broken: false,
            stopping: false,
            reconnect_at: None,
            remote: None,
            queries: None,
            deadlines: None,
            queries_pending: HashMap::new(),
        }
    }

    /// Takes host queries from `rx`; `deadlines` is stopped with the session.
    pub fn with_queries(
        mut self,
        rx: mpsc::UnboundedReceiver<super::QueryJob>,
        deadlines: crate::uplink::query::Deadlines,
    ) -> Self {
        self.queries = Some(rx);
        self.deadlines = Some(deadlines);
        self
    }

    fn publish_status(&self, f: impl FnOnce(&mut MqttStatus)) {
        self.status.send_modify(f);
    }

    fn in_window(&self) -> usize {
        self.fifo.len() + self.inflight.len() + usize::from(self.held.is_some())
    }

    fn room(&self) -> usize {
        usize::from(self.s.window).saturating_sub(self.in_window())
    }

    fn topic(&self, channel: &str, leaf: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.s.topic_prefix, self.s.agent_id, channel, leaf
        )
    }

    pub async fn run(mut self) {
        let mut fetch: Option<JoinHandle<FetchOut>> = None;
        let mut confirm: Option<JoinHandle<Vec<String>>> = None;
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if fetch.is_none() {
                fetch = self.maybe_fetch();
            }
            if confirm.is_none() {
                confirm = self.maybe_confirm();
            }
            let reconnect_at = self.reconnect_at;
            let step = tokio::select! {
                ev = self.net.recv() => match ev {
                    Some(ev) => Step::Net(ev),
                    None => break,
                },
                r = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => Step::Fetched(r),
                r = async { confirm.as_mut().expect("guarded").await }, if confirm.is_some() => Step::Confirmed(r),
                _ = self.wake.notified() => Step::More,
                Some(r) = self.reports.recv() => Step::Report(r),
                Some(j) = async { self.queries.as_mut().expect("guarded").recv().await }, if self.queries.is_some() => Step::Query(j),
                _ = tokio::time::sleep_until(reconnect_at.unwrap_or_else(tokio::time::Instant::now)),
                    if reconnect_at.is_some() => Step::Renew,
                _ = rescan.tick() => Step::More,
                r = remote::next(&mut self.remote) => Step::Remote(r),
                _ = self.stop.wait_for(|s| *s) => break,
            };
            match step {
                Step::Net(ev) => self.on_net(ev).await,
                Step::Fetched(r) => {
                    fetch = None;
                    self.on_fetch(r);
                }
                Step::Confirmed(r) => {
                    confirm = None;
                    self.on_confirm(r);
                }
                Step::More => self.more = true,
                Step::Report(r) => {
                    self.report_q.push_back(r);
                    self.flush_reports();
                }
                Step::Remote(r) => self.on_remote(r).await,
                Step::Query(j) => self.on_query(j),
                Step::Renew => {
                    self.reconnect_at = None;
                    tracing::info!("access token due for renewal: reconnecting with a new one");
                    let _ = self.client.try_disconnect();
                }
            }
        }
        self.shutdown(fetch, confirm).await;
    }

    /// Marks what the broker acknowledged as delivered (blocking, off the runtime).
    fn maybe_confirm(&mut self) -> Option<JoinHandle<Vec<String>>> {
        // In batches while busy (fewer hand-offs to the blocking pool), at once when idle.
        let busy = self.up && self.in_window() > 0 && !self.stopping;
        if self.to_confirm.is_empty() || (busy && self.to_confirm.len() < CONFIRM_BATCH) {
            return None;
        }
        let ids = std::mem::take(&mut self.to_confirm);
        let queue = self.queue.clone();
        Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = queue.confirm(&ids) {
                // They stay pending and go again with the same id (at-least-once).
                tracing::error!(count = ids.len(), error = %e, "cannot mark delivered messages");
            }
            ids
        }))
    }

    fn on_confirm(&mut self, r: Result<Vec<String>, tokio::task::JoinError>) {
        match r {
            Ok(ids) => {
                for id in &ids {
                    self.outstanding.remove(id);
                }
            }
            // The ids stay outstanding (never fetched again on this connection); after
            // the next reconnect they are resent with the same id.
            Err(e) => tracing::error!(error = %e, "confirm task failed"),
        }
    }

    /// Reads ahead from the inbox while the ready buffer is at most half full: the window
    /// refills from `ready` on each PUBACK without waiting for the store.
    fn maybe_fetch(&mut self) -> Option<JoinHandle<FetchOut>> {
        let window = usize::from(self.s.window);
        let want = 2 * window - self.ready.len().min(2 * window);
        if !(self.up && self.more && self.ready.len() <= window / 2) || want == 0 {
            return None;
        }
        self.more = false;
        let mut skip: HashMap<String, usize> = HashMap::new();
        let mut ids: HashSet<String> = HashSet::with_capacity(self.outstanding.len());
        for (id, ch) in &self.outstanding {
            *skip.entry(ch.clone()).or_default() += 1;
            ids.insert(id.clone());
        }
        let queue = self.queue.clone();
        let s = self.s.clone();
        let epoch = self.epoch;
        Some(tokio::task::spawn_blocking(move || {
            let mut out = FetchOut {
                epoch,
                fetched: Vec::new(),
                more: false,
                rejected: 0,
            };
            let mut left = want;
            // A store that cannot answer ends this fetch (logged); the next wake fetches again.
            let channels = queue.channels().unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the store");
                Vec::new()
            });
            for ch in channels {
                if left == 0 {
                    out.more = true;
                    break;
                }
                // The inbox has no cursor: read past what is already outstanding.
                let max = skip.get(&ch).copied().unwrap_or(0) + left;
                let batch = match queue.next_batch(&ch, max) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(channel = %ch, error = %e, "cannot read the store");
                        break;
                    }
                };
                if batch.len() >= max {
                    out.more = true;
                }
                for m in batch {
                    if left == 0 {
                        out.more = true;
                        break;
                    }
                    if ids.contains(&m.id) {
                        continue;
                    }
                    // An order report (`#order-reports`): its channel's orders/status topic,
                    // as `{id, state, detail}`; confirmed on PUBACK like a message.
                    if m.channel == crate::store::ORDER_REPORTS {
                        let Ok(rec) =
                            serde_json::from_str::<crate::store::OrderReportRecord>(&m.text)
                        else {
                            if let Err(e) = queue.reject(&m.id, "not an order report") {
                                tracing::error!(id = %m.id, error = %e, "cannot park a rejected message");
                            }
                            continue;
                        };
                        let payload = serde_json::to_vec(&Report {
                            id: &rec.id,
                            state: &rec.status,
                            detail: &rec.detail,
                        })
                        .unwrap_or_default();
                        left -= 1;
                        out.fetched.push(Prepared {
                            topic: format!(
                                "{}/{}/{}/orders/status",
                                s.topic_prefix, s.agent_id, rec.channel
                            ),
                            id: m.id,
                            channel: m.channel,
                            payload,
                        });
                        continue;
                    }
                    let payload = envelope(&s.agent_id, &m);
                    // Topic, header and a margin on top of the payload.
                    if payload.len() + 1024 > s.max_packet {
                        tracing::error!(id = %m.id, channel = %m.channel, len = payload.len(),
                            max = s.max_packet, "message larger than the MQTT packet limit; parked as rejected");
                        if let Err(e) = queue.reject(&m.id, "larger than the MQTT packet limit") {
                            tracing::error!(id = %m.id, error = %e, "cannot park a rejected message");
                        }
                        out.rejected += 1;
                        continue;
                    }
                    left -= 1;
                    out.fetched.push(Prepared {
                        topic: format!("{}/{}/{}/messages", s.topic_prefix, s.agent_id, m.channel),
                        id: m.id,
                        channel: m.channel,
                        payload,
                    });
                }
            }
            out
        }))
    }

    fn on_fetch(&mut self, r: Result<FetchOut, tokio::task::JoinError>) {
        let out = match r {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "inbox task failed");
                self.more = true;
                return;
            }
        };
        if out.rejected > 0 {
            self.publish_status(|st| st.rejected += out.rejected);
        }
        self.more |= out.more;
        if out.epoch != self.epoch || !self.up {
            self.more = true;
            return;
        }
        for p in out.fetched {
            self.outstanding.insert(p.id.clone(), p.channel.clone());
            self.ready.push_back(p);
        }
        self.fill_window();
    }

    /// Publishes from the ready buffer while the window has room.
    fn fill_window(&mut self) {
        if !self.up || self.stopping {
            return;
        }
        while self.room() > 0 {
            let Some(p) = self.ready.pop_front() else {
                break;
            };
            let id = p.id.clone();
            match self.client.try_publish(
                p.topic.clone(),
                QoS::AtLeastOnce,
                false,
                p.payload.clone(),
            ) {
                Ok(()) => self.fifo.push_back(Tag::Msg { id }),
                Err(e) => {
                    tracing::debug!(error = %e, "request channel full; publishing later");
                    self.ready.push_front(p);
                    break;
                }
            }
        }
        let n = self.in_window();
        self.publish_status(|st| st.in_flight = n);
    }

    fn flush_reports(&mut self) {
        if !self.up {
            return;
        }
        while let Some(r) = self.report_q.pop_front() {
            let payload = serde_json::to_vec(&Report {
                id: &r.id,
                state: &r.state,
                detail: &r.detail,
            })
            .unwrap_or_default();
            let topic = self.topic(&r.channel, "orders/status");
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                Ok(()) => self.fifo.push_back(Tag::Report(r)),
                Err(_) => {
                    self.report_q.push_front(r);
                    break;
                }
            }
        }
    }

    async fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Up {
                session_present,
                token_expires_at,
            } => {
                self.up = true;
                self.orders_broken = false;
                self.more = true;
                if session_present {
                    tracing::info!("connected to the broker (session resumed)");
                } else {
                    tracing::info!("connected to the broker (new session): subscribing, resending everything unconfirmed");
                }
                if self.s.orders && !self.s.channels.is_empty() {
                    let filters: Vec<rumqttc::SubscribeFilter> = self
                        .s
                        .channels
                        .iter()
                        .map(|c| {
                            rumqttc::SubscribeFilter::new(self.topic(c, "orders"), QoS::AtLeastOnce)
                        })
                        .collect();
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        tracing::warn!(error = %e, "cannot subscribe to orders; reconnecting");
                        let _ = self.client.try_disconnect();
                    }
                }
                let answers = self.answer_filters();
                if self.queries.is_some() && !answers.is_empty() {
                    if let Err(e) = self.client.try_subscribe_many(answers) {
                        tracing::warn!(error = %e, "cannot subscribe to query answers; reconnecting");
                        let _ = self.client.try_disconnect();
                    }
                }
                self.reconnect_at = token_expires_at.and_then(renewal_deadline);
                self.flush_reports();
                self.remote_up().await;
                self.publish_status(|st| {
                    st.connected = true;
                    st.state = UplinkState::Ok;
                    st.session_present = Some(session_present);
                    st.token_expires_at = token_expires_at;
                });
            }
            NetEvent::Down {
                error,
                refused,
                ack,
            } => {
                let was_up = self.up;
                self.up = false;
                self.epoch += 1;
                self.reconnect_at = None;
                // Forget every request of that connection: messages come back from the
                // inbox, reports go back to the front of their queue.
                let mut tags: Vec<Tag> = Vec::new();
                let mut by_pkid: Vec<(u16, Tag)> = self.inflight.drain().collect();
                by_pkid.sort_by_key(|(p, _)| *p);
                tags.extend(by_pkid.into_iter().map(|(_, t)| t));
                tags.extend(self.held.take().map(|(_, t)| t));
                tags.extend(self.fifo.drain(..));
                let mut reports = Vec::new();
                for t in tags {
                    match t {
                        Tag::Msg { id, .. } => {
                            self.outstanding.remove(&id);
                        }
                        Tag::Report(r) => reports.push(r),
                        Tag::Remote(t) => self.remote_lost(t),
                        Tag::Query => {}
                    }
                }
                for r in reports.into_iter().rev() {
                    self.report_q.push_front(r);
                }
                for p in self.ready.drain(..) {
                    self.outstanding.remove(&p.id);
                }
                self.more = true;
                let _ = ack.send(());
                if was_up {
                    tracing::warn!(error = %error, "connection to the broker lost; reconnecting");
                } else {
                    tracing::warn!(error = %error, "cannot connect to the broker; retrying");
                }
                let state = if refused {
                    UplinkState::Paused {
                        reason: format!("broker refused the login: {error}"),
                    }
                } else if error.contains("TLS") {
                    UplinkState::Paused {
                        reason: error.clone(),
                    }
                } else {
                    UplinkState::BackingOff {
                        wait: Duration::ZERO,
                    }
                };
                self.publish_status(|st| {
                    st.connected = false;
                    st.state = state;
                    st.last_error = Some(error);
                    st.in_flight = 0;
                });
            }
            NetEvent::NoLogin(e) => {
                tracing::warn!(error = %e, "no credentials for the broker; retrying");
                let state = match &e {
                    crate::uplink::AuthError::Credentials(d) => {
                        UplinkState::CredentialsProblem { detail: d.clone() }
                    }
                    _ => UplinkState::BackingOff {
                        wait: Duration::ZERO,
                    },
                };
                self.publish_status(|st| {
                    st.state = state;
                    st.last_error = Some(e.to_string());
                });
            }
            NetEvent::Event(Event::Outgoing(MqttOut::Publish(pkid))) => {
                if pkid == 0 {
                    return;
                }
                let tag = match &self.held {
                    Some((p, _)) if *p == pkid => self.held.take().map(|(_, t)| t),
                    _ => self.fifo.pop_front(),
                };
                match tag {
                    Some(t) => {
                        self.inflight.insert(pkid, t);
                    }
                    None => tracing::debug!(pkid, "publish event without a request"),
                }
            }
            NetEvent::Event(Event::Outgoing(MqttOut::AwaitAck(pkid))) => {
                if let Some(t) = self.fifo.pop_front() {
                    self.held = Some((pkid, t));
                }
            }
            NetEvent::Event(Event::Incoming(Incoming::PubAck(ack))) => {
                match self.inflight.remove(&ack.pkid) {
                    Some(Tag::Msg { id, .. }) => {
                        self.to_confirm.push(id);
                        let now = SystemTime::now();
                        self.publish_status(|st| {
                            st.delivered += 1;
                            st.last_delivery = Some(now);
                        });
                        self.fill_window();
                    }
                    Some(Tag::Report(r)) => {
                        tracing::debug!(order = %r.id, "order status published");
                        self.publish_status(|st| st.reports_published += 1);
                    }
                    Some(Tag::Remote(t)) => self.remote_acked(t),
                    Some(Tag::Query) => {}
                    None => tracing::debug!(pkid = ack.pkid, "PUBACK for an unknown packet id"),
                }
            }
            NetEvent::Event(Event::Incoming(Incoming::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!("broker refused the subscription to orders (check its ACL)");
                    self.publish_status(|st| {
                        st.last_error = Some("broker refused the orders subscription".into())
                    });
                }
            }
            NetEvent::Event(Event::Incoming(Incoming::Publish(p))) => {
                if self.is_command(&p) {
                    self.on_command(p).await
                } else if !self.on_answer(&p) {
                    self.on_order(p).await
                }
            }
            NetEvent::Event(_) => {}
        }
    }

    async fn shutdown(
        mut self,
        fetch: Option<JoinHandle<FetchOut>>,
        confirm: Option<JoinHandle<Vec<String>>>,
    ) {
        // Queries waiting for an answer get "nothing known" now.
        self.drop_queries();
        // Let what is in flight be acknowledged, briefly; confirm it; then disconnect.
        let deadline = tokio::time::Instant::now() + STOP_DRAIN;
        self.more = false;
        self.stopping = true;
        // A clean stop says `offline` itself (the Will fires only on a lost connection).
        self.remote_offline();
        while self.up && !(self.fifo.is_empty() && self.inflight.is_empty() && self.held.is_none())
        {
            tokio::select! {
                ev = self.net.recv() => match ev {
                    Some(ev) => self.on_net(ev).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if let Some(j) = fetch {
            let _ = j.await;
        }
        if let Some(j) = confirm {
            let _ = j.await;
        }
        if !self.to_confirm.is_empty() {
            let q = self.queue.clone();
            let ids = std::mem::take(&mut self.to_confirm);
            match tokio::task::spawn_blocking(move || q.confirm(&ids)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot mark delivered messages"),
                Err(e) => tracing::error!(error = %e, "confirm task failed"),
            }
        }
        if self.up {
            let _ = self.client.try_disconnect();
            let wait = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    ev = self.net.recv() => match ev {
                        Some(NetEvent::Event(Event::Outgoing(MqttOut::Disconnect))) | None => break,
                        Some(NetEvent::Down { ack, .. }) => { let _ = ack.send(()); break; }
                        Some(_) => {}
                    },
                    _ = &mut wait => break,
                }
            }
        }
        let _ = self.net_stop.send(true);
        self.publish_status(|st| {
            st.connected = false;
            st.state = UplinkState::Stopped;
            st.in_flight = 0;
        });
        tracing::info!("MQTT uplink stopped");
    }
}

/// When to reconnect with a renewed token: ahead of expiry by a fifth of the remaining
/// life, at most 60 s, at least 1 s from now.
fn renewal_deadline(expires: SystemTime) -> Option<tokio::time::Instant> {
    let left = expires.duration_since(SystemTime::now()).ok()?;
    let ahead = (left / 5).min(Duration::from_secs(60));
    let after = left.saturating_sub(ahead).max(Duration::from_secs(1));
    Some(tokio::time::Instant::now() + after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::{MemoryQueue, Protocol};
    use rumqttc::{MqttOptions, PubAck};

    fn msg(i: usize) -> Outgoing {
        Outgoing {
            id: format!("m{i}"),
            channel: "chem".into(),
            protocol: Protocol::Astm,
            received_at: SystemTime::UNIX_EPOCH,
            clock_synced: Some(true),
            text: format!("R|{i}\r"),
            meta: serde_json::Value::Null,
        }
    }

    fn session(q: &MemoryQueue, window: u16) -> (Session, rumqttc::EventLoop) {
        let mut s = MqttSettings::new("mqtt://127.0.0.1:1", "a", vec!["chem".into()]);
        s.window = window;
        let (client, el) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 64);
        let (_ntx, nrx) = mpsc::unbounded_channel();
        let (_rtx, rrx) = mpsc::unbounded_channel();
        let (net_stop, _) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let (status, _) = watch::channel(MqttStatus::new(crate::uplink::AuthMode::None));
        let s = Session::new(
            Arc::new(s),
            client,
            Arc::new(q.clone()),
            None,
            nrx,
            net_stop,
            Arc::new(Notify::new()),
            rrx,
            stop,
            status,
        );
        (s, el)
    }

    fn ev_out(o: MqttOut) -> NetEvent {
        NetEvent::Event(Event::Outgoing(o))
    }

    fn puback(pkid: u16) -> NetEvent {
        NetEvent::Event(Event::Incoming(Incoming::PubAck(PubAck::new(pkid))))
    }

    /// Packet ids are learnt in submission order, a collision (`AwaitAck`) is held until
    /// its id is free, and only PUBACKs release messages; a connection loss returns every
    /// unacknowledged message to the inbox's care.
    #[tokio::test]
    async fn packet_ids_in_order_collisions_and_connection_loss() {
        let q = MemoryQueue::new();
        for i in 0..6 {
            q.push(msg(i));
        }
        let (mut s, _el) = session(&q, 4);
        s.on_net(NetEvent::Up {
            session_present: false,
            token_expires_at: None,
        })
        .await;
        let f = s.maybe_fetch().expect("fetch after Up");
        s.on_fetch(f.await);
        assert_eq!(s.fifo.len(), 4, "window of 4 submitted");
        assert_eq!(s.ready.len(), 2, "the rest read ahead");
        assert!(s.maybe_fetch().is_none(), "nothing more to read");

        s.on_net(ev_out(MqttOut::Publish(1))).await; // m0
        s.on_net(ev_out(MqttOut::Publish(2))).await; // m1
        s.on_net(ev_out(MqttOut::AwaitAck(1))).await; // m2 collides with pkid 1
        s.on_net(ev_out(MqttOut::Publish(3))).await; // m3
        s.on_net(puback(2)).await;
        assert_eq!(s.to_confirm, vec!["m1"]);
        // A freed slot refills the window from the ready buffer: m4 is submitted.
        assert_eq!(s.fifo.len(), 1);
        s.on_net(puback(1)).await; // m0; rumqttc then sends the held m2 as pkid 1
        s.on_net(ev_out(MqttOut::Publish(1))).await;
        s.on_net(puback(1)).await;
        assert_eq!(s.to_confirm, vec!["m1", "m0", "m2"]);
        s.on_net(ev_out(MqttOut::Publish(2))).await; // m4
        assert_eq!(q.pending(), 6, "nothing confirmed in the store yet");

        // Connection lost with m3 and m4 in flight and m5 submitted or ready.
        let (ack, acked) = tokio::sync::oneshot::channel();
        s.on_net(NetEvent::Down {
            error: "reset".into(),
            refused: false,
            ack,
        })
        .await;
        acked.await.expect("the session answers Down");
        assert!(s.fifo.is_empty() && s.inflight.is_empty() && s.ready.is_empty());
        let mut left: Vec<&String> = s.outstanding.keys().collect();
        left.sort();
        assert_eq!(
            left,
            vec!["m0", "m1", "m2"],
            "only acknowledged ids stay outstanding"
        );
        let c = s.maybe_confirm().expect("confirm when not connected");
        s.on_confirm(c.await);
        assert!(s.outstanding.is_empty());
        assert_eq!(q.confirmed(), vec!["m1", "m0", "m2"]);
        assert_eq!(
            q.pending(),
            3,
            "m3, m4, m5 are sent again after the reconnect"
        );

        s.on_net(NetEvent::Up {
            session_present: true,
            token_expires_at: None,
        })
        .await;
        let f = s.maybe_fetch().expect("fetch after reconnect");
        s.on_fetch(f.await);
        let again: Vec<String> = s
            .fifo
            .iter()
            .map(|t| match t {
                Tag::Msg { id } => id.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(again, vec!["m3", "m4", "m5"], "resent in order");
    }
}
