//! E1394 (LIS2-A2) records: a zero-copy view.
//!
//! Text is records terminated by CR (a stray LF after a CR is tolerated). The delimiters
//! are read from the H record — the four bytes after `H`: field, repeat, component,
//! escape — and never hard-coded. When a header declares them ambiguously (two equal,
//! or a letter/digit/CR among them, e.g. a doubled backslash) the declared field
//! delimiter is kept and the rest fall back to `\^&`.
//!
//! Views: [`records`] → [`Record`] → [`Field`] → repeats → components, all borrowing
//! the input; [`unescape`] resolves `&F& &S& &R& &E& &Xhhhh& &H& &N&`. Nothing here
//! panics on any input; nothing allocates. Message boundaries and summaries live in
//! [`super::split`] (re-exported here).

use super::CR;
use crate::buf::Sink;

pub use super::split::{split_messages, summary, Summary};

/// The four delimiters of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field delimiter (usually `|`).
    pub field: u8,
    /// Repeat delimiter (usually `\`).
    pub repeat: u8,
    /// Component delimiter (usually `^`).
    pub component: u8,
    /// Escape character (usually `&`).
    pub escape: u8,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            repeat: b'\\',
            component: b'^',
            escape: b'&',
        }
    }
}

fn bad_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == CR || b == b'\n'
}

impl Delimiters {
    /// Read the delimiters from an H record (`H|\^&...`); `None` if `rec` is not one.
    pub fn from_header(rec: &[u8]) -> Option<Self> {
        let (&h, rest) = rec.split_first()?;
        if h != b'H' {
            return None;
        }
        let field = *rest.first().filter(|&&b| !bad_delim(b))?;
        let mut d = [field, b'\\', b'^', b'&'];
        let declared = rest.get(1..4).unwrap_or(&[]);
        let ok = declared.len() == 3
            && declared.iter().all(|&b| !bad_delim(b) && b != field)
            && declared.first() != declared.get(1)
            && declared.get(1) != declared.get(2)
            && declared.first() != declared.get(2);
        if ok {
            d[1..].copy_from_slice(declared);
        } else if field != b'|' && d[1..].contains(&field) {
            // Fallbacks collide with an unusual field delimiter: use `|` for that one.
            for x in d[1..].iter_mut() {
                if *x == field {
                    *x = b'|';
                }
            }
        }
        Some(Delimiters {
            field: d[0],
            repeat: d[1],
            component: d[2],
            escape: d[3],
        })
    }
}

/// Record type (first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// H: header.
    Header,
    /// P: patient.
    Patient,
    /// O: order.
    Order,
    /// R: result.
    Result,
    /// C: comment.
    Comment,
    /// Q: request (query).
    Query,
    /// M: manufacturer.
    Manufacturer,
    /// S: scientific.
    Scientific,
    /// L: terminator.
    Terminator,
    /// Anything else (kept).
    Other(u8),
}

impl RecordType {
    fn from_byte(b: u8) -> Self {
        match b {
            b'H' => Self::Header,
            b'P' => Self::Patient,
            b'O' => Self::Order,
            b'R' => Self::Result,
            b'C' => Self::Comment,
            b'Q' => Self::Query,
            b'M' => Self::Manufacturer,
            b'S' => Self::Scientific,
            b'L' => Self::Terminator,
            x => Self::Other(x),
        }
    }
}

/// One record (without its CR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

/// One field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

/// One repeat of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

impl<'a> Record<'a> {
    /// View `raw` (one record, no CR) with `delims`.
    pub fn new(raw: &'a [u8], delims: Delimiters) -> Self {
        Record { raw, delims }
    }

    /// The bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The delimiters this record is read with (its message's H record's).
    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    /// The type, from the first byte.
    pub fn record_type(&self) -> RecordType {
        self.raw
            .first()
            .map_or(RecordType::Other(0), |&b| RecordType::from_byte(b))
    }

    /// Fields in order; field 0 is the record type (E1394 field `x.1`).
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let d = self.delims;
        let is_h = self.record_type() == RecordType::Header;
        let raw = self.raw;
        raw.split(move |&b| b == d.field)
            .enumerate()
            .map(move |(i, f)| {
                // H-2 is the delimiter definition: never split it.
                let delims = if is_h && i == 1 {
                    Delimiters {
                        repeat: d.field,
                        component: d.field,
                        escape: d.field,
                        ..d
                    }
                } else {
                    d
                };
                Field { raw: f, delims }
            })
    }

    /// Field by E1394 number (1-based: `H-5` is `field(5)`).
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        self.fields().nth(n.checked_sub(1)?)
    }
}

impl<'a> Field<'a> {
    /// The bytes (still escaped).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Repeats.
    pub fn repeats(&self) -> impl Iterator<Item = Repeat<'a>> + 'a {
        let d = self.delims;
        self.raw
            .split(move |&b| b == d.repeat)
            .map(move |r| Repeat { raw: r, delims: d })
    }

