//! The diagnostic collector and the small value checks shared by all sections.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_spanned::Spanned;

use crate::error::Diagnostic;
use crate::locate::line_col;
use crate::schema::{DurationText, SizeValue, S};
use crate::units;

/// Collects errors and warnings while validation goes on, so one run reports them all.
pub struct Ctx<'a> {
    pub text: &'a str,
    pub file: &'a Path,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(text: &'a str, file: &'a Path) -> Self {
        Self {
            text,
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// A diagnostic at `span` whose message is `"{key}: {what}"`.
    pub fn diag(&self, span: &Range<usize>, key: &str, what: &str) -> Diagnostic {
        let (line, col) = line_col(self.text, span.start);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            key: key.to_owned(),
            message: format!("{key}: {what}"),
            hint: None,
        }
    }

    pub fn error(&mut self, span: &Range<usize>, key: &str, what: impl AsRef<str>) {
        let d = self.diag(span, key, what.as_ref());
        self.errors.push(d);
    }

    pub fn warn(&mut self, span: &Range<usize>, key: &str, what: impl AsRef<str>) {
        let d = self.diag(span, key, what.as_ref());
        self.warnings.push(d);
    }

    /// A plain value or its default.
    pub fn value<T: Clone>(&self, field: &S<T>, default: T) -> T {
        field.as_ref().map_or(default, |s| s.get_ref().clone())
    }

    /// A duration key; `nonzero` when zero makes no sense (timeouts).
    pub fn duration(
        &mut self,
        field: &S<DurationText>,
        key: &str,
        default: Duration,
        nonzero: bool,
    ) -> Duration {
        let Some(f) = field else { return default };
        match units::parse_duration(&f.get_ref().0) {
            Ok(d) if nonzero && d.is_zero() => {
                self.error(&f.span(), key, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(&f.span(), key, e);
                default
            }
        }
    }

    /// A size key in bytes; `nonzero` for limits where zero would refuse everything.
    pub fn size(&mut self, field: &S<SizeValue>, key: &str, default: u64, nonzero: bool) -> u64 {
        let Some(f) = field else { return default };
        let parsed = match f.get_ref() {
            SizeValue::Text(t) => units::parse_size(t),
            SizeValue::Int(n) => {
                u64::try_from(*n).map_err(|_| format!("{}, got {n}", units::SIZE_EXPECTED))
            }
        };
        match parsed {
            Ok(0) if nonzero => {
                self.error(&f.span(), key, "must be greater than zero");
                default
            }
            Ok(n) => n,
            Err(e) => {
                self.error(&f.span(), key, e);
                default
            }
        }
    }

    /// An integer key within `min..=max`.
    pub fn int(&mut self, field: &S<i64>, key: &str, default: u32, min: u32, max: u32) -> u32 {
        let Some(f) = field else { return default };
        let n = *f.get_ref();
        match u32::try_from(n) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.error(
                    &f.span(),
                    key,
                    format!("expected an integer from {min} to {max}, got {n}"),
                );
                default
            }
        }
    }

    /// An absolute path key (relative paths would depend on the service's working directory).
    pub fn abs_path(&mut self, field: &Spanned<String>, key: &str) -> PathBuf {
        let p = PathBuf::from(field.get_ref());
        if !p.is_absolute() {
            self.error(
                &field.span(),
                key,
                format!(
                    "expected an absolute path (starting with /), got \"{}\"",
                    field.get_ref()
                ),
            );
        }
        p
    }

    /// An absolute path to a file that must exist now (TLS material).
    pub fn existing_file(&mut self, field: &S<String>, key: &str) -> Option<PathBuf> {
        let f = field.as_ref()?;
        let p = self.abs_path(f, key);
        if p.is_absolute() && !p.is_file() {
            self.error(
                &f.span(),
                key,
                format!(
                    "file {} does not exist or is not a regular file",
                    p.display()
                ),
            );
        }
        Some(p)
    }

    /// Checks a URL's scheme: `secure` always, `plain` only when `allow_plain`.
    /// `allow_key` names the switch in the message.
    pub fn url(
        &mut self,
        field: &Spanned<String>,
        key: &str,
        secure: &str,
        plain: &str,
        allow_plain: bool,
        allow_key: &str,
    ) {
        let url = field.get_ref();
        let lower = url.to_ascii_lowercase();
        let rest = if let Some(r) = lower.strip_prefix(&format!("{secure}://")) {
            r
        } else if let Some(r) = lower.strip_prefix(&format!("{plain}://")) {
            if !allow_plain {
                self.error(
                    &field.span(),
                    key,
                    format!("{plain}:// sends credentials and results unencrypted; use {secure}:// or set {allow_key} = true"),
                );
                return;
            }
            r
        } else {
            self.error(
                &field.span(),
                key,
                format!("expected a {secure}:// URL, got \"{url}\""),
            );
            return;
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || url.chars().any(char::is_whitespace) {
            self.error(
                &field.span(),
                key,
                format!("expected a {secure}://host/... URL, got \"{url}\""),
            );
        }
    }
}

/// Letters, digits, `-`, `_`, `.`: safe in MQTT topics, metric labels and file names.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub const ID_EXPECTED: &str = "expected letters, digits, '-', '_' or '.' only";

/// The closest candidate to `word`, if any is reasonably close.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_owned())
}
