//! The store seen by the uplinks: [`Queue`] and [`TokenCache`] over [`Store`].
//!
//! Both are blocking (sled) and called from the uplink's own thread. Text for upload is
//! decoded from the stored wire bytes with the encoding the driver recorded in the
//! message's meta (`encoding`), so what arrives upstream is correct UTF-8 while the store
//! keeps the bytes exactly as the instrument sent them.

use crate::store::{self, Message, MessageId, Store, StoreError};
use crate::text::decode;
use crate::uplink::{Outgoing, Queue, QueueError, Secret, StoredToken, TokenCache};

/// One stored message as the uplinks send it.
pub fn outgoing(m: Message) -> Outgoing {
    let label = m
        .info
        .meta
        .get("encoding")
        .and_then(|v| v.as_str())
        .unwrap_or("utf-8")
        .to_string();
    Outgoing {
        id: m.info.id.to_string(),
        channel: m.info.channel,
        protocol: m.info.protocol,
        received_at: m.info.received_at,
        clock_synced: m.info.clock_synced,
        text: decode(&m.bytes, &label),
        meta: m.info.meta,
    }
}

/// The store's inbox as the uplink's queue.
#[derive(Clone)]
pub struct StoreQueue {
    store: Store,
}

impl StoreQueue {
    pub fn new(store: Store) -> Self {
        StoreQueue { store }
    }
}

fn queue_error(e: StoreError) -> QueueError {
    QueueError(e.to_string())
}

impl Queue for StoreQueue {
    fn channels(&self) -> Result<Vec<String>, QueueError> {
        Ok(self.store.channels())
    }

    fn next_batch(&self, channel: &str, max: usize) -> Result<Vec<Outgoing>, QueueError> {
        let v = self.store.next_pending(channel, max).map_err(queue_error)?;
        Ok(v.into_iter().map(outgoing).collect())
    }

    /// A message not marked stays pending and is sent again with its id.
    fn confirm(&self, ids: &[String]) -> Result<(), QueueError> {
        let ids = ids
            .iter()
            .map(|i| i.parse::<MessageId>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(queue_error)?;
        self.store.confirm_many(&ids).map_err(queue_error)
    }

    fn reject(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        let id: MessageId = id.parse().map_err(queue_error)?;
        self.store.reject(id, reason).map_err(queue_error)
    }

    fn skip(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        let id: MessageId = id.parse().map_err(queue_error)?;
        self.store
            .confirm_by_policy(id, reason)
            .map_err(queue_error)
    }
}

/// The store's token slot as the uplink's token cache.
#[derive(Clone)]
pub struct StoreTokenCache {
    store: Store,
}

impl StoreTokenCache {
    pub fn new(store: Store) -> Self {
        StoreTokenCache { store }
    }
}

impl TokenCache for StoreTokenCache {
    fn load(&self) -> Option<StoredToken> {
        match self.store.load_token() {
            Ok(Some(t)) => Some(StoredToken {
                access_token: Secret::new(t.access_token.expose()),
                token_type: t.token_type,
                expires_at: t.expires_at_unix,
                obtained_at: t.obtained_at_unix,
                scope: t.scope,
            }),
            // An empty token is what `clear` leaves.
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the saved token; a new one will be requested");
                None
            }
        }
        .filter(|t| !t.access_token.expose().is_empty())
    }

    fn save(&self, t: &StoredToken) {
        let token = store::Token {
            access_token: store::Secret::new(t.access_token.expose()),
            token_type: t.token_type.clone(),
            expires_at_unix: t.expires_at,
            obtained_at_unix: t.obtained_at,
            scope: t.scope.clone(),
        };
        if let Err(e) = self.store.save_token(&token) {
            tracing::warn!(error = %e, "cannot save the token; it will be requested again after a restart");
        }
    }

    fn clear(&self) {
        let empty = store::Token {
            access_token: store::Secret::new(""),
            token_type: String::new(),
            expires_at_unix: 0,
            obtained_at_unix: 0,
            scope: None,
        };
        if let Err(e) = self.store.save_token(&empty) {
            tracing::warn!(error = %e, "cannot clear the saved token");
        }
    }
}
