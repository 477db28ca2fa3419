//! TOML syntax and type errors (from serde) turned into [`Diagnostic`]s with a key path
//! and, for unknown keys and values, the closest valid one.

use std::path::Path;

use crate::check::closest;
use crate::error::Diagnostic;
use crate::locate::{line_col, Locator, Seg};

/// The words between backticks in `text` (serde lists expected fields that way).
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The backticked words after "expected" in `rest`, which starts with `name`.
fn expected_after<'m>(rest: &'m str, name: &str) -> Vec<&'m str> {
    rest.get(name.len()..)
        .and_then(|after| after.split_once("expected"))
        .map_or_else(Vec::new, |(_, e)| backticked(e))
}

/// serde's Rust-flavoured type words in technician words.
fn plain(words: &str) -> String {
    let w = words.trim();
    match w {
        "i64" | "u64" | "i32" | "u32" | "u16" | "u8" | "integer" => "an integer".to_owned(),
        "a sequence" | "sequence" => "an array".to_owned(),
        "a map" | "map" => "a table".to_owned(),
        "a boolean" | "boolean" => "true or false".to_owned(),
        _ if w.starts_with("struct ") => "a table".to_owned(),
        _ => w.to_owned(),
    }
}

pub fn diagnostic(text: &str, file: &Path, err: &toml::de::Error) -> Diagnostic {
    let span = err.span().unwrap_or(0..0);
    let (line, col) = line_col(text, span.start);
    let locator = Locator::new(text);
    let mut path = locator.path_at(span.start);
    let msg = err.message().trim();
    let mut hint = None;
    let (key, message) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("").to_owned();
        if path.last() == Some(&Seg::Key(name.clone())) {
            path.pop();
        }
        let place = locator.render(&path);
        // Sliced after the name, not searched in the whole message, so a key that itself
        // contains "expected" cannot confuse the list of valid keys.
        let expected = expected_after(rest, &name);
        hint = closest(&name, expected.iter().copied());
        let mut message = if place.is_empty() {
            format!("unknown key `{name}` at the top level")
        } else {
            format!("unknown key `{name}` in {place}")
        };
        if hint.is_none() && !expected.is_empty() {
            message.push_str(&format!("; valid keys here: {}", expected.join(", ")));
        }
        let key = if place.is_empty() {
            name
        } else {
            format!("{place}.{name}")
        };
        (key, message)
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let value = rest.split('`').next().unwrap_or("");
        let expected = expected_after(rest, value);
        hint = closest(value, expected.iter().copied());
        let key = locator.render(&path);
        let message = format!(
            "{key}: unknown value \"{value}\"; expected one of: {}",
            expected.join(" | ")
        );
        (key, message)
    } else if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        let key = locator.render(&path);
        let (got, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "something else"));
        let got = match got {
            "map" => "a table".to_owned(),
            "sequence" => "an array".to_owned(),
            g => g.to_owned(),
        };
        let mut expected = plain(expected);
        if key == "channel" && expected == "an array" {
            expected = "[[channel]] sections (double brackets)".to_owned();
        }
        (
            key.clone(),
            format!("{key}: expected {expected}, got {got}"),
        )
    } else {
        // TOML syntax errors and anything else: keep the parser's words on one line.
        let key = locator.render(&path);
        let words = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let message = if key.is_empty() {
            format!("TOML syntax error: {words}")
        } else {
            format!("{key}: {words}")
        };
        (key, message)
    };
    Diagnostic {
        file: file.to_path_buf(),
        line,
        col,
        key,
        message,
        hint,
    }
}
