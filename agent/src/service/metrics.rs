//! Prometheus text exposition on `[agent] metrics` (off by default): `GET /metrics`
//! (any path answers the same) over plain HTTP/1.1, one response per connection.
//! Bind it to loopback or a management network: it names channels but carries no data.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::status::{AgentStatus, Registry};

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
            let Ok(status) = tokio::task::spawn_blocking(move || reg.snapshot()).await else {
                return;
            };
            let body = render(&status);
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

/// The exposition text.
pub fn render(s: &AgentStatus) -> String {
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
            "labagent_channel_port_up{{channel=\"{}\",state=\"{}\"}} {up}",
            label(&c.name),
            c.port
        );
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
            "labagent_uplink_up{{uplink=\"{kind}\",state=\"{}\"}} {}",
            label(&u.state),
            u8::from(u.state == "ok")
        );
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
            "Upload request latency (send to response).",
        );
        let mut cum = 0;
        for (i, le) in crate::uplink::status::LATENCY_BUCKETS_MS.iter().enumerate() {
            cum += u.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "labagent_uplink_latency_seconds_bucket{{uplink=\"{kind}\",le=\"{}\"}} {cum}",
                *le as f64 / 1000.0
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
    let st = &s.store;
    let store: [(&str, &str, &str, u64); 8] = [
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
        (
            "uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            s.uptime_s,
        ),
    ];
    for (name, kind, help, v) in store {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "labagent_{name} {v}");
    }
    family(
        &mut o,
        "clock_synchronized",
        "gauge",
        "1 when the system clock is considered synchronized.",
    );
    let _ = writeln!(
        o,
        "labagent_clock_synchronized {}",
        u8::from(s.clock_synchronized)
    );
    o
}
