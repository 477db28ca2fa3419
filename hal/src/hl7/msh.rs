//! A zero-copy view of an HL7 v2 message header (MSH) and its segments.
//!
//! [`MshView::new_checked`] validates once and records where each MSH field lies; after
//! that no accessor can panic (they return empty slices for absent fields). Values are
//! raw bytes, still escaped and in the message's own character set: the agent decodes
//! (MSH-18, see [`super::charset`]) and unescapes ([`super::escape`]) what it needs.
//!
//! Decisions:
//! - **Separators are read, never assumed.** MSH-1 is the byte after `MSH`; MSH-2 holds 4
//!   encoding characters (component, repetition, escape, subcomponent) or 5 (v2.7 adds
//!   the truncation character, usually `#`). Any bytes are accepted (hl7apy's test uses
//!   `!` and `$r?@`) as long as they are distinct, not CR/LF and not the field separator.
//! - **Leading noise:** a UTF-8 BOM and ASCII whitespace (space, tab, CR, LF) before
//!   `MSH` are skipped; anything else is [`MshError::NotHl7`].
//! - **Segment ends:** CR is the standard; LF and CR LF from sloppy senders (and files
//!   edited on other systems) also end a segment. LF cannot occur in HL7 content (it
//!   would be escaped as `\X0A\`), so this costs nothing. Empty segments are skipped.
//! - MSH-15/MSH-16 values outside table 0155 (Mindray sends `0` and `2` in MSH-16 to tell
//!   results from QC) are reported as [`AckCondition::Other`] and do *not* switch the
//!   message to enhanced mode: the sender clearly does not speak it.

/// The highest MSH field number whose position is recorded.
pub const MSH_FIELDS: usize = 21;

/// Separators of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    /// MSH-1, usually `|`.
    pub field: u8,
    /// Usually `^`.
    pub component: u8,
    /// Usually `~`.
    pub repetition: u8,
    /// Usually `\`.
    pub escape: u8,
    /// Usually `&`.
    pub subcomponent: u8,
    /// v2.7 truncation character (usually `#`), if MSH-2 has a fifth character.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as it should be written: 4 or 5 encoding characters.
    pub fn encoding_chars(&self) -> ([u8; 5], usize) {
        let mut a = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
            0,
        ];
        match self.truncation {
            Some(t) => {
                a[4] = t;
                (a, 5)
            }
            None => (a, 4),
        }
    }

    /// Is `b` one of the separators (field or encoding characters)?
    pub fn is_special(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || b == self.escape
            || b == self.subcomponent
            || Some(b) == self.truncation
    }
}

/// Why bytes are not a usable HL7 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MshError {
    /// Does not start with `MSH` (after optional BOM/whitespace).
    NotHl7,
    /// Ends before MSH-2 is complete.
    TooShort,
    /// The field separator is CR, LF or missing.
    BadFieldSeparator,
    /// MSH-2 is not 4 or 5 distinct usable characters.
    BadEncodingCharacters,
}

impl core::fmt::Display for MshError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MshError::NotHl7 => "not an HL7 message (no MSH segment)",
            MshError::TooShort => "MSH segment too short",
            MshError::BadFieldSeparator => "invalid MSH-1 field separator",
            MshError::BadEncodingCharacters => "invalid MSH-2 encoding characters",
        })
    }
}

/// MSH-15 / MSH-16 (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// Field empty.
    Empty,
    /// `AL`: always.
    Always,
    /// `NE`: never.
    Never,
    /// `ER`: only on error/reject.
    Error,
    /// `SU`: only on success.
    Success,
    /// Any other value (not a table 0155 code): treated like empty.
    Other,
}

impl AckCondition {
    fn parse(v: &[u8]) -> Self {
        let v = trim(v);
        if v.is_empty() {
            return AckCondition::Empty;
        }
        if v.len() != 2 {
            return AckCondition::Other;
        }
        match [v[0].to_ascii_uppercase(), v[1].to_ascii_uppercase()] {
            [b'A', b'L'] => AckCondition::Always,
            [b'N', b'E'] => AckCondition::Never,
            [b'E', b'R'] => AckCondition::Error,
            [b'S', b'U'] => AckCondition::Success,
            _ => AckCondition::Other,
        }
    }

    /// True for a table 0155 code (what switches a message to enhanced mode).
    pub fn is_set(self) -> bool {
        !matches!(self, AckCondition::Empty | AckCondition::Other)
    }
}

/// MSH-9 split into its components (raw bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType<'a> {
    /// MSH-9.1, e.g. `ORU`.
    pub code: &'a [u8],
    /// MSH-9.2, e.g. `R01`.
    pub trigger: &'a [u8],
    /// MSH-9.3, e.g. `ORU_R01` (often absent before v2.4).
    pub structure: &'a [u8],
}

