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
//! panics on any input; nothing allocates except [`unescape`].

use alloc::vec::Vec;

use super::CR;

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

fn is_l(rec: &[u8]) -> bool {
    match rec {
        [b'L'] => true,
        [b'L', d, ..] => !d.is_ascii_alphanumeric(),
        _ => false,
    }
}

/// Split a transmission's text into messages: a message ends after its L record, or
/// before the next H record when an L is missing. Each slice keeps its CRs.
pub fn split_messages(text: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut msg_start = 0;
    let mut rec_start = 0;
    let mut has_content = false;
    for (i, &b) in text.iter().enumerate() {
        if b != CR {
            continue;
        }
        let rec = text.get(rec_start..i).unwrap_or(&[]);
        let rec_t = rec.strip_prefix(b"\n").unwrap_or(rec);
        if Delimiters::from_header(rec_t).is_some() && has_content && rec_start > msg_start {
            out.push(text.get(msg_start..rec_start).unwrap_or(&[]));
            msg_start = rec_start;
        }
        if !rec_t.is_empty() {
            has_content = true;
        }
        if is_l(rec_t) {
            out.push(text.get(msg_start..=i).unwrap_or(&[]));
            msg_start = i + 1;
            has_content = false;
        }
        rec_start = i + 1;
    }
    let tail = text.get(msg_start..).unwrap_or(&[]);
    if tail.iter().any(|&b| !matches!(b, CR | b'\n')) {
        out.push(tail);
    }
    out
}

/// What the agent stores as meta for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary<'a> {
    /// H-5, first component (sender name), escaped bytes.
    pub sender: Option<&'a [u8]>,
    /// P records.
    pub patients: usize,
    /// O records.
    pub orders: usize,
    /// R records.
    pub results: usize,
    /// Q records.
    pub queries: usize,
    /// All records.
    pub records: usize,
}

/// Summarise a message (or a whole transmission).
pub fn summary(text: &[u8]) -> Summary<'_> {
    let mut s = Summary::default();
    for r in records(text) {
        s.records += 1;
        match r.record_type() {
            RecordType::Header if s.sender.is_none() => {
                s.sender = r
                    .field(5)
                    .and_then(|f| f.component(1))
                    .filter(|c| !c.is_empty());
            }
            RecordType::Patient => s.patients += 1,
            RecordType::Order => s.orders += 1,
            RecordType::Result => s.results += 1,
            RecordType::Query => s.queries += 1,
            _ => {}
        }
    }
    s
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
pub fn unescape(raw: &[u8], d: Delimiters, out: &mut Vec<u8>) {
    let e = d.escape;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != e {
            out.push(b);
            i += 1;
            continue;
        }
        let rest = raw.get(i + 1..).unwrap_or(&[]);
        let Some(end) = rest.iter().position(|&c| c == e) else {
            out.extend_from_slice(raw.get(i..).unwrap_or(&[]));
            return;
        };
        let seq = rest.get(..end).unwrap_or(&[]);
        match seq {
            b"F" => out.push(d.field),
            b"S" => out.push(d.component),
            b"R" => out.push(d.repeat),
            b"E" => out.push(d.escape),
            b"H" | b"N" => {}
            [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
                let decoded: Option<Vec<u8>> = hex
                    .chunks(2)
                    .map(|p| match p {
                        [a, b] => Some((hexval(*a)? << 4) | hexval(*b)?),
                        _ => None,
                    })
                    .collect();
                match decoded {
                    Some(v) => out.extend_from_slice(&v),
                    None => out.extend_from_slice(raw.get(i..i + end + 2).unwrap_or(&[])),
                }
            }
            _ => out.extend_from_slice(raw.get(i..i + end + 2).unwrap_or(&[])),
        }
        i += end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.sender, Some(&b"Sender"[..]));
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
        let m = split_messages(t);
        assert_eq!(
            m,
            [&b"H|\\^&\rL|1\r"[..], b"H|\\^&\rP|1\r", b"H|\\^&\rL|1\r"]
        );
    }
}
