//! The MQTT uplink and order downlink (rumqttc 0.25, MQTT 3.1.1).
//!
//! # Contract (ARCHITECTURE.md "Upload contract", "Orders (downlink)")
//!
//! * Every pending inbox message is published at QoS 1 to
//!   `{prefix}/{agent}/{channel}/messages` as the JSON envelope
//!   `{id, agent, channel, protocol, received_at, clock_synced, text, meta}` (the HTTP json
//!   format's envelope, one per message). **A message leaves the inbox only on its PUBACK.**
//!   Delivery is at-least-once; a duplicate always carries the same `id`.
//! * With `orders = true`, `{prefix}/{agent}/{channel}/orders` is subscribed at QoS 1 with
//!   manual acks. An order `{"id", "text"}` is acknowledged only once it is durable in the
//!   outbox, in arrival order; if it cannot be stored, the agent reconnects instead of
//!   acknowledging (the broker sends it again). The channel's driver is woken
//!   ([`crate::channel::ChannelCtx::orders`]) and reports the fate, which is published to
//!   `…/orders/status` as `{id, state, detail}` (`delivered`, `failed`,
//!   `answered-query`, `expired`): reports travel the durable `#order-reports` queue and
//!   leave it on their PUBACK, like messages.
//! * Host queries: published at QoS 1 to `{prefix}/{agent}/{channel}/queries` as
//!   `{"id", "specimens", "text"}`; `…/answers/+` of every ASTM and HL7 channel is
//!   subscribed (QoS 0) at every connect, and the payload on `…/answers/{id}` is the
//!   answer in the instrument's protocol (empty: nothing known). No answer by the
//!   query's deadline, or no broker, is "nothing known" (`session/queries.rs`).
//!
//! # rumqttc, and what is done about each of its traps
//!
//! * `publish` returns no packet id: packet ids are learnt from `Outgoing::Publish` events,
//!   in submission order ([`session`]).
//! * `clean_session` defaults to true: set to false, with a stable client id
//!   (`[uplink.mqtt] client_id`, default `agent.id`), so the broker keeps the subscription
//!   and queues orders while the agent is away.
//! * rumqttc keeps unacknowledged publishes only in memory and drops them when the broker
//!   answers `session_present = false`: the inbox stays the source of truth. After every
//!   connection loss rumqttc's state is discarded ([`net`]) and everything unconfirmed is
//!   published again from the inbox, and the orders are subscribed again, whatever
//!   `session_present` says.
//! * No reconnect backoff of its own: capped exponential backoff with jitter (0.5 s … 60 s),
//!   reset after a connection that lasted 10 s.
//! * Default max packet size 10 KiB: raised to fit the largest `max_message` of the
//!   channels as an escaped JSON envelope; a message that still does not fit is parked as
//!   rejected rather than blocking its channel forever.
//! * Credentials: `basic` → username/password = client id/secret; `client_credentials` →
//!   username = client id, password = the current access token, fetched (blocking, off the
//!   runtime) before each connection attempt. MQTT 3.1.1 cannot re-authenticate a live
//!   connection, so the agent reconnects shortly before the token expires.
//! * TLS (`mqtts://`) with rustls and the ring provider passed explicitly (the same one
//!   ureq uses); plain `mqtt://` only with `allow_plain_mqtt = true`.
//!
//! Tasks: [`net`] owns the event loop (never cancelled mid-write), [`session`] owns the
//! books (window of in-flight publishes, orders); the store is called in `spawn_blocking`.

pub mod net;
pub mod options;
pub mod session;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use labagent_config as cfg;
use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::channel::{ChannelCtx, Hooks, OrderReport};
use crate::store::{NewOrder, Store};
use crate::uplink::auth::Authenticator;
use crate::uplink::http::HttpClient;
use crate::uplink::tls::TlsError;
use crate::uplink::{AuthMethod, AuthSettings, Queue, SystemClock, TokenCache, UplinkSettings};
pub use options::{parse_url, BrokerUrl, Login};
pub use session::envelope;
pub use status::MqttStatus;