/// A validated view of a message's MSH segment, borrowing the message bytes.
#[derive(Debug, Clone, Copy)]
pub struct MshView<'a> {
    buf: &'a [u8],
    start: usize,
    delims: Delimiters,
    /// `fields[n]` = byte range of MSH-n for n in 2..=MSH_FIELDS (0 and 1 unused).
    fields: [(u32, u32); MSH_FIELDS + 1],
    nfields: usize,
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().position(|b| *b != b' ').unwrap_or(v.len());
    let e = v.iter().rposition(|b| *b != b' ').map_or(s, |i| i + 1);
    v.get(s..e).unwrap_or(&[])
}

fn is_seg_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

impl<'a> MshView<'a> {
    /// Validate `buf` as an HL7 message and index its MSH fields.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, MshError> {
        let mut start = 0;
        if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            start = 3;
        }
        while start < buf.len() && matches!(buf[start], b' ' | b'\t' | b'\r' | b'\n') {
            start += 1;
        }
        let rest = &buf[start..];
        if rest.len() < 3 {
            return Err(if b"MSH".starts_with(rest) && rest.len() < 3 {
                MshError::TooShort
            } else {
                MshError::NotHl7
            });
        }
        if &rest[..3] != b"MSH" {
            return Err(MshError::NotHl7);
        }
        let field = *rest.get(3).ok_or(MshError::TooShort)?;
        if is_seg_end(field) || field.is_ascii_alphanumeric() || field == b' ' {
            return Err(MshError::BadFieldSeparator);
        }
        // MSH-2: up to the next field separator or segment end.
        let enc_start = 4;
        let enc_len = rest[enc_start..]
            .iter()
            .position(|b| *b == field || is_seg_end(*b))
            .unwrap_or(rest.len() - enc_start);
        let enc = &rest[enc_start..enc_start + enc_len];
        if enc.len() < 4 || enc.len() > 5 {
            return Err(if enc_start + enc_len == rest.len() && enc.len() < 4 {
                MshError::TooShort
            } else {
                MshError::BadEncodingCharacters
            });
        }
        for (i, &c) in enc.iter().enumerate() {
            if c == field || enc[..i].contains(&c) || c == b' ' {
                return Err(MshError::BadEncodingCharacters);
            }
        }
        let delims = Delimiters {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
            truncation: enc.get(4).copied(),
        };
        // Index fields 2.. of the MSH segment.
        let seg_end = rest
            .iter()
            .position(|b| is_seg_end(*b))
            .unwrap_or(rest.len());
        let mut fields = [(0u32, 0u32); MSH_FIELDS + 1];
        let mut n = 2;
        let mut pos = enc_start; // start of MSH-2
        let to_u32 = |x: usize| u32::try_from(start + x).unwrap_or(u32::MAX);
        loop {
            let end = rest[pos..seg_end]
                .iter()
                .position(|b| *b == field)
                .map_or(seg_end, |i| pos + i);
            fields[n] = (to_u32(pos), to_u32(end));
            if end >= seg_end || n == MSH_FIELDS {
                break;
            }
            n += 1;
            pos = end + 1;
        }
        if buf.len() > u32::MAX as usize {
            return Err(MshError::TooShort);
        }
        Ok(MshView {
            buf,
            start,
            delims,
            fields,
            nfields: n,
        })
    }

    /// The whole message as given.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The message from `MSH` on (leading BOM/whitespace removed).
    pub fn message(&self) -> &'a [u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    /// The message's separators.
    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    /// The number of MSH fields present (counting MSH-1), capped at [`MSH_FIELDS`].
    pub fn field_count(&self) -> usize {
        self.nfields
    }

    /// MSH-`n` as raw bytes; empty if absent. MSH-1 is the separator itself; fields past
    /// [`MSH_FIELDS`] are not indexed and come back empty.
    pub fn field(&self, n: usize) -> &'a [u8] {
        if n == 1 {
            let i = self.start + 3;
            return self.buf.get(i..i + 1).unwrap_or(&[]);
        }
        if n < 2 || n > self.nfields {
            return &[];
        }
        let (s, e) = self.fields[n];
        self.buf.get(s as usize..e as usize).unwrap_or(&[])
    }

    /// Component `c` (1-based) of the first repetition of MSH-`n`.
    pub fn component(&self, n: usize, c: usize) -> &'a [u8] {
        let f = self.field(n);
        let first = f
            .split(|b| *b == self.delims.repetition)
            .next()
            .unwrap_or(&[]);
        if c == 0 {
            return &[];
        }
        first
            .split(|b| *b == self.delims.component)
            .nth(c - 1)
            .unwrap_or(&[])
    }

    /// MSH-3 sending application (whole field, components included).
    pub fn sending_application(&self) -> &'a [u8] {
        self.field(3)
    }
    /// MSH-4 sending facility.
    pub fn sending_facility(&self) -> &'a [u8] {
        self.field(4)
    }
    /// MSH-5 receiving application.
    pub fn receiving_application(&self) -> &'a [u8] {
        self.field(5)
    }
    /// MSH-6 receiving facility.
    pub fn receiving_facility(&self) -> &'a [u8] {
        self.field(6)
    }
    /// MSH-7 date/time of message.
    pub fn timestamp(&self) -> &'a [u8] {
        self.field(7)
    }
    /// MSH-9 message type, trigger event and structure.
    pub fn message_type(&self) -> MessageType<'a> {
        MessageType {
            code: self.component(9, 1),
            trigger: self.component(9, 2),
            structure: self.component(9, 3),
        }
    }
    /// MSH-10 message control id.
    pub fn control_id(&self) -> &'a [u8] {
        self.field(10)
    }
    /// MSH-11 processing id (e.g. `P`, `D`, `T`; may carry a mode component).
    pub fn processing_id(&self) -> &'a [u8] {
        self.field(11)
    }
    /// MSH-12 version id (e.g. `2.3.1`).
    pub fn version(&self) -> &'a [u8] {
        self.field(12)
    }
    /// MSH-15 accept acknowledgement type.
    pub fn accept_ack_type(&self) -> AckCondition {
        AckCondition::parse(self.field(15))
    }
    /// MSH-16 application acknowledgement type.
    pub fn application_ack_type(&self) -> AckCondition {
        AckCondition::parse(self.field(16))
    }
    /// True when MSH-15 or MSH-16 holds a table 0155 code (enhanced acknowledgement mode).
    pub fn is_enhanced_mode(&self) -> bool {
        self.accept_ack_type().is_set() || self.application_ack_type().is_set()
    }
    /// MSH-18 character set: the first repetition, trimmed (empty if absent). Map it
    /// with [`super::charset::encoding_label`].
    pub fn charset(&self) -> &'a [u8] {
        let f = self.field(18);
        trim(
            f.split(|b| *b == self.delims.repetition)
                .next()
                .unwrap_or(&[]),
        )
    }

    /// The segments of the whole message (MSH first), split on CR, LF or CR LF, empty
    /// ones skipped.
    pub fn segments(&self) -> Segments<'a> {
        Segments {
            rest: self.message(),
        }
    }
}

