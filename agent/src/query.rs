//! Host queries: an instrument asks which tests to run for a specimen, and waits a few
//! seconds for the answer. The hal session reads the specimen ids and sends the answer;
//! this module says where the answer comes from.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use labagent_config::OrderMode;
use tokio::sync::oneshot;

use crate::channel::ChannelCtx;
use crate::store::{MessageId, Order, Protocol, Store};

/// A host query for the upstream (`[uplink] query_url`, or the MQTT queries topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    /// Unique per query (`<channel>-<store message id>`).
    pub id: String,
    pub channel: String,
    pub protocol: crate::store::Protocol,
    /// The query as received, decoded (CR-separated records or segments).
    pub text: String,
    pub specimens: Vec<String>,
}

/// Asks the upstream; the receiver gets the answer in the instrument's protocol (ASTM
/// records H…L, HL7 messages each starting with MSH), or `None`: nothing known, no
/// upstream, or not before the deadline.
pub type QueryHook = Arc<
    dyn Fn(QueryRequest, std::time::Instant) -> tokio::sync::oneshot::Receiver<Option<String>>
        + Send
        + Sync,
>;

/// A query hook with no upstream: `None` at once.
pub fn no_query_upstream() -> QueryHook {
    Arc::new(|_, _| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(None);
        rx
    })
}

impl QueryRequest {
    /// The request for a session's query: its specimens, and the text of the query
    /// messages among `recent` (stored since the last query); its id is the channel's name
    /// and the first such message's id (else `fallback`, unique within the session).
    pub fn new(
        ctx: &ChannelCtx,
        ids: &labagent_hal::query::Specimens,
        recent: &[MessageId],
        fallback: u64,
    ) -> QueryRequest {
        let specimens = specimen_ids(ids);
        let (text, id) = query_text(&ctx.store, recent);
        let id = id.map_or_else(|| fallback.to_string(), |i| i.to_string());
        tracing::info!(channel = %ctx.name(), specimens = specimens.len(), "host query");
        QueryRequest {
            id: format!("{}-{id}", ctx.name()),
            channel: ctx.name().to_string(),
            protocol: ctx.config.protocol().into(),
            text,
            specimens,
        }
    }
}

/// The stored messages among `recent` that are host queries, decoded and joined.
pub fn query_text(store: &Store, recent: &[MessageId]) -> (String, Option<MessageId>) {
    let mut text = String::new();
    let mut first = None;
    for id in recent {
        let Ok(Some(m)) = store.get(*id) else {
            continue;
        };
        let meta = &m.info.meta;
        let is_query = meta["queries"].as_u64().is_some_and(|n| n > 0)
            || meta["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("QRY^Q02") || t.starts_with("QBP^Q11"));
        if is_query {
            let label = meta["encoding"].as_str().unwrap_or("utf-8");
            text.push_str(&crate::text::decode(&m.bytes, label));
            first.get_or_insert(*id);
        }
    }
    (text, first)
}

/// Where a host query's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuerySource {
    /// `[uplink] query_url` or the MQTT answers topic.
    Upstream,
    /// The order cache.
    Cache,
    /// Nothing known: "no information" was sent.
    None,
}

impl QuerySource {
    pub const ALL: [QuerySource; 3] = [Self::Upstream, Self::Cache, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Cache => "cache",
            Self::None => "none",
        }
    }
}

/// Upper bounds (seconds) of the query-latency histogram's buckets; the queries wait at
/// most `query_timeout` (< 60 s).
pub const QUERY_LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Host queries of one channel, in a [`ChannelSnapshot`](crate::channel::ChannelSnapshot).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QuerySnapshot {
    pub upstream: u64,
    pub cache: u64,
    pub none: u64,
    /// Unix milliseconds of the last answer, None before the first.
    pub last_answer_ms: Option<u64>,
    /// Cumulative counts per bucket of [`QUERY_LATENCY_BUCKETS`], then +Inf (= the total).
    pub latency_buckets: Vec<u64>,
    pub latency_sum_seconds: f64,
}

impl QuerySnapshot {
    pub fn total(&self) -> u64 {
        self.upstream + self.cache + self.none
    }

    pub fn count(&self, source: QuerySource) -> u64 {
        match source {
            QuerySource::Upstream => self.upstream,
            QuerySource::Cache => self.cache,
            QuerySource::None => self.none,
        }
    }
}