/// MQTT's own limit on a packet (remaining length < 256 MiB).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// Why the MQTT uplink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("uplink.mqtt.url {0:?} is not an mqtt:// or mqtts:// URL with a host")]
    BadUrl(String),
    #[error(
        "uplink.mqtt.url {0:?} is plain mqtt: refused unless uplink.mqtt.allow_plain_mqtt = true"
    )]
    PlainMqtt(String),
    #[error("uplink TLS settings: {0}")]
    Tls(#[from] TlsError),
    #[error("uplink.auth: {0}")]
    Auth(&'static str),
    #[error("uplink.kind = \"mqtt\" needs an [uplink.mqtt] section")]
    NoSection,
}

/// `[uplink.mqtt]` and the parts of `[uplink]` the MQTT uplink uses.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub url: String,
    pub allow_plain: bool,
    /// The MQTT client identifier (stable: the session is persistent).
    pub client_id: String,
    pub topic_prefix: String,
    pub agent_id: String,
    /// Subscribe to the orders of `channels`.
    pub orders: bool,
    pub channels: Vec<String>,
    /// Channels whose protocol carries no orders (`raw`): an order for one is acknowledged
    /// and reported `failed` at once, not kept in an outbox nobody sends from.
    pub no_orders: Vec<String>,
    /// Connect timeout and keep-alive.
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Largest MQTT packet, both ways.
    pub max_packet: usize,
    /// QoS 1 publishes in flight at most.
    pub window: u16,
    /// For the token endpoint (`client_credentials`): `uplink.allow_plain_http`.
    pub allow_plain_http: bool,
}

impl MqttSettings {
    /// Defaults for everything but the broker, the agent and the channels.
    pub fn new(url: impl Into<String>, agent_id: impl Into<String>, channels: Vec<String>) -> Self {
        let agent_id = agent_id.into();
        MqttSettings {
            url: url.into(),
            allow_plain: false,
            client_id: agent_id.clone(),
            topic_prefix: "labagent".into(),
            agent_id,
            orders: false,
            channels,
            no_orders: Vec::new(),
            timeout: Duration::from_secs(30),
            ca_file: None,
            client_cert: None,
            client_key: None,
            max_packet: packet_limit(4 << 20),
            window: 100,
            allow_plain_http: false,
        }
    }

    /// From the validated config; `None` when `kind` is not mqtt.
    pub fn from_config(c: &cfg::Config) -> Option<Self> {
        let u = &c.uplink;
        let m = u.mqtt.as_ref()?;
        let max_message = c
            .channels
            .iter()
            .map(|ch| match &ch.settings {
                cfg::ProtocolSettings::Astm(a) => a.max_message,
                cfg::ProtocolSettings::Hl7(h) => h.max_message,
                cfg::ProtocolSettings::Raw(r) => r.max_message,
            })
            .max()
            .unwrap_or(4 << 20);
        Some(MqttSettings {
            url: m.url.clone(),
            allow_plain: m.allow_plain_mqtt,
            client_id: m.client_id.clone(),
            topic_prefix: m.topic_prefix.clone(),
            agent_id: c.agent.id.clone(),
            orders: m.orders,
            channels: c.channels.iter().map(|ch| ch.name.clone()).collect(),
            no_orders: c
                .channels
                .iter()
                .filter(|ch| matches!(ch.settings, cfg::ProtocolSettings::Raw(_)))
                .map(|ch| ch.name.clone())
                .collect(),
            timeout: u.timeout,
            ca_file: u.ca_file.clone(),
            client_cert: u.client_cert.clone(),
            client_key: u.client_key.clone(),
            max_packet: packet_limit(max_message),
            window: 100,
            allow_plain_http: u.allow_plain_http,
        })
    }
}

/// A packet that fits a message of `max_message` bytes as a JSON envelope: text escaped
/// in JSON takes up to 6 bytes per byte (`\u0001`); plus headers and meta.
pub fn packet_limit(max_message: u64) -> usize {
    let m = usize::try_from(max_message).unwrap_or(usize::MAX);
    m.saturating_mul(6)
        .saturating_add(64 * 1024)
        .min(MQTT_MAX_PACKET)
}

/// Where orders go: the store's outbox and the channel that sends them.
pub trait OrderSink: Send + Sync {
    /// Durable on `Ok`; `Ok(false)`: this order id was seen before. Blocking.
    fn put(&self, order: NewOrder) -> Result<bool, String>;
    /// Wakes the channel's driver to look at its outbox.
    fn notify(&self, channel: &str);
}

/// The store's outbox and the channels' order wake-ups.
pub struct StoreOrders {
    pub store: Store,
    pub channels: HashMap<String, Arc<ChannelCtx>>,
}

impl OrderSink for StoreOrders {
    fn put(&self, order: NewOrder) -> Result<bool, String> {
        // Specimen ids not given are read from the text as the channel's protocol.
        match self.channels.get(&order.channel) {
            Some(c) => self.store.put_order_for(order, c.config.protocol().into()),
            None => self.store.put_order(order),
        }
        .map_err(|e| e.to_string())
    }
    fn notify(&self, channel: &str) {
        if let Some(c) = self.channels.get(channel) {
            c.orders.notify_one();
        }
    }
}

