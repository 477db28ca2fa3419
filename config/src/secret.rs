//! The client secret: where it may come from, and a type that never prints it.
//!
//! Exactly one source may be present: `client_secret_file`, inline `client_secret`
//! (accepted with a warning: config files get copied, mailed and committed),
//! the `LABAGENT_CLIENT_SECRET` environment variable, or systemd's
//! `$CREDENTIALS_DIRECTORY/client_secret` (`LoadCredential=`, the recommended source).
//! Two sources are an error rather than a precedence rule, because a technician who
//! rotated the secret in one place must not keep sending the stale one from another.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable holding the secret.
pub const ENV_SECRET: &str = "LABAGENT_CLIENT_SECRET";
/// systemd's credentials directory variable.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// The credential name under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "client_secret";

/// A secret value. `Debug` and `Display` print `[redacted]`; use [`Secret::expose`] at the
/// one place that sends it.
///
/// Serializable (transparently, as the bare string) so the agent's store can persist an
/// access token; serialized forms are never logged.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the secret came from; printed instead of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `client_secret_file`.
    File(PathBuf),
    /// Inline `client_secret` in the config file.
    Inline,
    /// The `LABAGENT_CLIENT_SECRET` environment variable.
    Env,
    /// `$CREDENTIALS_DIRECTORY/client_secret`; the full path.
    CredentialsDirectory(PathBuf),
    /// Not here yet: the systemd unit `unit` loads it as the credential `client_secret`
    /// from `file` (`LoadCredential=`) when the service starts (`check-config` outside it).
    Unit { unit: PathBuf, file: PathBuf },
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Inline => f.write_str("inline client_secret in the config file"),
            Self::Env => write!(f, "environment variable {ENV_SECRET}"),
            Self::CredentialsDirectory(p) => {
                write!(
                    f,
                    "systemd credential {} (${ENV_CREDENTIALS_DIRECTORY})",
                    p.display()
                )
            }
            Self::Unit { unit, file } => write!(
                f,
                "systemd credential {CREDENTIAL_NAME}, which {} loads from {} (LoadCredential=)",
                unit.display(),
                file.display()
            ),
        }
    }
}

/// Reads a secret file after checking it is a regular file that "others" cannot access.
/// Returns the secret (one trailing newline removed) and an optional warning when the
/// group may read it.
pub(crate) fn read_secret_file(
    path: &Path,
    check_mode: bool,
) -> Result<(Secret, Option<String>), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "secret file {} is not a regular file",
            path.display()
        ));
    }
    let mut warning = None;
    if check_mode {
        if let Some(mode) = unix_mode(&meta) {
            if mode & 0o007 != 0 {
                return Err(format!(
                    "secret file {} has mode {:04o}: others may access it; \
                     expected 0600 or stricter (chmod 600 {})",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ));
            }
            if mode & 0o070 != 0 {
                warning = Some(format!(
                    "secret file {} has mode {:04o}: its group may access it; 0600 is recommended",
                    path.display(),
                    mode & 0o7777
                ));
            }
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let value = trim_newline(&text);
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok((Secret::new(value), warning))
}

/// Removes one trailing `\n` or `\r\n` (editors add it; it is never part of a secret).
pub(crate) fn trim_newline(text: &str) -> &str {
    let t = text.strip_suffix('\n').unwrap_or(text);
    t.strip_suffix('\r').unwrap_or(t)
}

#[cfg(unix)]
fn unix_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(meta.permissions().mode())
}

#[cfg(not(unix))]
fn unix_mode(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}
