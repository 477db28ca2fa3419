//! Orders on the agent's side: the HTTPS order feed's pages into the outbox
//! ([`OrderPages`]), and the order cache's upkeep: [`sweep`] at start and every
//! [`SWEEP_EVERY`] — pending orders older than `[buffer] orders_keep` are expired
//! (reported `expired`), finished ones are forgotten after it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::channel::{ChannelCtx, Hooks, OrderReport};
use crate::store::{NewOrder, Store};
use crate::uplink::feed::{PageHandler, Taken};

/// How long the order feed asks the server to hold a poll (`wait=25s`).
pub const FEED_WAIT: Duration = Duration::from_secs(25);

/// How often the order cache is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// One sweep (blocking): expired orders are logged (ids only) and, when the store does
/// not keep reports itself, handed to `hooks.order`.
pub fn sweep(store: &Store, keep: Duration, hooks: &Hooks) {
    match store.sweep_orders(keep, SystemTime::now()) {
        Ok(s) => {
            if !s.expired.is_empty() && store.options().order_reports {
                // Their reports were queued with the expiry.
                (hooks.stored)();
            }
            for o in &s.expired {
                tracing::warn!(channel = %o.channel, order = %o.id, "order expired: not sent within orders_keep");
                if !store.options().order_reports {
                    (hooks.order)(OrderReport {
                        channel: o.channel.clone(),
                        id: o.id.clone(),
                        state: "expired".into(),
                        detail: o.detail.clone().unwrap_or_default(),
                    });
                }
            }
            if s.forgotten > 0 {
                tracing::info!(
                    forgotten = s.forgotten,
                    "finished orders past orders_keep forgotten"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "order sweep failed; tried again later"),
    }
}

/// Sweeps now and every [`SWEEP_EVERY`] until `stopping` turns true.
pub async fn sweeper(
    store: Store,
    keep: Duration,
    hooks: Hooks,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let (s, h) = (store.clone(), hooks.clone());
        let _ = tokio::task::spawn_blocking(move || sweep(&s, keep, &h)).await;
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// The configured channels by name, kept current across reloads (the order feed routes
/// by it).
pub type ChannelMap = Arc<RwLock<BTreeMap<String, Arc<ChannelCtx>>>>;

/// The order feed's pages into the outbox (see `uplink::feed`): each order stored durably
/// (same id rules as MQTT orders: an id seen before is not stored again) before the
/// cursor moves. An order for no configured channel, a raw channel, or with empty text is
/// kept as failed and reported; one without an id cannot be kept or reported and is
/// skipped with a warning. A stored order wakes its channel.
pub struct OrderPages {
    pub store: Store,
    pub channels: ChannelMap,
    /// Wakes the uplink (a failed order's report is queued).
    pub wake_uplink: Arc<dyn Fn() + Send + Sync>,
}

impl OrderPages {
    fn take_one(&self, v: &serde_json::Value) -> Result<(), String> {
        let Some(id) = v["id"]
            .as_str()
            .filter(|i| !i.is_empty() && !i.contains('\0'))
        else {
            tracing::warn!("feed order without an id: cannot be kept or reported; skipped");
            return Ok(());
        };
        let channel = v["channel"].as_str().unwrap_or("");
        let text = v["text"].as_str().unwrap_or("");
        let specimens: Vec<String> = v["specimens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let ctx = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned();
        let why = match &ctx {
            None => Some(format!("no channel {channel:?} in this agent's config")),
            Some(c) if c.config.protocol() == labagent_config::Protocol::Raw => Some(format!(
                "channel {channel} speaks raw: orders go to ASTM and HL7 instruments only"
            )),
            Some(_) if text.is_empty() => Some("empty order text".to_string()),
            Some(_) => None,
        };
        let order = NewOrder {
            id: id.to_string(),
            channel: if channel.is_empty() || channel.contains('\0') || channel.len() > 255 {
                "(none)".to_string()
            } else {
                channel.to_string()
            },
            text: text.to_string(),
            specimens,
        };
        match (why, ctx) {
            (Some(why), _) => {
                let fresh = self
                    .store
                    .put_order_failed(order, &why)
                    .map_err(|e| format!("cannot keep a refused order: {e}"))?;
                if fresh {
                    tracing::warn!(channel = %channel, order = %id, reason = %why, "feed order refused; kept as failed and reported");
                    (self.wake_uplink)();
                }
            }
            (None, Some(ctx)) => {
                let fresh = self
                    .store
                    .put_order_for(order, ctx.config.protocol().into())
                    .map_err(|e| format!("cannot store an order: {e}"))?;
                if fresh {
                    tracing::info!(channel = %channel, order = %id, "order stored");
                    ctx.orders.notify_one();
                } else {
                    tracing::info!(channel = %channel, order = %id, "order seen before; not stored again");
                }
            }
            (None, None) => {}
        }
        Ok(())
    }
}

impl PageHandler for OrderPages {
    fn take(&self, body: &str) -> Result<Taken, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            orders: Vec<serde_json::Value>,
            #[serde(default)]
            next: Option<String>,
        }
        let page: Page = serde_json::from_str(body).map_err(|e| {
            format!(
                "not an order page ({})",
                format!("{:?}", e.classify()).to_lowercase()
            )
        })?;
        for v in &page.orders {
            self.take_one(v)?;
        }
        Ok(Taken {
            items: page.orders.len(),
            next: page.next,
        })
    }

    fn cursor(&self, name: &str) -> Result<Option<String>, String> {
        self.store.cursor(name).map_err(|e| e.to_string())
    }

    fn save_cursor(&self, name: &str, value: &str) -> Result<(), String> {
        self.store
            .save_cursor(name, value)
            .map_err(|e| e.to_string())
    }
}