/// The login for `auth` (a token endpoint client for `client_credentials`).
pub fn login(
    s: &MqttSettings,
    auth: AuthSettings,
    cache: Arc<dyn TokenCache>,
) -> Result<Login, MqttError> {
    if auth.method != AuthMethod::None && auth.secret.is_none() {
        return Err(MqttError::Auth("no client secret"));
    }
    Ok(match auth.method {
        AuthMethod::None => Login::None,
        AuthMethod::Basic => Login::Basic {
            user: auth.client_id.clone(),
            secret: auth
                .secret
                .clone()
                .unwrap_or_else(|| crate::uplink::Secret::new("")),
        },
        AuthMethod::ClientCredentials => {
            if !(auth.token_url.starts_with("https://")
                || (s.allow_plain_http && auth.token_url.starts_with("http://")))
            {
                return Err(MqttError::Auth(
                    "token_url must be https:// (or http:// with allow_plain_http = true)",
                ));
            }
            let mut hs = UplinkSettings::new(auth.token_url.clone(), s.agent_id.clone());
            hs.timeout = s.timeout;
            hs.ca_file = s.ca_file.clone();
            hs.client_cert = s.client_cert.clone();
            hs.client_key = s.client_key.clone();
            hs.allow_plain_http = s.allow_plain_http;
            if auth.token_url.starts_with("https://") {
                crate::uplink::tls::require_roots(hs.ca_file.as_deref())?;
            }
            let http = HttpClient::new(&hs)?;
            let user = auth.client_id.clone();
            let secret = auth.secret.clone();
            Login::Token {
                user,
                secret,
                auth: Arc::new(Authenticator::new(auth, http, cache, SystemClock::new())),
            }
        }
    })
}

/// A running MQTT uplink.
pub struct MqttHandle {
    status: watch::Receiver<MqttStatus>,
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    reports: mpsc::UnboundedSender<OrderReport>,
    query_tx: mpsc::UnboundedSender<QueryJob>,
    deadlines: crate::uplink::query::Deadlines,
    session: JoinHandle<()>,
    net: JoinHandle<()>,
}

impl MqttHandle {
    pub fn status(&self) -> watch::Receiver<MqttStatus> {
        self.status.clone()
    }

    /// New messages are in the inbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes an order's fate.
    pub fn report(&self, r: OrderReport) {
        let _ = self.reports.send(r);
    }

    /// The channel hooks that wake this uplink and route order reports to it.
    pub fn hooks(&self) -> Hooks {
        hooks(
            self.wake.clone(),
            self.reports.clone(),
            &self.query_tx,
            &self.deadlines,
        )
    }

    /// Lets what is in flight be acknowledged (briefly), confirms it, disconnects.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.session.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.net).await;
    }
}

/// A host query for the session to publish; its answer goes to `slot`.
pub struct QueryJob {
    pub q: crate::query::QueryRequest,
    pub slot: crate::uplink::query::Slot,
}

/// The session's host-query plumbing: jobs in, and the deadline timer.
struct QueryPipe {
    tx: mpsc::UnboundedSender<QueryJob>,
    rx: mpsc::UnboundedReceiver<QueryJob>,
    deadlines: crate::uplink::query::Deadlines,
}

impl QueryPipe {
    fn new() -> QueryPipe {
        let (tx, rx) = mpsc::unbounded_channel();
        QueryPipe {
            tx,
            rx,
            deadlines: crate::uplink::query::Deadlines::start("mqtt-query-timer"),
        }
    }
}

fn hooks(
    wake: Arc<Notify>,
    reports: mpsc::UnboundedSender<OrderReport>,
    queries: &mpsc::UnboundedSender<QueryJob>,
    deadlines: &crate::uplink::query::Deadlines,
) -> Hooks {
    let tx = queries.clone();
    let deadlines = deadlines.clone();
    Hooks {
        stored: Arc::new(move || wake.notify_one()),
        order: Arc::new(move |r| {
            let _ = reports.send(r);
        }),
        // Published to {prefix}/{agent}/{channel}/queries; `None` at the deadline unless
        // the answer came on .../answers/{id} first (see `session`).
        query: Arc::new(move |q, deadline| {
            let (slot, rx) = crate::uplink::query::slot();
            if deadline <= std::time::Instant::now() {
                crate::uplink::query::settle(&slot, None);
                return rx;
            }
            deadlines.arm(deadline, slot.clone());
            if let Err(e) = tx.send(QueryJob { q, slot }) {
                crate::uplink::query::settle(&e.0.slot, None);
            }
            rx
        }),
    }
}

/// Starts the uplink (inside tokio). `orders` receives orders when `settings.orders`.
pub fn spawn(
    settings: MqttSettings,
    login: Login,
    queue: Arc<dyn Queue>,
    orders: Option<Arc<dyn OrderSink>>,
) -> Result<MqttHandle, MqttError> {
    let wake = Arc::new(Notify::new());
    let (rtx, rrx) = mpsc::unbounded_channel();
    let opts = options::mqtt_options(&settings)?;
    Ok(spawn_with(
        opts,
        settings,
        login,
        queue,
        orders,
        wake,
        rtx,
        rrx,
        QueryPipe::new(),
        None,
    ))
}

