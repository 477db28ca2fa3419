//! Prometheus text exposition on `[agent] metrics` (off by default): `GET /metrics`
//! (any path answers the same) over plain HTTP/1.1, one response per connection.
//! Bind it to loopback or a management network: it names channels but carries no data.
//!
//! Conventions (checked by `promtool check metrics` in the suite): no state value in the
//! labels of a metric that also carries a measurement (a changing label starts a new series):
//! `*_up` says 1 or 0, and a separate state set (`*_state{state="…"}`, one series per
//! possible state, 1 for the current one) says which; latency buckets reach the configured
//! timeout; the usual `process_*` metrics and `labagent_build_info{version,target}`; an
//! unknown clock state has no sample rather than a guessed one.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::process::ProcessStats;
use super::status::{AgentStatus, Registry, PORT_STATES, UPLINK_STATES};

/// Serves metrics until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let Ok((mut s, _)) = conn else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let reg = registry.clone();
        tokio::spawn(async move {
            // Read the request head (bounded); the answer does not depend on it.
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = async {
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let Ok((status, process)) =
                tokio::task::spawn_blocking(move || (reg.snapshot(), super::process::read())).await
            else {
                return;
            };
            let body = render(&status, &process);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Escapes a label value (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A state as a label value: `waiting for device` → `waiting_for_device`.
fn state_value(s: &str) -> String {
    s.replace(' ', "_")
}

/// A bucket bound in seconds, as Prometheus clients print them (`0.005`, `30`).
fn seconds(ms: u64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}", ms as f64 / 1000.0)
    }
}

/// The exposition text.
pub fn render(s: &AgentStatus, p: &ProcessStats) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP labagent_{name} {help}");
        let _ = writeln!(o, "# TYPE labagent_{name} {kind}");
    };
    type Get = fn(&super::status::ChannelStatus) -> u64;
    let per_channel: [(&str, &str, &str, Get); 14] = [
        (
            "received_total",
            "counter",
            "Messages received from the instrument.",
            |c| c.counters.received,
        ),
        (
            "acknowledged_total",
            "counter",
            "Messages acknowledged to the instrument after they were durable.",
            |c| c.counters.acknowledged,
        ),
        (
            "refused_total",
            "counter",
            "Messages the store refused (answered NAK/AR/CE).",
            |c| c.counters.refused,
        ),
        ("stored_total", "counter", "New messages stored.", |c| {
            c.counters.stored
        }),
        (
            "stored_bytes_total",
            "counter",
            "Bytes of new messages stored.",
            |c| c.counters.stored_bytes,
        ),
        (
            "duplicates_total",
            "counter",
            "Messages equal to one already kept (acknowledged, stored once).",
            |c| c.counters.duplicates,
        ),
        (
            "incomplete_total",
            "counter",
            "Transmissions that ended before their end.",
            |c| c.counters.incomplete,
        ),
        (
            "rejected_total",
            "counter",
            "Input kept as rejected (not a valid message).",
            |c| c.counters.rejected,
        ),
        (
            "naks_total",
            "counter",
            "Frames answered negatively.",
            |c| c.counters.naks,
        ),
        (
            "backlog",
            "gauge",
            "Undelivered messages in the store.",
            |c| c.backlog,
        ),
        (
            "oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest undelivered message (0: none).",
            |c| c.oldest_pending_age_s.unwrap_or(0),
        ),
        (
            "connections",
            "gauge",
            "Connections open on the channel's port.",
            |c| c.connections as u64,
        ),
        (
            "connections_opened_total",
            "counter",
            "Connections handed to the driver (serial opens, TCP accepts or connects).",
            |c| c.port_opened,
        ),
        (
            "port_attempts_total",
            "counter",
            "Open/connect/bind attempts, successful or not (reconnects show here).",
            |c| c.port_attempts,
        ),
    ];
    for (name, kind, help, get) in per_channel {
        family(&mut o, &format!("channel_{name}"), kind, help);
        for c in &s.channels {
            let _ = writeln!(
                o,
                "labagent_channel_{name}{{channel=\"{}\",protocol=\"{}\"}} {}",
                label(&c.name),
                c.protocol,
                get(c)
            );
        }
    }
    family(
        &mut o,
        "channel_port_up",
        "gauge",
        "1 when the port is open or listening.",
    );
    for c in &s.channels {
        let up = u8::from(c.port == "open" || c.port == "listening");
        let _ = writeln!(
            o,
            "labagent_channel_port_up{{channel=\"{}\",protocol=\"{}\"}} {up}",
            label(&c.name),
            c.protocol
        );
    }
    family(
        &mut o,
        "channel_port_state",
        "gauge",
        "The port's state: 1 for the current one of starting, open, listening, waiting_for_device, reconnecting.",
    );
    for c in &s.channels {
        for st in PORT_STATES {
            let _ = writeln!(
                o,
                "labagent_channel_port_state{{channel=\"{}\",protocol=\"{}\",state=\"{}\"}} {}",
                label(&c.name),
                c.protocol,
                state_value(st),
                u8::from(c.port == st)
            );
        }
    }
    if let Some(u) = &s.uplink {
        let kind = &u.kind;
        family(
            &mut o,
            "uplink_delivered_total",
            "counter",
            "Messages confirmed upstream.",
        );
        let _ = writeln!(
            o,
            "labagent_uplink_delivered_total{{uplink=\"{kind}\"}} {}",
            u.delivered
        );
        family(
            &mut o,
            "uplink_rejected_total",
            "counter",
            "Messages the upstream refused (parked).",
        );
        let _ = writeln!(
            o,
            "labagent_uplink_rejected_total{{uplink=\"{kind}\"}} {}",
            u.rejected
        );
        family(
            &mut o,
            "uplink_up",
            "gauge",
            "1 when the uplink is delivering or idle.",
        );
        let _ = writeln!(
            o,
            "labagent_uplink_up{{uplink=\"{kind}\"}} {}",
            u8::from(u.state == "ok")
        );
        family(
            &mut o,
            "uplink_state",
            "gauge",
            "The uplink's state: 1 for the current one of starting, ok, backing_off, paused, credentials_problem, stopped.",
        );
        for st in UPLINK_STATES {
            let _ = writeln!(
                o,
                "labagent_uplink_state{{uplink=\"{kind}\",state=\"{}\"}} {}",
                state_value(st),
                u8::from(u.state == st)
            );
        }
        family(
            &mut o,
            "uplink_retries_total",
            "counter",
            "Waits after a failed upload attempt.",
        );
        let _ = writeln!(
            o,
            "labagent_uplink_retries_total{{uplink=\"{kind}\"}} {}",
            u.retries
        );
        family(
            &mut o,
            "uplink_token_requests_total",
            "counter",
            "Requests to the OAuth2 token endpoint.",
        );
        let _ = writeln!(
            o,
            "labagent_uplink_token_requests_total{{uplink=\"{kind}\"}} {}",
            u.token_requests
        );
        family(
            &mut o,
            "uplink_latency_seconds",
            "histogram",
            "Upload request latency (send to response); the last bucket is the configured timeout.",
        );
        let mut cum = 0;
        for (i, le) in u.latency_bounds_ms.iter().enumerate() {
            cum += u.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "labagent_uplink_latency_seconds_bucket{{uplink=\"{kind}\",le=\"{}\"}} {cum}",
                seconds(*le)
            );
        }
        let _ = writeln!(
            o,
            "labagent_uplink_latency_seconds_bucket{{uplink=\"{kind}\",le=\"+Inf\"}} {}",
            u.latency_count
        );
        let _ = writeln!(
            o,
            "labagent_uplink_latency_seconds_sum{{uplink=\"{kind}\"}} {}",
            u.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "labagent_uplink_latency_seconds_count{{uplink=\"{kind}\"}} {}",
            u.latency_count
        );
        if let Some(t) = u.token_expires_unix {
            family(
                &mut o,
                "uplink_token_expiry_timestamp_seconds",
                "gauge",
                "Expiry of the access token in use.",
            );
            let _ = writeln!(
                o,
                "labagent_uplink_token_expiry_timestamp_seconds{{uplink=\"{kind}\"}} {t}"
            );
        }
    }
    queries(&mut o, s);
    let st = &s.store;
    let store: [(&str, &str, &str, u64); 7] = [
        (
            "store_backlog",
            "gauge",
            "Undelivered messages, all channels.",
            st.backlog,
        ),
        (
            "store_backlog_bytes",
            "gauge",
            "Bytes of undelivered messages.",
            st.backlog_bytes,
        ),
        (
            "store_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest undelivered message (0: none).",
            st.oldest_pending_age_s.unwrap_or(0),
        ),
        (
            "store_kept_bytes",
            "gauge",
            "Quota charge of everything kept.",
            st.kept_bytes,
        ),
        (
            "store_disk_bytes",
            "gauge",
            "Bytes the store occupies on disk.",
            st.disk_bytes,
        ),
        (
            "store_syncs_total",
            "counter",
            "Store syncs (fsync/fdatasync rounds) since start.",
            st.syncs,
        ),
        (
            "store_dropped_undelivered_total",
            "counter",
            "Undelivered messages dropped by when_full = drop_oldest.",
            st.dropped_undelivered,
        ),
    ];
    for (name, kind, help, v) in store {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "labagent_{name} {v}");
    }
    // Unknown (the kernel's flag cannot be read): no sample, not a guess.
    if let Some(synced) = s.clock_synchronized {
        family(
            &mut o,
            "clock_synchronized",
            "gauge",
            "1 when the kernel considers the system clock synchronized.",
        );
        let _ = writeln!(o, "labagent_clock_synchronized {}", u8::from(synced));
    }
    family(
        &mut o,
        "build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    let _ = writeln!(
        o,
        "labagent_build_info{{version=\"{}\",target=\"{}\"}} 1",
        label(&s.version),
        label(env!("LABAGENT_TARGET"))
    );
    p.render(&mut o, s.started_unix);
    if let Some(r) = &s.remote {
        render_remote(&mut o, r);
    }
    o
}

