//! `labagent-config`: the `config.toml` contract (see `CONFIG.md` in the design notes).
//!
//! The file is read in three steps, each in its own module:
//!
//! - `schema`: serde types with `deny_unknown_fields`, every key optional and
//!   [`serde_spanned::Spanned`], so nothing is lost for error messages;
//! - `validate` and `channel`: defaults from [`defaults`] filled in, every value checked
//!   for meaning, all problems collected (not just the first), each with file, line,
//!   column and the key's dotted path;
//! - [`Config`]: the immutable, typed result ([`std::time::Duration`], sizes in bytes,
//!   enums), printed back as TOML by [`Config::effective_toml`].
//!
//! Paths in the config (state_dir, TLS files, secret file, serial ports) must be absolute:
//! the service's working directory is not something a technician should have to know.
//!
//! The client secret is resolved here (see [`secret`]) from exactly one source, held in a
//! [`Secret`] that never prints itself.

#![forbid(unsafe_code)]

mod channel;
mod check;
pub mod defaults;
mod error;
pub mod fhir;
mod locate;
mod model;
mod parse;
mod print;
pub mod remote;
mod schema;
pub mod secret;
pub mod ucum;
pub mod units;
mod validate;

use std::fmt;
use std::path::Path;

pub use error::{ConfigError, Diagnostic, Warning};
pub use fhir::{ChannelFhir, CodeMap, CodeMapEntry};
pub use model::*;
pub use remote::{Remote, SigningKey};
pub use secret::{Secret, SecretSource};

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/labagent/config.toml";

/// A validated config and the warnings found on the way (e.g. a serial port that is not
/// plugged in yet, an inline secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Warning>,
}

/// Looks up an environment variable by name.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// What loading reads besides the file: the environment, injectable so tests never touch
/// the process environment.
pub struct LoadOptions {
    /// Looks up an environment variable (`LABAGENT_CLIENT_SECRET`, `CREDENTIALS_DIRECTORY`).
    pub env: Box<EnvLookup>,
    /// Whether an auth method that needs a client secret without any source is an error
    /// (`run`). Commands that never authenticate (`status`, `queue`) load without it: with
    /// `LoadCredential=` the secret exists only inside the service.
    pub secret_required: bool,
}

impl Default for LoadOptions {
    /// The process environment.
    fn default() -> Self {
        Self {
            env: Box::new(|k| std::env::var(k).ok()),
            secret_required: true,
        }
    }
}

impl LoadOptions {
    /// A fixed environment holding only `vars` (for tests).
    pub fn with_env<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self {
            env: Box::new(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())),
            secret_required: true,
        }
    }

    /// The same, but a missing client secret is not an error (`secret` stays `None`).
    pub fn secret_optional(mut self) -> Self {
        self.secret_required = false;
        self
    }
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions").finish_non_exhaustive()
    }
}

/// Reads and validates the config file at `path`, with the process environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, &LoadOptions::default())
}

/// Reads and validates the config file at `path`.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    load_str(&text, path, opts)
}

/// Validates config text; `path` is only used in messages (and nothing is read from it).
pub fn load_str(text: &str, path: &Path, opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let raw: schema::RawConfig = toml::from_str(text)
        .map_err(|e| ConfigError::Invalid(vec![parse::diagnostic(text, path, &e)]))?;
    let mut ctx = check::Ctx::new(text, path);
    let config = validate::validate(&mut ctx, &raw, opts);
    let by_position = |d: &Diagnostic| (d.line, d.col);
    ctx.errors.sort_by_key(by_position);
    ctx.warnings.sort_by_key(by_position);
    match config {
        Some(config) if ctx.errors.is_empty() => Ok(Loaded {
            config,
            warnings: ctx.warnings,
        }),
        _ => Err(ConfigError::Invalid(ctx.errors)),
    }
}
