//! `labagent queue`: look into the store and act on it. sled allows one process per
//! database, so the request goes to the running agent over its status socket
//! (`queue <json>`), and the CLI opens the store itself only when no agent answers. Both
//! paths run [`execute`], so they behave the same.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{MessageInfo, State, Store};

/// One `queue` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRequest {
    List {
        channel: Option<String>,
        state: Option<State>,
        limit: usize,
    },
    Show {
        id: String,
    },
    Retry {
        id: String,
    },
    RetryAll {
        state: State,
    },
    PurgeDelivered,
    Export {
        since_unix: u64,
    },
    /// The order cache: kept orders, oldest first.
    Orders {
        channel: Option<String>,
        specimen: Option<String>,
        limit: usize,
    },
}

/// One order of `queue orders`: id, channel, state, when stored, specimens, attempts,
/// the detail of its outcome.
fn order_line(o: &crate::store::Order) -> String {
    let state = o.state.report_status().unwrap_or("pending (cached)");
    let stored = o
        .stored_at
        .map(|t| ts(UNIX_EPOCH + Duration::from_secs(t)))
        .unwrap_or_else(|| "-".into());
    let specimens = if o.specimens.is_empty() {
        "(none: never answers a query)".to_string()
    } else {
        o.specimens.join(",")
    };
    let mut s = format!(
        "{}  {}  {state}  stored {stored}  specimens {specimens}  attempts {}",
        o.id, o.channel, o.attempts
    );
    if let Some(d) = &o.detail {
        s.push_str(&format!("  ({d})"));
    }
    s
}

/// Seconds-precision UTC time for listings (the uplink's RFC 3339 form, milliseconds cut).
fn ts(t: SystemTime) -> String {
    let full = crate::calendar::rfc3339(t);
    format!("{}Z", &full[..19])
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Delivered => "delivered",
        State::Rejected => "rejected",
        State::Incomplete => "incomplete",
    }
}

fn line(i: &MessageInfo) -> String {
    format!(
        "{}  {:<16} {:<5} {:<10} {:>8} B  {}{}{}",
        i.id,
        i.channel,
        i.protocol,
        state_name(i.state),
        i.len,
        ts(i.received_at),
        match i.clock_synced {
            Some(true) => "",
            Some(false) => " (clock unsynced)",
            None => " (clock unknown)",
        },
        i.reason
            .as_ref()
            .map(|r| format!("  reason: {r}"))
            .unwrap_or_default()
    )
}

