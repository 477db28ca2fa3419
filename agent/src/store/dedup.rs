//! A Bloom filter in front of the duplicate index (`D` keys), so that a new message — the
//! usual case — is known not to be a duplicate without a lookup in the engine.
//!
//! Why: the duplicate keys are SHA-256 digests, spread at random over the index, so the
//! lookup of a new message's key lands on a random leaf of sled's tree, which its page
//! cache rarely holds: it was a `pread` and a page decode per message, 16 % of the ingest
//! thread's time (docs/PERFORMANCE.md, issue 23).
//!
//! The filter says *absent* only for keys never written; *maybe* sends the caller to the
//! engine as before, so a duplicate is always found. Every duplicate key the store writes
//! sets its bits (`Store::apply`, under the writer lock, before the write is visible); the
//! keys already in the store are read in at open by [`build`]: at once when there are few,
//! else on a thread of its own that exits when done. Until that scan has ended the filter
//! answers *maybe* for every key. Removed keys keep their bits (more *maybe*s, never a
//! missed duplicate); after [`SATURATED`] writes the filter stops answering *absent* at
//! all, and the next open builds a fresh one.

use std::sync::{Arc, Mutex, Weak};

use super::{keys, Shared, Store};

/// Bits in the filter: 1 MiB, allocated zeroed (pages are touched only as bits are set).
const BITS: usize = 1 << 23;
/// Probes per key: about 2 % false *maybe* with 1 million keys, 0.01 % with 100 000.
const PROBES: u64 = 4;
/// Keys written since the build after which the filter answers only *maybe* (it would be
/// wrong about half the time).
const SATURATED: u64 = 3_000_000;
/// Keys read per page of the build scan.
pub(super) const PAGE: usize = 4096;

pub(super) struct Filter {
    bits: Vec<u64>,
    /// Every key in the store at open has been read in.
    ready: bool,
    /// Keys written since the filter was created (the build's keys not counted).
    noted: u64,
    /// Lookups that went to the engine (a test's window on the filter).
    pub(super) probes: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            bits: vec![0; BITS / 64],
            ready: false,
            noted: 0,
            probes: 0,
        }
    }
}

/// Two independent 64-bit hashes of `key` (FNV-1a, then a splitmix64 finaliser of it).
fn hashes(key: &[u8]) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h, (z ^ (z >> 31)) | 1)
}

impl Filter {
    fn positions(key: &[u8]) -> impl Iterator<Item = usize> {
        let (h1, h2) = hashes(key);
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BITS as u64) as usize)
    }

    /// `key` is (or is about to be) in the store: a write, counted towards saturation.
    pub(super) fn note(&mut self, key: &[u8]) {
        self.noted += 1;
        self.set(key);
    }

    /// Sets `key`'s bits (the build scan: the store's contents, not counted).
    fn set(&mut self, key: &[u8]) {
        for p in Self::positions(key) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    #[cfg(test)]
    pub(super) fn ready_for_test(&self) -> bool {
        self.ready
    }

    /// `false`: `key` is certainly not in the store. `true`: ask the engine.
    pub(super) fn may_contain(&mut self, key: &[u8]) -> bool {
        let maybe = !self.ready
            || self.noted >= SATURATED
            || Self::positions(key).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0);
        if maybe {
            self.probes += 1;
        }
        maybe
    }
}

/// Notes every duplicate key `ops` puts.
pub(super) fn note_puts(filter: &Mutex<Filter>, ops: &[super::engine::Op]) {
    let mut keys = ops
        .iter()
        .filter(|(k, v)| v.is_some() && k.first() == Some(&b'D'))
        .peekable();
    if keys.peek().is_some() {
        let mut f = lock(filter);
        for (k, _) in keys {
            f.note(k);
        }
    }
}

pub(super) fn lock(f: &Mutex<Filter>) -> std::sync::MutexGuard<'_, Filter> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the duplicate keys already stored into the filter: the first page here, the rest
/// (if any) on a thread of its own, which stops early if the store is dropped.
pub(super) fn build(store: &Store) {
    match scan_page(store, keys::dedup_prefix()) {
        Ok(None) => lock(&store.shared.dedup).ready = true,
        Ok(Some(cursor)) => {
            let weak = Arc::downgrade(&store.shared);
            let spawned = std::thread::Builder::new()
                .name("store-dedup".into())
                .spawn(move || scan_rest(weak, cursor));
            if let Err(e) = spawned {
                // The filter stays "maybe" for every key: slower, never wrong.
                tracing::warn!(error = %e, "store: cannot start the duplicate filter's scan");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "store: duplicate filter scan failed; lookups go to the store")
        }
    }
}

/// The whole scan on this thread (tests).
#[cfg(test)]
pub(super) fn scan_all(store: &Store) -> super::Result<()> {
    let mut cursor = keys::dedup_prefix();
    while let Some(next) = scan_page(store, cursor)? {
        cursor = next;
    }
    lock(&store.shared.dedup).ready = true;
    Ok(())
}

fn scan_rest(weak: Weak<Shared>, mut cursor: Vec<u8>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let store = Store { shared };
        match scan_page(&store, cursor) {
            Ok(Some(next)) => cursor = next,
            Ok(None) => {
                lock(&store.shared.dedup).ready = true;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "store: duplicate filter scan failed; lookups go to the store");
                return;
            }
        }
    }
}

/// Notes one page of duplicate keys from `from`; the next page's start, or `None` at the end.
fn scan_page(store: &Store, from: Vec<u8>) -> super::Result<Option<Vec<u8>>> {
    let end = keys::prefix_end(&keys::dedup_prefix());
    let page = {
        let g = store.engine()?;
        let eng = g.as_ref().ok_or_else(super::closed)?;
        eng.range(&from, &end, PAGE)?
    };
    let mut f = lock(&store.shared.dedup);
    for (k, _) in &page {
        f.set(k);
    }
    Ok(match page.last() {
        Some((k, _)) if page.len() == PAGE => {
            let mut next = k.clone();
            next.push(0);
            Some(next)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_only_for_keys_never_noted_and_maybe_until_ready() {
        let mut f = Filter::default();
        let key = |i: u32| {
            let mut k = b"Dch\0".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            k
        };
        f.note(&key(1));
        assert!(f.may_contain(&key(2)), "not ready: every key is a maybe");
        f.ready = true;
        for i in 0..10_000 {
            f.note(&key(i * 2));
        }
        for i in 0..10_000 {
            assert!(f.may_contain(&key(i * 2)), "a noted key read as absent");
        }
        let false_maybes = (0..10_000)
            .filter(|i| f.may_contain(&key(i * 2 + 1)))
            .count();
        assert!(false_maybes < 10, "{false_maybes} false maybes in 10 000");
        f.noted = SATURATED;
        assert!(f.may_contain(&key(3)), "a saturated filter answers maybe");
    }
}
