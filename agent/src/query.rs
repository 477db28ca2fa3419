//! Host queries: an instrument asks which tests to run for a specimen, and waits a few
//! seconds for the answer. The hal session reads the specimen ids and sends the answer;
//! this module says where the answer comes from.

use std::sync::Arc;
use std::time::Duration;

use labagent_config::OrderMode;
use tokio::sync::oneshot;

use crate::channel::{ChannelCtx, OrderReport, QuerySource};
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

/// A query's answer, and where it came from.
#[derive(Debug)]
pub struct Answer {
    /// The answer in the instrument's protocol; `None`: nothing known.
    pub text: Option<String>,
    pub source: QuerySource,
}

/// Finds the answer to a host query within `timeout` (the channel's `query_timeout`):
/// the upstream first, with three quarters of it; then, for a channel in `orders =
/// "query"` mode, the order cache; else nothing known. Runs on a task of its own; the
/// receiver gets the answer (or is dropped if the task failed: nothing known).
pub fn resolve(
    ctx: Arc<ChannelCtx>,
    req: QueryRequest,
    timeout: Duration,
) -> oneshot::Receiver<Answer> {
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
        let answer = match from_upstream {
            Some(text) => Answer {
                text: Some(text),
                source: QuerySource::Upstream,
            },
            // Claimed orders must still go out: the cache is not tried this late.
            None if ctx.config.orders == OrderMode::Query && start.elapsed() < timeout * 7 / 8 => {
                let text = from_cache(&ctx, &req).await;
                let source = match text {
                    Some(_) => QuerySource::Cache,
                    None => QuerySource::None,
                };
                Answer { text, source }
            }
            None => Answer {
                text: None,
                source: QuerySource::None,
            },
        };
        let _ = tx.send(answer);
    });
    rx
}

/// The answer from the order cache: the pending orders naming the query's specimens,
/// claimed (`answered-query`) in one durable write, so that no order is sent twice.
async fn from_cache(ctx: &ChannelCtx, req: &QueryRequest) -> Option<String> {
    let (channel, specimens) = (req.channel.clone(), req.specimens.clone());
    let found = ctx
        .store
        .call(move |s| s.orders_for_specimens(&channel, &specimens))
        .await;
    let found = match found {
        Ok(f) if f.is_empty() => return None,
        Ok(f) => f,
        Err(e) => {
            tracing::error!(channel = %ctx.name(), error = %e, "cannot read the order cache; the query is answered \"nothing known\"");
            return None;
        }
    };
    let ids: Vec<String> = found.iter().map(|o| o.id.clone()).collect();
    let taken = ctx
        .store
        .call(move |s| s.answer_orders(&ids, ANSWERED))
        .await;
    let taken = match taken {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(channel = %ctx.name(), error = %e, "cannot claim cached orders; the query is answered \"nothing known\"");
            return None;
        }
    };
    let used: Vec<&Order> = found.iter().filter(|o| taken.contains(&o.id)).collect();
    for o in &used {
        tracing::info!(channel = %ctx.name(), order = %o.id, "order sent in answer to a host query");
        ctx.report_order(OrderReport {
            channel: ctx.name().to_string(),
            id: o.id.clone(),
            state: "answered-query".into(),
            detail: ANSWERED.into(),
        });
    }
    let texts: Vec<&str> = used.iter().map(|o| o.text.as_str()).collect();
    (!texts.is_empty()).then(|| compose(req.protocol, &texts))
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
    fn astm_orders_make_one_message_and_hl7_orders_follow_each_other() {
        let one = "H|\\^&|||LIS\r2P|1\r3O|1|S1||^^^GLU\rL|1|N\r";
        assert_eq!(
            compose(Protocol::Astm, &[one]),
            "H|\\^&|||LIS\rP|1\rO|1|S1||^^^GLU\rL|1|N\r"
        );
        let two = "H|\\^&|||OTHER\nP|1\nO|1|S2||^^^NA\nL|1|F\n";
        assert_eq!(
            compose(Protocol::Astm, &[one, two]),
            "H|\\^&|||LIS\rP|1\rO|1|S1||^^^GLU\rP|1\rO|1|S2||^^^NA\rL|1|N\r"
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
