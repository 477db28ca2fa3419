//! Raw delimited channels: the hal [`RawFramer`] (start and end byte sequences) on one
//! connection, for instruments that speak neither ASTM E1381 nor MLLP (Snibe MAGLUMI sends
//! `ENQ STX <records> ETX EOT`, no frame numbers, no checksums).
//!
//! - A complete message (delimiters stripped) is stored as received; the optional `reply`
//!   bytes go back only after the store returned `Ok` (durable). A store refusal sends
//!   nothing: the instrument's own timeout is the only negative answer raw framing has.
//! - The start sequence again before the end (the sender restarted): the fragment is kept
//!   as an `incomplete` message for inspection (nothing was acknowledged for it).
//! - Over `max_message`: discarded by the framer (bounded memory), counted, logged, no reply.
//! - Text: an explicit channel `encoding` wins; `auto` is UTF-8 when valid, else
//!   windows-1252 (recorded in the meta for the uplink).

use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use labagent_hal::raw::{RawConfig, RawError, RawEvent, RawFramer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ChannelCtx, Dir};
use crate::source::Conn;
use crate::store::Fragment;
use crate::text::encoding_label;

/// Framing settings from `[channel.raw]`.
pub fn raw_config(r: &labagent_config::Raw) -> io::Result<RawConfig> {
    RawConfig::new(
        &r.start,
        &r.end,
        r.reply.as_deref(),
        usize::try_from(r.max_message).unwrap_or(usize::MAX),
    )
    .map_err(|e| io::Error::other(format!("invalid [channel.raw] framing: {e:?}")))
}

/// Meta of a stored raw message: line count and encoding (no content).
pub fn meta(bytes: &[u8], enc: &labagent_config::Encoding) -> serde_json::Value {
    let lines = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    json!({ "lines": lines, "encoding": encoding_label(enc, None, bytes) })
}

/// Runs raw framing on one connection until it ends.
pub async fn serve(mut conn: Conn, ctx: Arc<ChannelCtx>) -> io::Result<()> {
    let labagent_config::ProtocolSettings::Raw(cfg) = &ctx.config.settings else {
        return Err(io::Error::other("not a raw channel"));
    };
    let mut framer = RawFramer::new(raw_config(cfg)?);
    let reply = framer.reply().map(<[u8]>::to_vec);
    let mut stopping = ctx.stopping.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let session = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut fragments = 0u64;
    loop {
        if ctx.is_stopping() {
            return Ok(());
        }
        let n = tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(channel = %ctx.name(), error = %e, "read failed");
                    0
                }
            },
            _ = stopping.changed(), if !*stopping.borrow() => continue,
        };
        if n == 0 {
            let dropped = framer.reset();
            if dropped > 0 {
                ctx.counters.incomplete();
                tracing::warn!(channel = %ctx.name(), len = dropped,
                    "connection closed inside a message; the partial message was not acknowledged");
            }
            return Ok(());
        }
        ctx.tap(Dir::In, &buf[..n]);
        let mut input = &buf[..n];
        while !input.is_empty() {
            let k = framer.push(input);
            input = &input[k..];
            let Some(ev) = framer.poll_event() else {
                continue;
            };
            match ev {
                RawEvent::Message(bytes) => {
                    ctx.counters.received();
                    let meta = meta(&bytes, &ctx.config.encoding);
                    if ctx.store_message(bytes, meta).await.is_ok() {
                        ctx.counters.acknowledged();
                        if let Some(r) = &reply {
                            ctx.tap(Dir::Out, r);
                            conn.write_all(r).await?;
                            conn.flush().await?;
                        }
                    }
                }
                RawEvent::Error(RawError::TooLarge { len }) => {
                    ctx.counters.received();
                    ctx.counters.refused("message over max_message");
                    tracing::warn!(channel = %ctx.name(), len, "raw message over max_message; not stored, no reply");
                }
                RawEvent::Error(RawError::Restarted { fragment }) => {
                    fragments += 1;
                    let len = fragment.len();
                    let f = Fragment {
                        channel: ctx.name().to_string(),
                        transmission: format!("raw-{session:x}-{fragments}"),
                        protocol: crate::store::Protocol::Raw,
                        received_at: SystemTime::now(),
                        clock_synced: ctx.clock_synced.get(),
                        bytes: fragment,
                    };
                    let r = ctx
                        .store_call(move |s| {
                            let (ch, t) = (f.channel.clone(), f.transmission.clone());
                            s.append_fragment(f)?;
                            s.abandon(&ch, &t)
                        })
                        .await;
                    ctx.counters.incomplete();
                    match r {
                        Ok(id) => {
                            tracing::warn!(channel = %ctx.name(), len, id = ?id.map(|i| i.to_string()),
                            "message restarted before its end; the fragment is kept as incomplete")
                        }
                        Err(e) => {
                            ctx.counters.set_error(&e.to_string());
                            tracing::error!(channel = %ctx.name(), len, error = %e,
                                "message restarted before its end; the fragment could not be kept");
                        }
                    }
                }
            }
        }
    }
}