/// Host queries of one channel: answers by source, the last answer's time, a latency
/// histogram (lock-free; in [`crate::channel::ChannelCounters`]).
#[derive(Debug, Default)]
pub struct QueryCounters {
    /// By where the answer came from ([`QuerySource`] order).
    by_source: [AtomicU64; 3],
    /// Unix milliseconds of the last answer (0: none yet).
    last_ms: AtomicU64,
    /// Counts per bucket of [`QUERY_LATENCY_BUCKETS`] (the last one is +Inf).
    latency: [AtomicU64; QUERY_LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl QueryCounters {
    /// An answer from `source`, `latency` after the query was complete, at `now_ms`.
    pub fn answered(&self, source: QuerySource, latency: Duration, now_ms: u64) {
        self.by_source[source as usize].fetch_add(1, Relaxed);
        self.last_ms.store(now_ms, Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = QUERY_LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(QUERY_LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> QuerySnapshot {
        let last = self.last_ms.load(Relaxed);
        let mut total = 0;
        let latency_buckets = self
            .latency
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect();
        let n = |s: QuerySource| self.by_source[s as usize].load(Relaxed);
        QuerySnapshot {
            upstream: n(QuerySource::Upstream),
            cache: n(QuerySource::Cache),
            none: n(QuerySource::None),
            last_answer_ms: (last != 0).then_some(last),
            latency_buckets,
            latency_sum_seconds: self.latency_sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// What [`resolve`] found for a query.
#[derive(Debug)]
pub enum Found {
    /// The upstream's answer, in the instrument's protocol.
    Upstream(String),
    /// Pending cached orders naming the query's specimens, oldest first: not yet claimed
    /// ([`answer`] claims them when the session can take the answer at once).
    Cache(Vec<Order>),
    Nothing,
}

/// Looks for the answer to a host query within `timeout` (the channel's `query_timeout`):
/// the upstream first, with three quarters of it; then, for a channel in `orders =
/// "query"` mode, the order cache (read only); else nothing. Runs on a task of its own;
/// the receiver gets what was found (or is dropped if the task failed: nothing).
pub fn resolve(
    ctx: Arc<ChannelCtx>,
    req: QueryRequest,
    timeout: Duration,
) -> oneshot::Receiver<Found> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let upstream_budget = timeout * 3 / 4;
        let asked = ctx.ask_upstream(req.clone(), std::time::Instant::now() + upstream_budget);
        // The hook answers by its deadline; this bound only guards against one that does not.
        let from_upstream = tokio::time::timeout(upstream_budget, asked)
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let found = match from_upstream {
            Some(text) => Found::Upstream(text),
            None if ctx.config.orders == OrderMode::Query && start.elapsed() < timeout * 7 / 8 => {
                let (channel, specimens) = (req.channel.clone(), req.specimens.clone());
                let orders = ctx
                    .store
                    .call(move |s| s.orders_for_specimens(&channel, &specimens))
                    .await;
                match orders {
                    Ok(o) if o.is_empty() => Found::Nothing,
                    Ok(o) => Found::Cache(o),
                    Err(e) => {
                        tracing::error!(channel = %ctx.name(), error = %e, "cannot read the order cache; the query is answered \"nothing known\"");
                        Found::Nothing
                    }
                }
            }
            None => Found::Nothing,
        };
        let _ = tx.send(found);
    });
    rx
}

/// The answer text for what was found, and where it came from. Cached orders are claimed
/// here (`answered-query`, one durable write, so that no order is sent twice) and the
/// answer is made of those actually taken: call it only while the session still waits for
/// this very query, and hand the text to the session at once.
pub async fn answer(ctx: &ChannelCtx, found: Found) -> (Option<String>, QuerySource) {
    let orders = match found {
        Found::Upstream(text) => return (Some(text), QuerySource::Upstream),
        Found::Nothing => return (None, QuerySource::None),
        Found::Cache(orders) => orders,
    };
    let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
    let taken = match crate::orders::claim(ctx, ids, ANSWERED).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(channel = %ctx.name(), error = %e, "cannot claim cached orders; the query is answered \"nothing known\"");
            return (None, QuerySource::None);
        }
    };
    let texts: Vec<&str> = orders
        .iter()
        .filter(|o| taken.contains(&o.id))
        .map(|o| o.text.as_str())
        .collect();
    if texts.is_empty() {
        return (None, QuerySource::None);
    }
    (
        Some(compose(ctx.config.protocol().into(), &texts)),
        QuerySource::Cache,
    )
}

/// The specimen ids of a session's query, as text.
pub fn specimen_ids(ids: &labagent_hal::query::Specimens) -> Vec<String> {
    ids.iter()
        .map(|i| String::from_utf8_lossy(i).into_owned())
        .collect()
}

/// Keeps `id` among the messages stored since the last query (at most the last 64: a
/// query is among the last messages before its transmission ended).
pub fn remember(recent: &mut Vec<MessageId>, id: MessageId) {
    if recent.len() >= 64 {
        recent.remove(0);
    }
    recent.push(id);
}

/// An order's report detail when it answered a query.
const ANSWERED: &str = "sent in answer to a host query";

/// One answer from the orders' texts. ASTM: the first order's H record, each order's
/// records between its H and L in turn, the first order's L (an order without H or L
/// gets `H|\^&` / `L|1|N`); a record that starts with a stray frame digit (`2P|`, as
/// some LIS write them) loses it. HL7: each order's message in turn. Line ends are CR.
pub fn compose(protocol: Protocol, orders: &[&str]) -> String {
    let astm = protocol == Protocol::Astm;
    let records = |t: &str| -> Vec<String> {
        t.split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .map(|l| if astm { strip_frame_digit(l) } else { l }.to_string())
            .collect()
    };
    let mut out = String::new();
    if !astm {
        for t in orders {
            for r in records(t) {
                out.push_str(&r);
                out.push('\r');
            }
        }
        return out;
    }
    let is = |r: &str, t: u8| r.as_bytes().first() == Some(&t);
    let (mut header, mut trailer) = (None, None);
    let mut body = Vec::new();
    for t in orders {
        for r in records(t) {
            if is(&r, b'H') {
                header.get_or_insert(r);
            } else if is(&r, b'L') {
                trailer.get_or_insert(r);
            } else {
                body.push(r);
            }
        }
    }
    // LIS2-A2 numbers P records within a message: several orders' P records are renumbered.
    let mut patients = 0;
    for r in body.iter_mut() {
        let d = r.chars().nth(1).filter(|c| !c.is_ascii_alphanumeric());
        if let (true, Some(d)) = (is(r, b'P'), d) {
            patients += 1;
            let mut f: Vec<&str> = r.split(d).collect();
            let n = patients.to_string();
            if f.len() > 1 {
                f[1] = &n;
            }
            *r = f.join(&d.to_string());
        }
    }
    for r in std::iter::once(header.unwrap_or_else(|| "H|\\^&".into()))
        .chain(body)
        .chain(std::iter::once(trailer.unwrap_or_else(|| "L|1|N".into())))
    {
        out.push_str(&r);
        out.push('\r');
    }
    out
}

/// `2P|1…` → `P|1…`: a frame number (0–7) left before a record type and its delimiter.
fn strip_frame_digit(r: &str) -> &str {
    let b = r.as_bytes();
    let stray = b.len() > 2
        && (b'0'..=b'7').contains(&b[0])
        && b[1].is_ascii_uppercase()
        && !b[2].is_ascii_alphanumeric();
    if stray {
        &r[1..]
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_are_counted_by_source_with_latency_buckets() {
        let c = QueryCounters::default();
        assert_eq!(c.snapshot().total(), 0);
        assert_eq!(c.snapshot().last_answer_ms, None);
        c.answered(QuerySource::Cache, Duration::from_millis(3), 1);
        c.answered(QuerySource::Upstream, Duration::from_millis(80), 2);
        c.answered(QuerySource::None, Duration::from_secs(90), 3);
        let q = c.snapshot();
        assert_eq!((q.upstream, q.cache, q.none), (1, 1, 1));
        assert_eq!(q.last_answer_ms, Some(3));
        assert_eq!(q.latency_buckets.len(), QUERY_LATENCY_BUCKETS.len() + 1);
        assert_eq!(q.latency_buckets[0], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(q.latency_buckets[4], 2, "80 ms is in the 100 ms bucket");
        assert_eq!(q.latency_buckets[QUERY_LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(*q.latency_buckets.last().unwrap(), 3, "+Inf holds all");
        assert!((q.latency_sum_seconds - 90.083).abs() < 1e-6);
    }

    #[test]
    fn astm_orders_make_one_message_and_hl7_orders_follow_each_other() {
        let one = "H|\\^&|||LIS\r2P|1\r3O|1|S1||^^^GLU\rL|1|N\r";
        assert_eq!(
            compose(Protocol::Astm, &[one]),
            "H|\\^&|||LIS\rP|1\rO|1|S1||^^^GLU\rL|1|N\r"
        );
        let two = "H|\\^&|||OTHER\nP|1\nO|1|S2||^^^NA\nL|1|F\n";
        assert_eq!(
            compose(Protocol::Astm, &[one, two]),
            "H|\\^&|||LIS\rP|1\rO|1|S1||^^^GLU\rP|2\rO|1|S2||^^^NA\rL|1|N\r",
            "one H, P records numbered in the answer, one L"
        );
        assert_eq!(
            compose(Protocol::Astm, &["O|1|S3"]),
            "H|\\^&\rO|1|S3\rL|1|N\r"
        );
        assert_eq!(
            compose(Protocol::Hl7, &["MSH|^~\\&|A\nORC|NW\n", "MSH|^~\\&|B\r"]),
            "MSH|^~\\&|A\rORC|NW\rMSH|^~\\&|B\r"
        );
    }
}