    /// Components of the first repeat.
    pub fn components(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let d = self.delims;
        let first = self
            .raw
            .split(move |&b| b == d.repeat)
            .next()
            .unwrap_or(&[]);
        first.split(move |&b| b == d.component)
    }

    /// Component `n` (1-based) of the first repeat.
    pub fn component(&self, n: usize) -> Option<&'a [u8]> {
        self.components().nth(n.checked_sub(1)?)
    }
}

impl<'a> Repeat<'a> {
    /// The bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Components.
    pub fn components(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let d = self.delims;
        self.raw.split(move |&b| b == d.component)
    }
}

/// Records of `text` (split at CR; an LF directly after a CR and empty records are
/// skipped). Delimiters are taken from the most recent H record (default `|\^&`).
pub fn records(text: &[u8]) -> impl Iterator<Item = Record<'_>> + '_ {
    let mut delims = Delimiters::default();
    text.split(|&b| b == CR)
        .map(|r| r.strip_prefix(b"\n").unwrap_or(r))
        .filter(|r| !r.is_empty())
        .map(move |r| {
            if let Some(d) = Delimiters::from_header(r) {
                delims = d;
            }
            Record { raw: r, delims }
        })
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Resolve escape sequences in `raw` (a component or field) and append to `out`.
/// Unknown or unterminated sequences are copied literally; `&H&`/`&N&` are dropped.
pub fn unescape(raw: &[u8], d: Delimiters, out: &mut impl Sink) {
    let e = d.escape;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != e {
            out.put(b);
            i += 1;
            continue;
        }
        let rest = raw.get(i + 1..).unwrap_or(&[]);
        let Some(end) = rest.iter().position(|&c| c == e) else {
            out.put_all(raw.get(i..).unwrap_or(&[]));
            return;
        };
        let seq = rest.get(..end).unwrap_or(&[]);
        let whole = raw.get(i..i + end + 2).unwrap_or(&[]);
        match seq {
            b"F" => out.put(d.field),
            b"S" => out.put(d.component),
            b"R" => out.put(d.repeat),
            b"E" => out.put(d.escape),
            b"H" | b"N" => {}
            [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
                let valid = hex.iter().all(|&c| hexval(c).is_some());
                if valid {
                    for p in hex.chunks_exact(2) {
                        out.put((hexval(p[0]).unwrap_or(0) << 4) | hexval(p[1]).unwrap_or(0));
                    }
                } else {
                    out.put_all(whole);
                }
            }
            _ => out.put_all(whole),
        }
        i += end + 2;
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn delimiters_from_header() {
        let d = Delimiters::from_header(b"H|@^\\|URM").unwrap();
        assert_eq!(
            (d.field, d.repeat, d.component, d.escape),
            (b'|', b'@', b'^', b'\\')
        );
        let d = Delimiters::from_header(b"H|`^&").unwrap();
        assert_eq!(d.repeat, b'`');
        let d = Delimiters::from_header(b"H|\\\\^&|||x").unwrap();
        assert_eq!(d, Delimiters::default());
        assert!(Delimiters::from_header(b"H").is_none());
    }

    #[test]
    fn fields_repeats_components() {
        let text = b"H|\\^&|||Sender^1.0\rP|1||PID\rO|1|S1||^^^A\\^^^B\rR|1|^^^A|5\rL|1|N\r";
        let s = summary(text);
        assert_eq!(s.sender.as_deref(), Some(&b"Sender"[..]));
        assert_eq!((s.patients, s.orders, s.results, s.queries), (1, 1, 1, 0));
        let o = records(text).nth(2).unwrap();
        let f = o.field(5).unwrap();
        let tests: Vec<_> = f
            .repeats()
            .map(|r| r.components().nth(3).unwrap())
            .collect();
        assert_eq!(tests, [&b"A"[..], b"B"]);
        let h = records(text).next().unwrap();
        assert_eq!(h.field(2).unwrap().components().count(), 1);
    }

    #[test]
    fn escapes() {
        let mut o = Vec::new();
        unescape(
            b"a&F&b&S&c&R&d&E&e&X4142&&H&x&N&&Q&",
            Delimiters::default(),
            &mut o,
        );
        assert_eq!(o, b"a|b^c\\d&eABx&Q&");
        o.clear();
        unescape(b"&X4&&", Delimiters::default(), &mut o);
        assert_eq!(o, b"&X4&&");
    }

    #[test]
    fn split() {
        let t = b"H|\\^&\rL|1\rH|\\^&\rP|1\rH|\\^&\rL|1\r";
        let m: Vec<&[u8]> = split_messages(t).collect();
        assert_eq!(
            m,
            [&b"H|\\^&\rL|1\r"[..], b"H|\\^&\rP|1\r", b"H|\\^&\rL|1\r"]
        );
    }
}