#[allow(clippy::too_many_arguments)]
fn spawn_with(
    opts: rumqttc::MqttOptions,
    settings: MqttSettings,
    login: Login,
    queue: Arc<dyn Queue>,
    orders: Option<Arc<dyn OrderSink>>,
    wake: Arc<Notify>,
    rtx: mpsc::UnboundedSender<OrderReport>,
    rrx: mpsc::UnboundedReceiver<OrderReport>,
    queries: QueryPipe,
    remote: Option<Arc<dyn crate::remote::port::CommandPort>>,
) -> MqttHandle {
    let window = settings.window;
    let cap = opts.request_channel_capacity();
    let (client, el) = AsyncClient::new(opts, cap);
    let (status_tx, status_rx) = watch::channel(MqttStatus::new(login.mode()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (net_stop_tx, net_stop_rx) = watch::channel(false);
    let (ntx, nrx) = mpsc::unbounded_channel();
    let net = net::Net {
        el,
        login: Arc::new(login),
        tx: ntx,
        stop: net_stop_rx,
        window,
    };
    let span = tracing::info_span!("uplink", kind = "mqtt");
    let net = tokio::spawn(tracing::Instrument::instrument(net.run(), span.clone()));
    tracing::info!(url = %settings.url, client_id = %settings.client_id, orders = settings.orders, "MQTT uplink starting");
    let remote = remote.map(|p| session::remote::RemoteMqtt::new(p, &settings));
    let mut session = session::Session::new(
        Arc::new(settings),
        client,
        queue,
        orders,
        nrx,
        net_stop_tx,
        wake.clone(),
        rrx,
        stop_rx,
        status_tx,
    )
    .with_queries(queries.rx, queries.deadlines.clone());
    session.remote = remote;
    let session = tokio::spawn(tracing::Instrument::instrument(session.run(), span));
    MqttHandle {
        status: status_rx,
        stop: stop_tx,
        wake,
        reports: rtx,
        query_tx: queries.tx,
        deadlines: queries.deadlines,
        session,
        net,
    }
}

/// The MQTT uplink of a config, built before the channels exist (their hooks point here)
/// and started once they do (orders are routed to them).
pub struct Pending {
    opts: rumqttc::MqttOptions,
    settings: MqttSettings,
    login: Login,
    queue: Arc<dyn Queue>,
    store: Store,
    wake: Arc<Notify>,
    rtx: mpsc::UnboundedSender<OrderReport>,
    rrx: mpsc::UnboundedReceiver<OrderReport>,
    queries: QueryPipe,
    remote: Option<Arc<dyn crate::remote::port::CommandPort>>,
}

/// Validates the MQTT settings of `config` and returns the channel hooks plus the uplink
/// to [`Pending::start`] once the channels exist.
pub fn prepare(
    config: &cfg::Config,
    auth: AuthSettings,
    queue: Arc<dyn Queue>,
    cache: Arc<dyn TokenCache>,
    store: Store,
) -> Result<(Hooks, Pending), MqttError> {
    let settings = MqttSettings::from_config(config).ok_or(MqttError::NoSection)?;
    let opts = options::mqtt_options(&settings)?;
    let login = login(&settings, auth, cache)?;
    let wake = Arc::new(Notify::new());
    let (rtx, rrx) = mpsc::unbounded_channel();
    let queries = QueryPipe::new();
    let h = hooks(wake.clone(), rtx.clone(), &queries.tx, &queries.deadlines);
    Ok((
        h,
        Pending {
            opts,
            settings,
            login,
            queue,
            store,
            wake,
            rtx,
            rrx,
            queries,
            remote: None,
        },
    ))
}

impl Pending {
    /// Fleet management on this connection (`session::remote`): presence with a Last
    /// Will, commands in, results out.
    pub fn set_remote(&mut self, port: Arc<dyn crate::remote::port::CommandPort>) {
        self.opts.set_last_will(rumqttc::LastWill::new(
            session::remote::status_topic(&self.settings),
            session::remote::OFFLINE,
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        self.remote = Some(port);
    }

    /// Starts the uplink (inside tokio), routing orders to `channels`.
    pub fn start(self, channels: &[Arc<ChannelCtx>]) -> MqttHandle {
        let orders: Option<Arc<dyn OrderSink>> = self.settings.orders.then(|| {
            Arc::new(StoreOrders {
                store: self.store.clone(),
                channels: channels
                    .iter()
                    .map(|c| (c.name().to_string(), c.clone()))
                    .collect(),
            }) as Arc<dyn OrderSink>
        });
        spawn_with(
            self.opts,
            self.settings,
            self.login,
            self.queue,
            orders,
            self.wake,
            self.rtx,
            self.rrx,
            self.queries,
            self.remote,
        )
    }
}
