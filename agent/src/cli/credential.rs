//! Where a service's client secret will come from when it exists only inside the unit:
//! `LoadCredential=client_secret:…` in `labagent.service` (PACKAGING.md). systemd (PID 1,
//! as root) reads the file when the service starts and hands the service a copy as
//! `$CREDENTIALS_DIRECTORY/client_secret`; outside the service (`labagent check-config` in
//! a shell) there is no such directory, so `check-config` reads the unit the way systemd
//! does and says where the secret will come from instead of failing.
//!
//! The unit is found as systemd finds it: the first `labagent.service` of
//! `/etc/systemd/system`, `/run/systemd/system`, `/lib/systemd/system`,
//! `/usr/lib/systemd/system`, then every drop-in `labagent.service.d/*.conf` of those
//! directories in file-name order. Of the `LoadCredential=` lines in `[Service]`, the last
//! one for `client_secret` wins, and an empty `LoadCredential=` clears the earlier ones. A
//! source that is not an absolute path is a name in the credential stores
//! (`/etc/credstore`, `/run/credstore`, `/usr/lib/credstore`; systemd 250 and later).

use std::path::{Path, PathBuf};

use labagent_config::secret::CREDENTIAL_NAME;

/// The unit name the package installs.
pub const UNIT: &str = "labagent.service";
/// systemd's unit search path for system units, highest priority first.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
/// Where a credential given by name is looked for, in order.
pub const CREDSTORE_DIRS: [&str; 3] = ["/etc/credstore", "/run/credstore", "/usr/lib/credstore"];

/// `LoadCredential=client_secret:<source>` as a unit configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCredential {
    /// The file (unit or drop-in) with the line that counts.
    pub unit: PathBuf,
    /// What follows `client_secret:`.
    pub source: String,
}

/// Where the credential's file is, as far as this process can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The file systemd will read.
    File(PathBuf),
    /// Not found; these were looked at (a directory this process cannot read, such as
    /// `/etc/credstore` for a non-root user, is named in `unreadable`).
    Missing {
        searched: Vec<PathBuf>,
        unreadable: Vec<PathBuf>,
    },
}

impl UnitCredential {
    /// Resolves the source to a file (a name through the credential stores).
    pub fn locate(&self, credstores: &[PathBuf]) -> Found {
        let candidates: Vec<PathBuf> = if Path::new(&self.source).is_absolute() {
            vec![PathBuf::from(&self.source)]
        } else {
            credstores.iter().map(|d| d.join(&self.source)).collect()
        };
        let mut unreadable = Vec::new();
        for c in &candidates {
            match std::fs::metadata(c) {
                Ok(m) if m.is_file() => return Found::File(c.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    unreadable.push(c.parent().map(Path::to_path_buf).unwrap_or_default())
                }
                _ => {}
            }
        }
        Found::Missing {
            searched: candidates,
            unreadable,
        }
    }
}

/// The unit file and its drop-ins, in the order systemd applies them.
pub fn unit_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(main) = dirs.iter().map(|d| d.join(UNIT)).find(|p| p.is_file()) {
        files.push(main);
    }
    // Drop-ins from every directory, ordered by file name (a name in a higher-priority
    // directory hides the same name in a lower one).
    let mut dropins: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d.join(format!("{UNIT}.d"))) else {
            continue;
        };
        let mut here: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        here.sort();
        for p in here {
            let name = p.file_name().unwrap_or_default().to_owned();
            if !dropins.iter().any(|(n, _)| *n == name) {
                dropins.push((name, p));
            }
        }
    }
    dropins.sort_by(|a, b| a.0.cmp(&b.0));
    files.extend(dropins.into_iter().map(|(_, p)| p));
    files
}

/// The `LoadCredential=client_secret:…` that counts in `files` (applied in order).
pub fn find(files: &[PathBuf]) -> Option<UnitCredential> {
    let mut found = None;
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let mut in_service = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            if !in_service || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some(value) = line
                .split_once('=')
                .filter(|(k, _)| k.trim() == "LoadCredential")
                .map(|(_, v)| v.trim())
            else {
                continue;
            };
            if value.is_empty() {
                found = None;
                continue;
            }
            let (id, source) = value.split_once(':').unwrap_or((value, value));
            if id == CREDENTIAL_NAME {
                found = Some(UnitCredential {
                    unit: f.clone(),
                    source: source.to_string(),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn the_shipped_unit_names_the_credential_store() {
        let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross/labagent.service");
        let c = find(std::slice::from_ref(&unit)).expect("LoadCredential in the unit");
        assert_eq!(c.source, "labagent.client_secret");
        assert_eq!(c.unit, unit);
    }

    #[test]
    fn drop_ins_override_and_reset_as_systemd_does() {
        let d = tempfile::tempdir().unwrap();
        let (etc, lib) = (d.path().join("etc"), d.path().join("lib"));
        write(
            &lib.join(UNIT),
            "[Unit]\nLoadCredential=client_secret:wrong-section\n[Service]\n\
             LoadCredential=client_secret:labagent.client_secret\nLoadCredential=other:x\n",
        );
        let dirs = [etc.clone(), lib.clone()];
        let c = find(&unit_files(&dirs)).unwrap();
        assert_eq!(c.source, "labagent.client_secret");
        assert_eq!(c.unit, lib.join(UNIT));

        // `systemctl edit`: a drop-in that clears the list and names a path.
        write(
            &etc.join(format!("{UNIT}.d/override.conf")),
            "[Service]\nLoadCredential=\nLoadCredential=client_secret:/etc/labagent/client_secret\n",
        );
        let c = find(&unit_files(&dirs)).unwrap();
        assert_eq!(c.source, "/etc/labagent/client_secret");
        // A later drop-in that only clears it: no credential.
        write(
            &lib.join(format!("{UNIT}.d/zz-none.conf")),
            "[Service]\nLoadCredential=\n",
        );
        assert_eq!(find(&unit_files(&dirs)), None);
    }

    #[test]
    fn a_name_is_looked_up_in_the_credential_stores() {
        let d = tempfile::tempdir().unwrap();
        let stores = [
            d.path().join("etc-credstore"),
            d.path().join("run-credstore"),
        ];
        let c = UnitCredential {
            unit: PathBuf::from("/lib/systemd/system/labagent.service"),
            source: "labagent.client_secret".into(),
        };
        match c.locate(&stores) {
            Found::Missing { searched, .. } => assert_eq!(
                searched,
                stores
                    .iter()
                    .map(|s| s.join("labagent.client_secret"))
                    .collect::<Vec<_>>()
            ),
            f => panic!("{f:?}"),
        }
        write(&stores[1].join("labagent.client_secret"), "s3cret\n");
        assert_eq!(
            c.locate(&stores),
            Found::File(stores[1].join("labagent.client_secret"))
        );
    }
}