/// Message bytes for a terminal: one record per line, control bytes named.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    for part in bytes.split_inclusive(|b| *b == b'\r') {
        let text = String::from_utf8_lossy(part);
        for ch in text.chars() {
            match ch {
                '\r' => out.push_str("<CR>\n"),
                '\n' => out.push_str("<LF>"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&crate::text::render_bytes(&[c as u8]))
                }
                c => out.push(c),
            }
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Runs a request against the store; the text is what the CLI prints.
pub fn execute(store: &Store, req: &QueueRequest) -> Result<String, String> {
    let e = |e: crate::store::StoreError| e.to_string();
    match req {
        QueueRequest::List {
            channel,
            state,
            limit,
        } => {
            let items = store.list(channel.as_deref(), *state, *limit).map_err(e)?;
            let mut s = String::new();
            for i in &items {
                s.push_str(&line(i));
                s.push('\n');
            }
            if items.is_empty() {
                s.push_str("(no messages)\n");
            } else if items.len() == *limit {
                s.push_str(&format!("(first {limit}; --limit N for more)\n"));
            }
            Ok(s)
        }
        QueueRequest::Show { id } => {
            let id = id.parse().map_err(e)?;
            let m = store
                .get(id)
                .map_err(e)?
                .ok_or(format!("no message {id}"))?;
            let mut s = line(&m.info);
            s.push('\n');
            s.push_str(&format!(
                "sha256 {}\nmeta {}\n",
                m.info.sha256,
                serde_json::to_string(&m.info.meta).unwrap_or_default()
            ));
            if let Some(d) = m.info.delivered_at {
                s.push_str(&format!("delivered at {}\n", ts(d)));
            }
            s.push_str("---\n");
            s.push_str(&printable(&m.bytes));
            Ok(s)
        }
        QueueRequest::Retry { id } => {
            let id = id.parse().map_err(e)?;
            store.retry(id).map_err(e)?;
            Ok(format!("{id} queued for upload again\n"))
        }
        QueueRequest::RetryAll { state } => {
            let n = store.retry_all(*state).map_err(e)?;
            Ok(format!(
                "{n} {} message(s) queued for upload again\n",
                state_name(*state)
            ))
        }
        QueueRequest::PurgeDelivered => {
            let n = store.purge_delivered().map_err(e)?;
            Ok(format!("{n} delivered message(s) removed\n"))
        }
        QueueRequest::Orders {
            channel,
            specimen,
            limit,
        } => {
            let orders = store
                .list_orders(channel.as_deref(), specimen.as_deref(), *limit)
                .map_err(e)?;
            let mut s = String::new();
            for o in &orders {
                s.push_str(&order_line(o));
                s.push('\n');
            }
            if orders.is_empty() {
                s.push_str("(no orders)\n");
            } else if orders.len() == *limit {
                s.push_str(&format!("(first {limit}; --limit N for more)\n"));
            }
            Ok(s)
        }
        QueueRequest::Export { since_unix } => {
            let mut out = Vec::new();
            store
                .export(UNIX_EPOCH + Duration::from_secs(*since_unix), &mut out)
                .map_err(e)?;
            let _ = out.flush();
            String::from_utf8(out).map_err(|x| x.to_string())
        }
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    #[test]
    fn orders_are_listed_by_channel_and_specimen() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(
            d.path(),
            crate::store::StoreOptions {
                min_free: 0,
                ..Default::default()
            },
        )
        .unwrap();
        for (id, ch, sp) in [("o1", "a", "S1"), ("o2", "b", "S2"), ("o3", "a", "S2")] {
            store
                .put_order(crate::store::NewOrder {
                    id: id.into(),
                    channel: ch.into(),
                    text: format!("O|1|{sp}"),
                    specimens: Vec::new(),
                })
                .unwrap();
        }
        store
            .mark_order("o3", crate::store::OrderOutcome::Delivered, Some("sent"))
            .unwrap();
        let list = |channel: Option<&str>, specimen: Option<&str>, limit| {
            execute(
                &store,
                &QueueRequest::Orders {
                    channel: channel.map(Into::into),
                    specimen: specimen.map(Into::into),
                    limit,
                },
            )
            .unwrap()
        };
        let all = list(None, None, 100);
        assert_eq!(all.lines().count(), 3, "{all}");
        assert!(
            all.lines()
                .next()
                .unwrap()
                .starts_with("o1  a  pending (cached)  stored "),
            "{all}"
        );
        assert!(all.contains("specimens S1  attempts 0"), "{all}");
        assert!(
            all.contains("o3  a  delivered") && all.contains("(sent)"),
            "{all}"
        );
        let s2 = list(None, Some("S2"), 100);
        assert_eq!(
            s2.lines()
                .map(|l| l.split(' ').next().unwrap())
                .collect::<Vec<_>>(),
            ["o2", "o3"]
        );
        assert_eq!(list(Some("b"), None, 100).lines().count(), 1);
        assert!(list(None, None, 1).contains("(first 1; --limit N for more)"));
        assert_eq!(list(Some("c"), None, 100), "(no orders)\n");
        // Through the socket the request travels as JSON.
        let req = QueueRequest::Orders {
            channel: None,
            specimen: Some("S1".into()),
            limit: 5,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<QueueRequest>(&json).unwrap(), req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(ts(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            ts(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }

    #[test]
    fn printable_records() {
        assert_eq!(printable(b"H|\\^&\rL|1|N\r"), "H|\\^&<CR>\nL|1|N<CR>\n");
        assert_eq!(printable(b"\x0bMSH"), "<VT>MSH\n");
    }
}
