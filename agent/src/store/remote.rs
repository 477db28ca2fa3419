//! Remote commands (fleet management, docs/FLEET.md). The command feed's cursor is a feed
//! cursor like the order feed's ([`Store::cursor`], name `commands`).
//!
//! # Invariants
//!
//! 1. **Recorded before it runs.** A command id is written ([`Store::command_put`], durable
//!    on return) before the command runs or its MQTT PUBACK / feed cursor moves, so a
//!    command delivered again (a broker's persistent session after a restart, a feed page
//!    read twice) is answered from its record and never run twice.
//! 2. **Results kept until delivered and until `not_after`.** A finished command keeps its
//!    result document; `delivered` turns true on the broker's PUBACK or the server's 2xx
//!    (not synced on its own: after a crash a result may be sent twice, with the same id).
//!    [`Store::commands_prune`] deletes only records that are delivered and past their
//!    `not_after`, so an id stays known as long as a command with it may still be valid.
//! 3. **Bounded values.** A record is JSON split into chunks of at most `engine::CHUNK`
//!    bytes under `G id 0 chunk(u32)` (a `logs` result may be large), written in one batch.
//!
//! Keys: `G` id `0` chunk → record JSON (chunked).

use serde::{Deserialize, Serialize};

use super::engine::CHUNK;
use super::keys;
use super::*;

/// Where a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Recorded, not finished (a `config` push on trial stays here until confirmed or
    /// rolled back).
    Running,
    /// Finished (or refused): `result` holds the document to send.
    Done,
}

/// One remote command as the store keeps it (never the config text or a signature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: String,
    pub command: String,
    pub state: CommandState,
    /// Unix seconds; the record is kept at least until then.
    pub not_after_unix: u64,
    /// The result document (`{"id","ok","result"|"error","at"}`) once done.
    pub result: Option<serde_json::Value>,
    /// The broker acknowledged it / the server answered 2xx.
    pub delivered: bool,
    /// Refused before it ran (a later valid command with this id may still run).
    #[serde(default)]
    pub refused: bool,
    /// Where it came from (MQTT topic or URL), for the audit.
    #[serde(default)]
    pub via: String,
}

fn command_prefix(id: &str) -> Vec<u8> {
    let mut k = b"G".to_vec();
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

impl Store {
    fn read_chunks(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        let g = self.engine()?;
        let eng = g.as_ref().ok_or_else(closed)?;
        let parts = eng.range(prefix, &keys::prefix_end(prefix), usize::MAX)?;
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(parts.into_iter().flat_map(|(_, v)| v).collect()))
    }

    /// The record of command `id`, if any.
    pub fn command_get(&self, id: &str) -> Result<Option<CommandRecord>> {
        match self.read_chunks(&command_prefix(id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Writes (or replaces) a record; durable on return.
    pub fn command_put(&self, rec: &CommandRecord) -> Result<()> {
        let gen = self.command_write(rec)?;
        self.durable(gen)
    }

    fn command_write(&self, rec: &CommandRecord) -> Result<u64> {
        let prefix = command_prefix(&rec.id);
        let json = serde_json::to_vec(rec).map_err(corrupt)?;
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let old = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            eng.range(&prefix, &keys::prefix_end(&prefix), usize::MAX)?
                .len()
        };
        let mut ops: Vec<engine::Op> = Vec::new();
        let mut n = 0u32;
        for chunk in json.chunks(CHUNK) {
            let mut k = prefix.clone();
            k.extend_from_slice(&n.to_be_bytes());
            ops.push((k, Some(chunk.to_vec())));
            n += 1;
        }
        for i in n..u32::try_from(old).unwrap_or(u32::MAX) {
            let mut k = prefix.clone();
            k.extend_from_slice(&i.to_be_bytes());
            ops.push((k, None));
        }
        let next = w.next_seq;
        self.apply(&mut w, ops, BTreeMap::new(), next)
    }

    /// Marks a result delivered (not synced on its own: see invariant 2).
    pub fn command_delivered(&self, id: &str) -> Result<()> {
        if let Some(mut r) = self.command_get(id)? {
            if !r.delivered {
                r.delivered = true;
                self.command_write(&r)?;
            }
        }
        Ok(())
    }

    /// Every record, in id order.
    pub fn commands(&self) -> Result<Vec<CommandRecord>> {
        let all = {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            eng.range(b"G", b"H", usize::MAX)?
        };
        let mut out = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut cur_id: Option<Vec<u8>> = None;
        for (k, v) in all {
            // G id 0 chunk(4)
            let id = k[1..k.len().saturating_sub(5)].to_vec();
            if cur_id.as_ref() != Some(&id) {
                if cur_id.is_some() {
                    out.push(serde_json::from_slice(&cur).map_err(corrupt)?);
                }
                cur.clear();
                cur_id = Some(id);
            }
            cur.extend_from_slice(&v);
        }
        if cur_id.is_some() {
            out.push(serde_json::from_slice(&cur).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Finished results not yet delivered.
    pub fn commands_undelivered(&self) -> Result<Vec<CommandRecord>> {
        Ok(self
            .commands()?
            .into_iter()
            .filter(|r| r.state == CommandState::Done && !r.delivered)
            .collect())
    }

    /// Deletes delivered records past their `not_after`; returns how many.
    pub fn commands_prune(&self, now_unix: u64) -> Result<usize> {
        let old: Vec<String> = self
            .commands()?
            .into_iter()
            .filter(|r| r.delivered && r.not_after_unix < now_unix)
            .map(|r| r.id)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut w = self.lock_writer();
        self.ensure_healthy(&mut w)?;
        let mut ops: Vec<engine::Op> = Vec::new();
        {
            let g = self.engine()?;
            let eng = g.as_ref().ok_or_else(closed)?;
            for id in &old {
                let p = command_prefix(id);
                for (k, _) in eng.range(&p, &keys::prefix_end(&p), usize::MAX)? {
                    ops.push((k, None));
                }
            }
        }
        let next = w.next_seq;
        self.apply(&mut w, ops, BTreeMap::new(), next)?;
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, big: usize) -> CommandRecord {
        CommandRecord {
            id: id.into(),
            command: "logs".into(),
            state: CommandState::Done,
            not_after_unix: 100,
            result: Some(serde_json::json!({"id": id, "ok": true, "result": "x".repeat(big)})),
            delivered: false,
            refused: false,
            via: "t".into(),
        }
    }

    #[test]
    fn records_survive_reopen_are_chunked_and_pruned_after_delivery_and_past_not_after() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path(), StoreOptions::default()).unwrap();
            s.command_put(&rec("a", 50_000)).unwrap();
            s.command_put(&rec("b", 10)).unwrap();
            s.command_put(&rec("a", 5)).unwrap(); // shrinks: old chunks go
        }
        let s = Store::open(d.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.command_get("a").unwrap().unwrap(), rec("a", 5));
        assert_eq!(s.commands().unwrap().len(), 2);
        assert_eq!(s.commands_undelivered().unwrap().len(), 2);
        s.command_delivered("a").unwrap();
        assert_eq!(s.commands_undelivered().unwrap().len(), 1);
        assert_eq!(s.commands_prune(50).unwrap(), 0, "not past not_after");
        assert_eq!(s.commands_prune(200).unwrap(), 1, "delivered and past");
        assert!(s.command_get("a").unwrap().is_none());
        assert!(s.command_get("b").unwrap().is_some(), "undelivered stays");
    }
}
