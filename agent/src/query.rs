//! Host queries: an instrument asks which tests to run for a specimen, and waits a few
//! seconds for the answer. The hal session reads the specimen ids and sends the answer;
//! this module says where the answer comes from.

use std::sync::Arc;

use crate::store::{MessageId, Store};

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
