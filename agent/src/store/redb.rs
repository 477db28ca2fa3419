//! The same `Engine` over redb 2, for the benchmark comparison (feature `bench-redb`).
//!
//! Group commit maps naturally: `apply` commits a write transaction with
//! `Durability::None` (visible, not yet durable) and `sync` commits an empty transaction
//! with `Durability::Immediate`, which makes every earlier non-durable commit durable.

use std::io;
use std::path::Path;

use redb::{Database, Durability, TableDefinition};

use super::engine::{Engine, Op, Opener};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("labagent");

fn e(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(err.to_string())
}

pub(crate) fn redb_opener() -> Opener {
    std::sync::Arc::new(|dir: &Path| RedbEngine::open(dir).map(|e| Box::new(e) as Box<dyn Engine>))
}

pub(crate) struct RedbEngine {
    db: Database,
    path: std::path::PathBuf,
}

impl RedbEngine {
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join("store.redb");
        let db = Database::builder()
            .set_cache_size(8 << 20)
            .create(&path)
            .map_err(e)?;
        let tx = db.begin_write().map_err(e)?;
        tx.open_table(TABLE).map_err(e)?;
        tx.commit().map_err(e)?;
        super::engine::sync_dir(dir)?;
        Ok(Self { db, path })
    }
}

impl Engine for RedbEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(TABLE).map_err(e)?;
        Ok(t.get(key).map_err(e)?.map(|v| v.value().to_vec()))
    }

    fn apply(&self, ops: Vec<Op>) -> io::Result<()> {
        let mut tx = self.db.begin_write().map_err(e)?;
        tx.set_durability(Durability::None);
        {
            let mut t = tx.open_table(TABLE).map_err(e)?;
            for (k, v) in &ops {
                match v {
                    Some(v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(e)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(e)?;
                    }
                }
            }
        }
        tx.commit().map_err(e)
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(TABLE).map_err(e)?;
        let mut out = Vec::new();
        for kv in t.range::<&[u8]>(start..end).map_err(e)?.take(limit) {
            let (k, v) = kv.map_err(e)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        let mut tx = self.db.begin_write().map_err(e)?;
        tx.set_durability(Durability::Immediate);
        tx.commit().map_err(e)
    }

    fn disk_bytes(&self) -> io::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }
}
