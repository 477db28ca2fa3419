//! The storage engine behind the store: one ordered key space with atomic batches and a
//! real `sync`. The store never names sled outside this file (and `redb.rs`).
//!
//! Why our own fsync: sled 0.34's `flush()` ends with `sync_file_range` on the `db` file,
//! which does not flush the disk cache nor the file's metadata (spacejam/sled#1452), and
//! values over `segment_size / 4` (128 KiB by default) go to `blobs/` files that sled never
//! syncs. The store keeps every value at or below [`CHUNK`] bytes so sled never writes a
//! blob; `sync` still fsyncs any file found in `blobs/` (and the directory) as a second line
//! of defence.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Largest value the store writes. Far below sled's blob threshold (128 KiB minus a header
/// for a whole leaf), so a leaf holding a few of these stays inline in the log.
pub(crate) const CHUNK: usize = 8 * 1024;

/// One write of an atomic batch: `None` removes the key.
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);
/// An [`Op`] borrowed (the log's checkpoint hands its layer to the engine this way).
pub(crate) type OpRef<'a> = (&'a [u8], Option<&'a [u8]>);

/// An ordered byte key space. Implementations must apply a batch atomically (all or none
/// visible after a crash) and make everything applied before `sync` durable when it
/// returns `Ok`.
pub(crate) trait Engine: Send + Sync {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    fn apply(&self, ops: Vec<Op>) -> io::Result<()>;
    /// Applies `ops` in order, each write on its own: after a crash any subset of them may
    /// be there. Only for a caller that redoes them until a later `sync` (the log's
    /// checkpoint). Engines whose batches cost nothing extra keep the default.
    fn apply_each(&self, ops: &[OpRef<'_>]) -> io::Result<()> {
        self.apply(
            ops.iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
        )
    }
    /// Up to `limit` pairs with `start <= key < end`, ascending.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Flush and fsync: after `Ok`, every batch applied before the call survives power loss.
    fn sync(&self) -> io::Result<()>;
    /// Bytes the engine occupies on disk.
    fn disk_bytes(&self) -> io::Result<u64>;
    /// Makes everything applied so far durable *in the engine's own files* (not only in a
    /// log in front of it): what an older binary, which knows no log, would read.
    fn checkpoint(&self) -> io::Result<()> {
        self.sync()
    }
}

/// Opens engines; the store reopens through it after an IO error (sled stays failed after
/// ENOSPC until it is reopened).
pub(crate) type Opener = std::sync::Arc<dyn Fn(&Path) -> io::Result<Box<dyn Engine>> + Send + Sync>;

pub(crate) fn sled_opener(cache_capacity: u64) -> Opener {
    std::sync::Arc::new(move |dir: &Path| {
        SledEngine::open(dir, cache_capacity).map(|e| Box::new(e) as Box<dyn Engine>)
    })
}

fn to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

pub(crate) struct SledEngine {
    dir: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    db_file: File,
}

impl SledEngine {
    pub(crate) fn open(dir: &Path, cache_capacity: u64) -> io::Result<Self> {
        let sled_dir = dir.join("sled");
        remove_unfinished_snapshots(&sled_dir)?;
        let config = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(cache_capacity)
            // We flush (checkpoints); sled's own 500 ms flusher would only add writes.
            .flush_every_ms(None);
        // After a drop (restart in-process, reopen after an IO error) sled's IO threads
        // release the file lock a moment later: retry for up to 5 s before giving up
        // (another process holding the store is then the likely cause).
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if tries < 500 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(to_io(e)),
            }
        };
        let tree = db.open_tree("labagent").map_err(to_io)?;
        let db_file = File::open(sled_dir.join("db"))?;
        // New files (db, conf, snapshots) must be reachable after a power cut.
        sync_dir(&sled_dir)?;
        sync_dir(dir)?;
        Ok(Self {
            dir: sled_dir,
            db,
            tree,
            db_file,
        })
    }
}

/// sled 0.34 writes its snapshot at open to `snap.<lsn>.generating` and renames it when
/// complete. If the write fails (ENOSPC), the unfinished file stays, and the next open
/// takes it for a snapshot and fails with "Read corrupted data" (its candidate filter
/// skips only `.in___motion`). A `.generating` file is never complete: remove it.
fn remove_unfinished_snapshots(sled_dir: &Path) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(sled_dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "store: removing a snapshot sled did not finish writing");
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key).map_err(to_io)?.map(|v| v.to_vec()))
    }

    fn apply(&self, ops: Vec<Op>) -> io::Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(to_io)
    }

    /// Why: sled 0.34 applies a batch under a process-wide exclusive lock (its
    /// `concurrency_control::write`), and once any batch has run, every `get` takes that
    /// lock shared — so while the checkpoint wrote its batches, the appends' duplicate
    /// look-ups waited (yielding) for them. Single inserts take it shared, and if no batch
    /// ever runs in the process, reads skip it. Measured on one HL7 connection: 50–60 µs
    /// of each append's CPU path before the change (docs/perf/hl7.md).
    fn apply_each(&self, ops: &[OpRef<'_>]) -> io::Result<()> {
        for &(k, v) in ops {
            match v {
                Some(v) => self.tree.insert(k, v).map(drop),
                None => self.tree.remove(k).map(drop),
            }
            .map_err(to_io)?;
        }
        Ok(())
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.tree.range(start.to_vec()..end.to_vec()).take(limit) {
            let (k, v) = kv.map_err(to_io)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(to_io)?;
        self.db_file.sync_data()?;
        // Defence in depth: values are chunked below the blob threshold, but if a blob
        // ever appears it is fsynced with its directory before anyone is told "durable".
        let blobs = self.dir.join("blobs");
        if let Ok(rd) = std::fs::read_dir(&blobs) {
            let mut any = false;
            for e in rd.flatten() {
                File::open(e.path())?.sync_data()?;
                any = true;
            }
            if any {
                sync_dir(&blobs)?;
            }
        }
        Ok(())
    }

    fn disk_bytes(&self) -> io::Result<u64> {
        dir_size(&self.dir)
    }
}

pub(crate) fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        n += if md.is_dir() {
            dir_size(&e.path())?
        } else {
            md.len()
        };
    }
    Ok(n)
}

/// Test double: wraps an engine and fails writes with ENOSPC while `full` is set, like a
/// disk that filled up. Clearing the flag is "space returned".
#[cfg(test)]
pub(crate) struct FaultyEngine {
    pub(crate) inner: Box<dyn Engine>,
    pub(crate) full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(test)]
impl FaultyEngine {
    fn check(&self) -> io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
impl Engine for FaultyEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn apply(&self, ops: Vec<Op>) -> io::Result<()> {
        self.check()?;
        self.inner.apply(ops)
    }

    fn apply_each(&self, ops: &[OpRef<'_>]) -> io::Result<()> {
        self.check()?;
        self.inner.apply_each(ops)
    }
    fn range(&self, s: &[u8], e: &[u8], l: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.range(s, e, l)
    }
    fn sync(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync()
    }
    fn disk_bytes(&self) -> io::Result<u64> {
        self.inner.disk_bytes()
    }
    fn checkpoint(&self) -> io::Result<()> {
        self.check()?;
        self.inner.checkpoint()
    }
}
