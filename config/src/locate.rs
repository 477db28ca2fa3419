//! From byte offsets to what a technician needs: 1-based line and column, and the dotted
//! path of the key at that offset.
//!
//! serde errors from `toml` carry a byte span but not a usable key path, so the path is
//! recovered by walking a `toml_edit` parse of the same text and finding the key or
//! value whose span holds the offset. Channels are named by their `name` when they have
//! one (`channel "cobas".baud`), else by 0-based index (`channel[1].baud`).

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// 1-based line and column (in characters) of a byte offset; clamped to the text.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path: `channel "cobas".astm.max_frame`, `channel[2].baud`, `uplink.auth`.
/// `name_of(i)` gives the name of channel `i`, if it has one.
pub fn render_path(path: &[Seg], name_of: &dyn Fn(usize) -> Option<String>) -> String {
    let mut out = String::new();
    let mut prev_channel = false;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
                prev_channel = out == "channel";
            }
            Seg::Index(i) => {
                match name_of(*i).filter(|_| prev_channel) {
                    Some(name) => out.push_str(&format!(" \"{name}\"")),
                    None => out.push_str(&format!("[{i}]")),
                }
                prev_channel = false;
            }
        }
    }
    out
}

/// A `toml_edit` view of the text, used only to name the key at an offset.
pub struct Locator {
    doc: Option<ImDocument<String>>,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        Self {
            doc: ImDocument::parse(text.to_owned()).ok(),
        }
    }

    /// The name of channel `i`, when it is a string.
    pub fn channel_name(&self, i: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let aot = doc.as_table().get("channel")?.as_array_of_tables()?;
        let name = aot.get(i)?.get("name")?.as_str()?;
        Some(name.to_owned())
    }

    /// The path of the key or value at `offset` (empty when none is found).
    pub fn path_at(&self, offset: usize) -> Vec<Seg> {
        let mut path = Vec::new();
        if let Some(doc) = &self.doc {
            find_in_table(doc.as_table(), offset, &mut path);
        }
        path
    }

    /// Renders a path with channel names filled in.
    pub fn render(&self, path: &[Seg]) -> String {
        render_path(path, &|i| self.channel_name(i))
    }
}

fn holds(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn find_in_table(table: &Table, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (k, item) in table.iter() {
        let key_span = table.key(k).and_then(|key| key.span());
        path.push(Seg::Key(k.to_owned()));
        if holds(key_span, offset) {
            return true;
        }
        match item {
            Item::Value(v) => {
                if holds(v.span(), offset) {
                    find_in_value(v, offset, path);
                    return true;
                }
            }
            Item::Table(t) => {
                if find_in_table(t, offset, path) || holds(t.span(), offset) {
                    return true;
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if find_in_table(t, offset, path) || holds(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
            }
            Item::None => {}
        }
        path.pop();
    }
    false
}

/// Descends into inline tables and arrays; `path` already names `value`.
fn find_in_value(value: &Value, offset: usize, path: &mut Vec<Seg>) {
    match value {
        Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                let key_span = t.key(k).and_then(|key| key.span());
                if holds(key_span, offset) || holds(v.span(), offset) {
                    path.push(Seg::Key(k.to_owned()));
                    find_in_value(v, offset, path);
                    return;
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if holds(v.span(), offset) {
                    path.push(Seg::Index(i));
                    find_in_value(v, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 9), (2, 3)); // after the two-byte é
        assert_eq!(line_col(t, 999), (3, 1));
        assert_eq!(line_col(t, 8), (2, 2)); // inside é: clamped back
    }

    #[test]
    fn paths() {
        let t =
            "[agent]\nid = \"x\"\n[[channel]]\nname = \"c1\"\nbaud = 1\n[[channel]]\nbaud = 2\n";
        let l = Locator::new(t);
        let at = |s: &str, n: usize| {
            let off = t.match_indices(s).nth(n).map(|(i, _)| i).unwrap_or(0);
            l.render(&l.path_at(off))
        };
        assert_eq!(at("id", 0), "agent.id");
        assert_eq!(at("1\n", 0), "channel \"c1\".baud");
        assert_eq!(at("baud", 1), "channel[1].baud");
    }
}