/// Iterator over segments; see [`MshView::segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let end = self
                .rest
                .iter()
                .position(|b| is_seg_end(*b))
                .unwrap_or(self.rest.len());
            let seg = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or(&[]);
            if !seg.is_empty() {
                return Some(seg);
            }
        }
    }
}

/// A segment's id (its first three bytes, or fewer if it is shorter).
pub fn segment_id(seg: &[u8]) -> &[u8] {
    seg.get(..3).unwrap_or(seg)
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;

    #[test]
    fn golden_header() {
        let m = b"MSH|^~\\&|LAB|ELAB|HIS|H1|20240101||ORU^R01^ORU_R01|C1|P|2.5|||AL|NE||8859/1~UNICODE UTF-8\rPID|1\n\r\nOBX|1\r";
        let v = MshView::new_checked(m).unwrap();
        assert_eq!(v.field(1), b"|");
        assert_eq!(v.field(2), b"^~\\&");
        assert_eq!(v.sending_application(), b"LAB");
        assert_eq!(v.receiving_facility(), b"H1");
        assert_eq!(v.message_type().trigger, b"R01");
        assert_eq!(v.message_type().structure, b"ORU_R01");
        assert_eq!(v.control_id(), b"C1");
        assert_eq!(v.version(), b"2.5");
        assert_eq!(v.accept_ack_type(), AckCondition::Always);
        assert_eq!(v.application_ack_type(), AckCondition::Never);
        assert_eq!(v.charset(), b"8859/1");
        assert_eq!(v.field(19), b"");
        assert_eq!(v.field(99), b"");
        let segs: alloc::vec::Vec<_> = v.segments().map(segment_id).collect();
        assert_eq!(segs, [b"MSH", b"PID", b"OBX"]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            MshView::new_checked(b"PID|1").unwrap_err(),
            MshError::NotHl7
        );
        assert_eq!(MshView::new_checked(b"MS").unwrap_err(), MshError::TooShort);
        assert_eq!(
            MshView::new_checked(b"MSH|^~").unwrap_err(),
            MshError::TooShort
        );
        assert_eq!(
            MshView::new_checked(b"MSH\r").unwrap_err(),
            MshError::BadFieldSeparator
        );
        assert_eq!(
            MshView::new_checked(b"MSH|^^\\&|").unwrap_err(),
            MshError::BadEncodingCharacters
        );
        assert!(MshView::new_checked(b"\xEF\xBB\xBF\r\nMSH|^~\\&").is_ok());
        // Mindray's MSH-16 "2" is not enhanced mode
        let v = MshView::new_checked(b"MSH|^~\\&|||||||ORU^R01|1|P|2.3.1||||2").unwrap();
        assert_eq!(v.application_ack_type(), AckCondition::Other);
        assert!(!v.is_enhanced_mode());
    }
}
