//! HL7 v2 over MLLP: the hal [`MllpFramer`] on one connection, the store behind every ACK.
//!
//! # Per message
//!
//! 1. The framer delivers a block (`VT … FS CR`, any read boundaries, several per read).
//! 2. [`MshView::new_checked`] reads MSH-1/MSH-2 (never assumes `|^~\&`), MSH-9/10/15/16/18.
//! 3. The bytes go to the store, exactly as received; the call returns after the fsync:
//!    - an HL7 message → [`Store::append`](crate::store::Store::append) (a retransmission,
//!      same channel and same bytes, is found as a duplicate and acknowledged again);
//!    - bytes that are not HL7 → [`Store::append_rejected`](crate::store::Store::append_rejected),
//!      kept for inspection, never uploaded.
//! 4. Only then the accept ACK ([`ack::decide_ack`]): the message decides the mode (MSH-15/16),
//!    the channel's `ack` only when both are empty.
//!
//!    | | original | enhanced |
//!    |---|---|---|
//!    | stored | AA | CA |
//!    | store refused (quota, disk) | AR | CE |
//!    | not HL7, or over `max_message` | AE | CR |
//!
//!    MSH-15 `NE` (or `ER` on success, `SU` on failure) means no ACK at all. Application
//!    ACKs are never invented here.
//!
//! # Orders
//!
//! When the line is idle (no block open, no order waiting) a session takes the channel's
//! oldest pending order from the outbox (one session per channel at a time), sends it as
//! one MLLP block (LF / CR LF line ends become CR) and waits up to [`ORDER_ACK_TIMEOUT`]
//! for a block whose MSA-2 is the order's MSH-10: AA/CA → delivered; AR/CE → retried
//! (given up after a few attempts); AE/CR → failed; no answer or line lost → retried.
//! Messages the instrument sends meanwhile are stored and acknowledged as usual; its
//! answer to the order is neither stored nor acknowledged (an ACK is never ACKed).
//!
//! # Text
//!
//! The store keeps the wire bytes; the meta records the encoding the uplink decodes with
//! ([`crate::text::encoding_label`], MSH-18 as the declaration): an explicit channel
//! `encoding` wins; under `auto` valid multi-byte UTF-8 wins over a single-byte MSH-18.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use labagent_hal::hl7::ack::{self, AckCode, AckError, AckMode, AckParams, Outcome};
use labagent_hal::hl7::charset;
use labagent_hal::hl7::mllp::{self, MllpError, MllpEvent, MllpFramer};
use labagent_hal::hl7::msh::{segment_id, MshView};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ChannelCtx, Dir};
use crate::source::Conn;
use crate::store::{Order, OrderOutcome};

/// The channel's `[channel.hl7] ack` as the hal's mode.
pub fn ack_mode(a: &labagent_config::AckMode) -> AckMode {
    match a {
        labagent_config::AckMode::Original => AckMode::Original,
        labagent_config::AckMode::Enhanced => AckMode::Enhanced,
    }
}

/// A header field as text for the meta (header fields are ASCII in practice).
fn text(v: &[u8], label: &str) -> String {
    crate::text::decode(v, label)
}

