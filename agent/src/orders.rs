//! A channel's orders as they leave pending: finished by the instrument's answer to a
//! download (delivered, failed, retried), or claimed for the answer to a host query. Each
//! final state is written with its report in one store write; the uplink is woken.

use crate::channel::{ChannelCtx, OrderReport};
use crate::store::{OrderOutcome, StoreError};

/// Records an order's outcome in the outbox and, once it is final (delivered or
/// failed), reports it to the uplink; a retry is only logged.
pub async fn finish(ctx: &ChannelCtx, order_id: &str, outcome: OrderOutcome, detail: &str) {
    let id = order_id.to_string();
    let d = detail.to_string();
    match ctx
        .store
        .call(move |s| s.mark_order(&id, outcome, Some(&d)))
        .await
    {
        Ok(o) => match o.state.report_status() {
            Some(state) => {
                tracing::info!(channel = %ctx.name(), order = %o.id, state, "order finished");
                // Its report was queued with the final state: wake the uplink.
                ctx.wake_uplink();
                ctx.report_order(OrderReport {
                    channel: ctx.name().to_string(),
                    id: o.id,
                    state: state.to_string(),
                    detail: detail.to_string(),
                });
            }
            None => {
                tracing::warn!(channel = %ctx.name(), order = %o.id, attempts = o.attempts,
                    detail, "order not delivered; will retry")
            }
        },
        Err(e) => {
            ctx.counters.set_error(&e.to_string());
            tracing::error!(channel = %ctx.name(), order = %order_id, error = %e, "cannot record the order's outcome");
        }
    }
}

/// Claims the cached orders `ids` as answered by a host query (durable on return; see
/// [`Store::answer_orders`](crate::store::Store::answer_orders)): returns the ids taken, which the answer may carry. Their
/// `answered-query` reports were queued in the same write; the uplink is woken, and
/// [`Hooks::order`](crate::channel::Hooks::order) told (MQTT has no durable reports).
pub async fn claim(
    ctx: &ChannelCtx,
    ids: Vec<String>,
    detail: &str,
) -> Result<Vec<String>, StoreError> {
    let d = detail.to_string();
    let taken = ctx.store.call(move |s| s.answer_orders(&ids, &d)).await?;
    if !taken.is_empty() {
        tracing::info!(channel = %ctx.name(), orders = taken.len(), "orders answered a host query");
        ctx.wake_uplink();
        if !ctx.store.options().order_reports {
            for id in &taken {
                ctx.report_order(OrderReport {
                    channel: ctx.name().to_string(),
                    id: id.clone(),
                    state: "answered-query".into(),
                    detail: detail.to_string(),
                });
            }
        }
    }
    Ok(taken)
}