/// Fleet management: commands by command and outcome; which config is in force.
fn render_remote(o: &mut String, r: &super::remote::RemoteView) {
    let _ = writeln!(
        o,
        "# HELP labagent_remote_commands_total Remote commands by command and outcome (ok, error, refused, repeated, rolled-back)."
    );
    let _ = writeln!(o, "# TYPE labagent_remote_commands_total counter");
    for (c, out, n) in &r.counts {
        let _ = writeln!(
            o,
            "labagent_remote_commands_total{{command=\"{c}\",outcome=\"{out}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP labagent_remote_config_pushed 1 while a pushed config (state_dir/remote/config.toml) is in force."
    );
    let _ = writeln!(o, "# TYPE labagent_remote_config_pushed gauge");
    let _ = writeln!(o, "labagent_remote_config_pushed {}", u8::from(r.pushed));
    let _ = writeln!(
        o,
        "# HELP labagent_remote_config_trial 1 while a pushed config is on trial."
    );
    let _ = writeln!(o, "# TYPE labagent_remote_config_trial gauge");
    let _ = writeln!(
        o,
        "labagent_remote_config_trial {}",
        u8::from(r.trial.is_some())
    );
}

/// Host queries per channel and source, their latency, the order feed, order reports.
fn queries(o: &mut String, s: &AgentStatus) {
    use crate::query::{QuerySource, QUERY_LATENCY_BUCKETS};
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP labagent_{name} {help}");
        let _ = writeln!(o, "# TYPE labagent_{name} {kind}");
    };
    let asking: Vec<_> = s.channels.iter().filter(|c| c.protocol != "raw").collect();
    family(
        o,
        "channel_queries_total",
        "counter",
        "Host queries answered, by where the answer came from (upstream, cache, none).",
    );
    for c in &asking {
        for src in QuerySource::ALL {
            let _ = writeln!(
                o,
                "labagent_channel_queries_total{{channel=\"{}\",source=\"{}\"}} {}",
                label(&c.name),
                src.as_str(),
                c.counters.queries.count(src)
            );
        }
    }
    family(
        o,
        "channel_query_latency_seconds",
        "histogram",
        "Time from the end of a host query to its answer being ready.",
    );
    for c in &asking {
        let q = &c.counters.queries;
        let name = label(&c.name);
        for (i, le) in QUERY_LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "labagent_channel_query_latency_seconds_bucket{{channel=\"{name}\",le=\"{le}\"}} {}",
                q.latency_buckets.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            o,
            "labagent_channel_query_latency_seconds_bucket{{channel=\"{name}\",le=\"+Inf\"}} {}",
            q.total()
        );
        let _ = writeln!(
            o,
            "labagent_channel_query_latency_seconds_sum{{channel=\"{name}\"}} {}",
            q.latency_sum_seconds
        );
        let _ = writeln!(
            o,
            "labagent_channel_query_latency_seconds_count{{channel=\"{name}\"}} {}",
            q.total()
        );
    }
    family(
        o,
        "order_reports_pending",
        "gauge",
        "Order reports waiting for the uplink.",
    );
    let _ = writeln!(
        o,
        "labagent_order_reports_pending {}",
        s.order_reports_pending
    );
    if let Some(f) = &s.feed {
        let feed = label(&f.name);
        family(o, "feed_polls_total", "counter", "Polls of the feed.");
        let _ = writeln!(
            o,
            "labagent_feed_polls_total{{feed=\"{feed}\"}} {}",
            f.polls
        );
        family(
            o,
            "feed_items_total",
            "counter",
            "Items taken from the feed (orders stored or kept as failed).",
        );
        let _ = writeln!(
            o,
            "labagent_feed_items_total{{feed=\"{feed}\"}} {}",
            f.items
        );
        family(
            o,
            "feed_up",
            "gauge",
            "1 unless the feed's last poll failed.",
        );
        let _ = writeln!(
            o,
            "labagent_feed_up{{feed=\"{feed}\"}} {}",
            u8::from(f.last_error.is_none())
        );
        if let Some(ms) = f.last_poll_ms {
            family(
                o,
                "feed_last_poll_timestamp_seconds",
                "gauge",
                "When the feed last answered.",
            );
            let _ = writeln!(
                o,
                "labagent_feed_last_poll_timestamp_seconds{{feed=\"{feed}\"}} {}",
                ms / 1000
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::status::{AgentStatus, StoreView, UplinkView};
    use super::*;

    fn status(clock: Option<bool>) -> AgentStatus {
        AgentStatus {
            agent: "a".into(),
            version: "0.1.0".into(),
            uptime_s: 1,
            started_unix: 1_795_877_987.0,
            clock_synchronized: clock,
            channels: vec![],
            uplink: Some(UplinkView {
                kind: "http".into(),
                target: "https://x".into(),
                state: "backing off".into(),
                reason: None,
                auth_mode: "none".into(),
                token_expires_unix: None,
                last_delivery_unix: None,
                delivered: 0,
                rejected: 0,
                retries: 3,
                token_requests: 0,
                latency_bounds_ms: crate::uplink::status::Latency::new(Duration::from_secs(30))
                    .bounds_ms,
                latency_buckets: vec![0; 14],
                latency_count: 0,
                latency_sum_us: 0,
                last_error: None,
            }),
            store: StoreView {
                backlog: 0,
                backlog_bytes: 0,
                oldest_pending_age_s: None,
                delivered_kept: 0,
                incomplete: 0,
                rejected: 0,
                kept_bytes: 0,
                dropped_undelivered: 0,
                disk_bytes: 0,
                syncs: 0,
                error: None,
            },
            remote: None,
            feed: None,
            order_reports_pending: 0,
        }
    }

    /// Unknown is not a guess: no sample at all; known states are 1 or 0.
    #[test]
    fn the_clock_metric_is_left_out_while_unknown() {
        let p = ProcessStats::default();
        let unknown = render(&status(None), &p);
        assert!(
            !unknown.contains("labagent_clock_synchronized"),
            "{unknown}"
        );
        assert!(render(&status(Some(false)), &p).contains("labagent_clock_synchronized 0\n"));
        assert!(render(&status(Some(true)), &p).contains("labagent_clock_synchronized 1\n"));
    }

    /// `labagent status` says unknown in words, and `--json` has `null`.
    #[test]
    fn status_says_unknown() {
        let st = status(None);
        assert!(st.render(0).contains("clock: synchronization unknown"));
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["clock_synchronized"], serde_json::Value::Null);
        assert!(!status(Some(true)).render(0).contains("clock:"));
    }

    /// The state is a state set beside `up`, never a label of `up`.
    #[test]
    fn states_are_a_state_set() {
        let text = render(&status(Some(true)), &ProcessStats::default());
        assert!(
            text.contains("labagent_uplink_up{uplink=\"http\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("labagent_uplink_state{uplink=\"http\",state=\"backing_off\"} 1\n"));
        assert_eq!(
            text.matches("labagent_uplink_state{").count(),
            UPLINK_STATES.len()
        );
        assert!(text.contains("le=\"30\"} 0\n"), "{text}");
        assert!(text.contains("labagent_build_info{version=\"0.1.0\",target=\""));
        assert!(text.contains("process_start_time_seconds 1795877987.000\n"));
    }

    /// Host queries by source with their latency, the feed, pending reports; and the
    /// same in `labagent status`.
    #[test]
    fn queries_feed_and_reports_are_shown() {
        use crate::channel::{ChannelCounters, QuerySource};
        let counters = ChannelCounters::default();
        counters.query_answered(QuerySource::Cache, Duration::from_millis(30));
        counters.query_answered(QuerySource::Upstream, Duration::from_millis(700));
        counters.query_answered(QuerySource::None, Duration::from_secs(5));
        let mut st = status(Some(true));
        st.channels.push(super::super::status::ChannelStatus {
            name: "cobas".into(),
            protocol: "astm".into(),
            transport: "serial /dev/ttyUSB0".into(),
            port: "open".into(),
            connections: 1,
            port_opened: 1,
            port_attempts: 1,
            port_error: None,
            backlog: 0,
            oldest_pending_age_s: None,
            incomplete_kept: 0,
            rejected_kept: 0,
            counters: counters.snapshot(),
        });
        st.feed = Some(crate::uplink::feed::FeedStatus {
            name: "orders".into(),
            state: "polling".into(),
            cursor: Some("C7".into()),
            polls: 9,
            items: 4,
            last_poll_ms: Some(1_795_877_987_000),
            last_ok_started_ms: Some(1_795_877_986_000),
            last_error: None,
        });
        st.order_reports_pending = 2;
        let text = render(&st, &ProcessStats::default());
        for line in [
            "labagent_channel_queries_total{channel=\"cobas\",source=\"upstream\"} 1\n",
            "labagent_channel_queries_total{channel=\"cobas\",source=\"cache\"} 1\n",
            "labagent_channel_queries_total{channel=\"cobas\",source=\"none\"} 1\n",
            "labagent_channel_query_latency_seconds_bucket{channel=\"cobas\",le=\"0.05\"} 1\n",
            "labagent_channel_query_latency_seconds_bucket{channel=\"cobas\",le=\"1\"} 2\n",
            "labagent_channel_query_latency_seconds_bucket{channel=\"cobas\",le=\"60\"} 3\n",
            "labagent_channel_query_latency_seconds_count{channel=\"cobas\"} 3\n",
            "labagent_order_reports_pending 2\n",
            "labagent_feed_items_total{feed=\"orders\"} 4\n",
            "labagent_feed_up{feed=\"orders\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let shown = st.render(1_795_877_990);
        assert!(
            shown.contains("host queries: answered from upstream 1, from the order cache 1, nothing known 1; last answer"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "orders feed: polling; cursor C7; last answer 3 s ago; 4 taken in 9 polls"
            ),
            "{shown}"
        );
        assert!(shown.contains("order reports waiting: 2"), "{shown}");
    }
}