/// Meta of a stored HL7 message: header fields and segment counts, no patient data.
pub fn meta(v: &MshView<'_>, label: &str) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    let mut segments = 0u64;
    for s in v.segments() {
        segments += 1;
        let id = String::from_utf8_lossy(segment_id(s)).into_owned();
        let n = counts.entry(id).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    let d = v.delimiters();
    let t = v.message_type();
    let mut ty = text(t.code, label);
    if !t.trigger.is_empty() {
        ty.push('^');
        ty.push_str(&text(t.trigger, label));
    }
    json!({
        "type": ty,
        "control_id": text(v.control_id(), label),
        "sending_application": text(v.sending_application(), label),
        "sending_facility": text(v.sending_facility(), label),
        "version": text(v.version(), label),
        "processing_id": text(v.processing_id(), label),
        "charset": text(v.charset(), label),
        "separators": text(&[d.field], label) + &text(&d.encoding_chars().0[..d.encoding_chars().1], label),
        "segments": segments,
        "segment_counts": counts,
        "encoding": label,
    })
}

/// MSH-7 of our ACKs: `YYYYMMDDHHMMSS+0000` (UTC).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = crate::calendar::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}+0000",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// A new MSH-10 for an ACK: unique within the process and across restarts (time-based
/// prefix), at most 20 characters (the v2.3 length of MSH-10).
fn next_control_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: OnceLock<String> = OnceLock::new();
    let p = PREFIX.get_or_init(|| {
        let s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("LA{s:x}")
    });
    format!("{p}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What became of one block.
struct Handled {
    outcome: Outcome,
    /// MSA-3 text and the ERR segment for a negative ACK.
    text: Option<&'static str>,
    error: Option<AckError<'static>>,
    /// The message's MSH segment (empty when it has none): what the ACK is built from.
    head: Vec<u8>,
}

/// The MSH segment of a parsed message.
fn msh_segment(v: &MshView<'_>) -> Vec<u8> {
    let m = v.message();
    let end = m
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(m.len());
    m[..end].to_vec()
}

/// Stores one complete block (durable when this returns) and says how to answer it.
async fn store_block(ctx: &ChannelCtx, bytes: Vec<u8>) -> Handled {
    let len = bytes.len();
    ctx.counters.received();
    match MshView::new_checked(&bytes) {
        Ok(v) => {
            let declared = charset::encoding_label(v.charset());
            let label = crate::text::encoding_label(&ctx.config.encoding, declared, &bytes);
            let meta = meta(&v, &label);
            let head = msh_segment(&v);
            match ctx.store_message(bytes, meta).await {
                Ok(_) => Handled {
                    outcome: Outcome::Accepted,
                    text: None,
                    error: None,
                    head,
                },
                Err(_) => Handled {
                    outcome: Outcome::StoreRefused,
                    text: Some("message not stored, send it again later"),
                    error: Some(AckError::STORE_REFUSED),
                    head,
                },
            }
        }
        Err(e) => {
            let reason = e.to_string();
            let label = crate::text::encoding_label(&ctx.config.encoding, None, &bytes);
            let m = ctx.new_message(bytes, json!({ "error": reason, "encoding": label }));
            let why = reason.clone();
            let r = ctx.store_call(move |s| s.append_rejected(m, &why)).await;
            match &r {
                Ok(a) => {
                    ctx.counters.rejected();
                    tracing::warn!(channel = %ctx.name(), id = %a.id, len, duplicate = a.duplicate,
                        error = %reason, "not an HL7 message; kept as rejected, answered with an error");
                }
                Err(e) => {
                    ctx.counters.refused(&e.to_string());
                    tracing::error!(channel = %ctx.name(), len, error = %e,
                        "not an HL7 message, and the store refused to keep it");
                }
            }
            Handled {
                outcome: Outcome::Unparseable,
                text: Some(match e {
                    labagent_hal::hl7::msh::MshError::NotHl7 => "not an HL7 message",
                    labagent_hal::hl7::msh::MshError::TooShort => "MSH segment too short",
                    labagent_hal::hl7::msh::MshError::BadFieldSeparator => "invalid MSH-1",
                    labagent_hal::hl7::msh::MshError::BadEncodingCharacters => "invalid MSH-2",
                }),
                error: Some(AckError::UNPARSEABLE),
                head: Vec::new(),
            }
        }
    }
}

/// The MLLP-framed accept ACK for `orig` (a message or just its MSH segment; bytes that
/// are not HL7 get a minimal ACK), or `None` when the sender asked for none.
pub fn ack_bytes(
    orig: &[u8],
    mode: AckMode,
    outcome: Outcome,
    text: Option<&str>,
    error: Option<AckError<'_>>,
) -> Option<Vec<u8>> {
    let view = MshView::new_checked(orig).ok();
    let code: AckCode = ack::decide_ack(view.as_ref(), mode, outcome)?;
    let ts = timestamp(SystemTime::now());
    let id = next_control_id();
    let p = AckParams {
        timestamp: ts.as_bytes(),
        control_id: id.as_bytes(),
        text: text.map(str::as_bytes),
        error,
    };
    let body = match &view {
        Some(v) => ack::build_ack(v, code, &p),
        None => ack::build_minimal_ack(code, &p),
    };
    Some(mllp::encode(&body))
}

/// Attempts per order before it is given up.
const ORDER_ATTEMPTS: u32 = 5;
/// How long the instrument has to acknowledge an order.
pub const ORDER_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait before the next attempt after a failed one.
const ORDER_RETRY: Duration = Duration::from_secs(30);

/// One order at a time per channel: a `listen` channel's connections share the outbox, and
/// only the session holding this lock sends from it. Keyed by the channel's context (one
/// per running channel; a restarted channel gets a new one).
fn order_lock(ctx: &Arc<ChannelCtx>) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<usize, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut m = LOCKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    m.entry(Arc::as_ptr(ctx) as usize).or_default().clone()
}

/// An order sent to the instrument, waiting for its accept ACK.
struct InFlight {
    order: Order,
    control_id: Vec<u8>,
    deadline: Instant,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// Order text as an HL7 message: LF and CR LF segment ends become CR, the last one too.
pub fn order_message(text: &str) -> Vec<u8> {
    super::astm::order_text(text)
}

/// If `msg` is an ACK for `control_id` (a block with an MSA segment whose MSA-2 is that
/// id), its MSA-1 code.
pub fn ack_code_for(msg: &[u8], control_id: &[u8]) -> Option<String> {
    let v = MshView::new_checked(msg).ok()?;
    let f = v.delimiters().field;
    v.segments().find_map(|seg| {
        let mut parts = seg.split(|b| *b == f);
        if parts.next()? != b"MSA" {
            return None;
        }
        let code = parts.next().unwrap_or(b"");
        (parts.next().unwrap_or(b"") == control_id)
            .then(|| String::from_utf8_lossy(code).trim().to_ascii_uppercase())
    })
}

/// A failed attempt: retry, or give up after [`ORDER_ATTEMPTS`].
fn retry_or_fail(o: &Order) -> OrderOutcome {
    if o.attempts + 1 >= ORDER_ATTEMPTS {
        OrderOutcome::Failed
    } else {
        OrderOutcome::Retry
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn write(conn: &mut Conn, ctx: &ChannelCtx, bytes: &[u8]) -> io::Result<()> {
    ctx.tap(Dir::Out, bytes);
    conn.write_all(bytes).await?;
    conn.flush().await
}

/// Runs MLLP on one connection until it ends: messages from the instrument, and orders
/// from the channel's outbox when the line is idle.
pub async fn serve(mut conn: Conn, ctx: Arc<ChannelCtx>) -> io::Result<()> {
    let labagent_config::ProtocolSettings::Hl7(cfg) = &ctx.config.settings else {
        return Err(io::Error::other("not an HL7 channel"));
    };
    let mode = ack_mode(&cfg.ack);
    let max = usize::try_from(cfg.max_message).unwrap_or(usize::MAX);
    let mut framer = MllpFramer::new(max);
    let mut stopping = ctx.stopping.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut inflight: Option<InFlight> = None;
    let mut order_check = true;
    let mut not_before: Option<Instant> = None;
    loop {
        if ctx.is_stopping() && !framer.in_block() && inflight.is_none() {
            return Ok(());
        }
        // An idle line: the next order, if this session may send one.
        if inflight.is_none()
            && order_check
            && !framer.in_block()
            && !ctx.is_stopping()
            && not_before.map_or(true, |t| Instant::now() >= t)
        {
            order_check = false;
            not_before = None;
            let lock = order_lock(&ctx).try_lock_owned();
            if lock.is_err() {
                // Another connection of this channel is sending one; look again later.
                not_before = Some(Instant::now() + Duration::from_secs(1));
                order_check = true;
            }
            if let Ok(lock) = lock {
                let channel = ctx.name().to_string();
                match ctx.store_call(move |s| s.next_orders(&channel, 1)).await {
                    Ok(mut v) if !v.is_empty() => {
                        let o = v.remove(0);
                        let msg = order_message(&o.text);
                        match MshView::new_checked(&msg) {
                            Ok(view) => {
                                let control_id = view.control_id().to_vec();
                                tracing::info!(channel = %ctx.name(), order = %o.id, len = msg.len(), "sending order to the instrument");
                                write(&mut conn, &ctx, &mllp::encode(&msg)).await?;
                                inflight = Some(InFlight {
                                    order: o,
                                    control_id,
                                    deadline: Instant::now() + ORDER_ACK_TIMEOUT,
                                    _lock: lock,
                                });
                            }
                            Err(e) => {
                                let why = format!("order is not an HL7 message: {e}");
                                ctx.finish_order(&o.id, OrderOutcome::Failed, &why).await;
                                order_check = true;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ctx.counters.set_error(&e.to_string());
                        not_before = Some(Instant::now() + ORDER_RETRY);
                        order_check = true;
                    }
                }
            }
        }
        let deadline = inflight
            .as_ref()
            .map(|f| f.deadline)
            .or(not_before.filter(|_| order_check));
        let n = tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(channel = %ctx.name(), error = %e, "read failed");
                    0
                }
            },
            _ = sleep_until(deadline) => {
                if let Some(f) = inflight.take() {
                    ctx.finish_order(&f.order.id, retry_or_fail(&f.order), "no ACK from the instrument").await;
                    not_before = Some(Instant::now() + ORDER_RETRY);
                }
                order_check = true;
                continue;
            }
            _ = ctx.orders.notified(), if inflight.is_none() => {
                order_check = true;
                continue;
            }
            _ = stopping.changed(), if !*stopping.borrow() => continue,
        };
        if n == 0 {
            let dropped = framer.reset();
            if dropped > 0 {
                ctx.counters.incomplete();
                tracing::warn!(channel = %ctx.name(), len = dropped,
                    "connection closed inside an MLLP block; the partial block was not acknowledged");
            }
            if let Some(f) = inflight.take() {
                ctx.finish_order(&f.order.id, retry_or_fail(&f.order), "line lost")
                    .await;
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
            out.clear();
            match ev {
                MllpEvent::Message(bytes) => {
                    // The instrument's answer to our order: not a message to store or ACK.
                    let answer = inflight
                        .as_ref()
                        .and_then(|f| ack_code_for(&bytes, &f.control_id));
                    if let (Some(code), Some(f)) = (answer, inflight.as_ref()) {
                        let outcome = match code.as_str() {
                            "AA" | "CA" => OrderOutcome::Delivered,
                            "AR" | "CE" => retry_or_fail(&f.order),
                            _ => OrderOutcome::Failed,
                        };
                        let f = inflight.take().expect("checked above");
                        ctx.finish_order(
                            &f.order.id,
                            outcome,
                            &format!("instrument answered {code}"),
                        )
                        .await;
                        if outcome == OrderOutcome::Retry {
                            not_before = Some(Instant::now() + ORDER_RETRY);
                        }
                        order_check = true;
                        continue;
                    }
                    let h = store_block(&ctx, bytes).await;
                    if let Some(a) = ack_bytes(&h.head, mode, h.outcome, h.text, h.error) {
                        out.extend_from_slice(&a);
                    }
                    if h.outcome == Outcome::Accepted {
                        ctx.counters.acknowledged();
                    }
                }
                MllpEvent::Error(MllpError::TooLarge { len, head }) => {
                    ctx.counters.received();
                    ctx.counters.refused("message over max_message");
                    tracing::warn!(channel = %ctx.name(), len, max,
                        "HL7 message over max_message; not stored, answered with an error");
                    if let Some(a) = ack_bytes(
                        &head,
                        mode,
                        Outcome::Unparseable,
                        Some("message too large"),
                        Some(AckError {
                            code: 207,
                            text: b"Message too large",
                        }),
                    ) {
                        out.extend_from_slice(&a);
                    }
                }
                MllpEvent::Error(MllpError::Interrupted { discarded }) => {
                    ctx.counters.incomplete();
                    tracing::warn!(channel = %ctx.name(), len = discarded,
                        "MLLP block restarted by the sender; the partial block was dropped");
                }
            }
            if !out.is_empty() {
                write(&mut conn, &ctx, &out).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_hl7_dtm() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_874_700); // 2026-11-28 14:05:00 UTC
        assert_eq!(timestamp(t), "20261128140500+0000");
        assert_eq!(timestamp(UNIX_EPOCH), "19700101000000+0000");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229000000+0000"
        );
    }

    #[test]
    fn ack_codes_are_matched_by_msa2() {
        let ack = b"MSH|^~\\&|A|B|C|D|2026||ACK^O33|9|P|2.5\rMSA|ae|O1\r";
        assert_eq!(ack_code_for(ack, b"O1").as_deref(), Some("AE"));
        assert_eq!(ack_code_for(ack, b"O2"), None);
        assert_eq!(ack_code_for(b"not hl7", b"O1"), None);
        let custom = b"MSH!$r?@!A!B!C!D!2026!!ACK!9!P!2.5\rMSA!CA!X\r";
        assert_eq!(ack_code_for(custom, b"X").as_deref(), Some("CA"));
    }
}
