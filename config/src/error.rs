//! Diagnostics: every problem names the file, 1-based line and column, the key (a dotted
//! path such as `channel "cobas".baud` or `channel[0].baud`) and what was expected.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a config file (an error or a warning).
///
/// `Display` is `FILE:LINE:COL: MESSAGE`; the message always names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// Dotted path of the key (`uplink.auth.token_url`, `channel "xn".listen`); empty
    /// for a TOML syntax error that belongs to no key.
    pub key: String,
    /// The human sentence, naming the key and what was expected.
    pub message: String,
    /// For an unknown key or value: the closest valid one.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "; did you mean \"{h}\"?")?;
        }
        Ok(())
    }
}

/// A warning: the config is usable, but something deserves a look (e.g. a serial port
/// that does not exist yet, an inline secret).
pub type Warning = Diagnostic;

/// Why a config was refused: one or more diagnostics, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// The file was read and has problems.
    #[error("{}", display_all(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The diagnostics (empty for [`ConfigError::Io`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Io { .. } => &[],
            Self::Invalid(d) => d,
        }
    }
}

fn display_all(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
