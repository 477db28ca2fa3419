//! Pushed configs on disk, and the trial marker.
//!
//! `/etc/labagent` is read-only to the service (`ProtectSystem=strict`) and `config.toml`
//! there is a dpkg conffile, so a pushed config lives in `state_dir/remote/`:
//!
//! | file | what |
//! |---|---|
//! | `config.toml` | the pushed config; in force instead of `--config` while it exists |
//! | `config.toml.previous` | the pushed config before the last push (rollback source) |
//! | `trial` | the trial marker: `{"id", "previous"}` while a push is on trial |
//!
//! Every write is atomic (temporary file, `fsync`, `rename`, `fsync` of the directory).
//! The first line of a pushed file names the command that pushed it; with the marker that
//! is what start-up needs to finish a trial a crash interrupted (see `service::remote`):
//!
//! 1. push: marker written → the old pushed file copied to `.previous` → the new one
//!    written → reload;
//! 2. confirm: marker removed → result stored;
//! 3. roll back: result stored → files restored (only if the pushed file names the
//!    command on trial) → reload → marker removed.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The header line's fixed part; the command id follows.
const HEADER: &str = "# labagent: pushed by remote command ";

/// A push on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The `config` command's id.
    pub id: String,
    /// A pushed config was in force before (else the local file was).
    pub previous: bool,
}

/// The files of one state directory.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(state_dir: &Path) -> Files {
        Files {
            dir: state_dir.join("remote"),
        }
    }

    pub fn pushed(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn previous(&self) -> PathBuf {
        self.dir.join("config.toml.previous")
    }

    pub fn marker(&self) -> PathBuf {
        self.dir.join("trial")
    }

    /// The file in force: the pushed one while it exists, else `local`.
    pub fn in_force(&self, local: &Path) -> PathBuf {
        let p = self.pushed();
        if p.is_file() {
            p
        } else {
            local.to_path_buf()
        }
    }

    /// The command named on the pushed file's first line.
    pub fn pushed_by(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.pushed()).ok()?;
        let first = text.lines().next()?;
        let rest = first.strip_prefix(HEADER)?;
        rest.split_whitespace().next().map(str::to_string)
    }

    pub fn read_marker(&self) -> io::Result<Option<Marker>> {
        match std::fs::read(self.marker()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Puts `text` in force on trial for command `id` (step 1 of the module doc).
    pub fn begin_trial(&self, id: &str, text: &str) -> io::Result<()> {
        make_dir(&self.dir)?;
        let previous = self.pushed().is_file();
        let marker = serde_json::to_vec(&Marker {
            id: id.to_string(),
            previous,
        })?;
        write_atomic(&self.marker(), &marker)?;
        if previous {
            let old = std::fs::read(self.pushed())?;
            write_atomic(&self.previous(), &old)?;
        }
        let body = format!(
            "{HEADER}{id} at {}; `labagent remote reset` brings back the local file\n{text}",
            crate::calendar::rfc3339(std::time::SystemTime::now())
        );
        write_atomic(&self.pushed(), body.as_bytes())
    }

    /// Confirms the trial: the marker goes (step 2).
    pub fn end_trial(&self) -> io::Result<()> {
        remove(&self.marker())?;
        sync_dir(&self.dir)
    }

    /// Restores what was in force before the push of `m` (step 3). Idempotent: when the
    /// pushed file does not name `m.id`, the push never got that far and nothing changes.
    pub fn restore(&self, m: &Marker) -> io::Result<()> {
        if self.pushed_by().as_deref() != Some(m.id.as_str()) {
            return Ok(());
        }
        if m.previous && self.previous().is_file() {
            let old = std::fs::read(self.previous())?;
            write_atomic(&self.pushed(), &old)
        } else {
            remove(&self.pushed())?;
            sync_dir(&self.dir)
        }
    }

    /// `labagent remote reset`: the pushed files and any marker go; the local file is in
    /// force again.
    pub fn reset(&self) -> io::Result<bool> {
        let had = self.pushed().exists();
        for p in [self.pushed(), self.previous(), self.marker()] {
            remove(&p)?;
        }
        if self.dir.is_dir() {
            sync_dir(&self.dir)?;
        }
        Ok(had)
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

fn remove(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably (mode 0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_and_its_rollback_from_the_local_file_and_from_a_pushed_one() {
        let d = tempfile::tempdir().unwrap();
        let f = Files::new(d.path());
        let local = d.path().join("local.toml");
        assert_eq!(f.in_force(&local), local);

        f.begin_trial("c1", "A\n").unwrap();
        assert_eq!(f.in_force(&local), f.pushed());
        assert_eq!(f.pushed_by().as_deref(), Some("c1"));
        let m = f.read_marker().unwrap().unwrap();
        assert!(!m.previous);
        f.end_trial().unwrap();
        assert!(f.read_marker().unwrap().is_none());

        f.begin_trial("c2", "B\n").unwrap();
        let m = f.read_marker().unwrap().unwrap();
        assert!(m.previous);
        f.restore(&m).unwrap();
        assert_eq!(f.pushed_by().as_deref(), Some("c1"), "c1's file is back");
        f.restore(&m).unwrap(); // idempotent
        assert_eq!(f.pushed_by().as_deref(), Some("c1"));
        f.end_trial().unwrap();

        // A marker for a push that never wrote its file changes nothing.
        let m = Marker {
            id: "c3".into(),
            previous: true,
        };
        f.restore(&m).unwrap();
        assert_eq!(f.pushed_by().as_deref(), Some("c1"));

        // Rolling back the first push removes the pushed file: the local one is in force.
        let m = Marker {
            id: "c1".into(),
            previous: false,
        };
        f.restore(&m).unwrap();
        assert_eq!(f.in_force(&local), local);

        f.begin_trial("c4", "C\n").unwrap();
        assert!(f.reset().unwrap());
        assert_eq!(f.in_force(&local), local);
        assert!(f.read_marker().unwrap().is_none());
    }
}
