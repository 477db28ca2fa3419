//! HL7 v2 escape sequences, with the message's own delimiters.
//!
//! With the usual escape character `\`: `\F\` field, `\S\` component, `\T\`
//! subcomponent, `\R\` repetition, `\E\` escape, `\P\` truncation (v2.7, only when MSH-2
//! has a fifth character), `\Xhh..\` raw bytes, `\H\`/`\N\` highlight on/off.
//!
//! [`unescape`] never fails and never panics: a sequence it does not understand
//! (`\.br\`, `\Cxxyy\`, a malformed `\X..\`, an unterminated `\...`) is copied through
//! literally, so no byte of a result is lost. Highlighting markers carry no text and are
//! dropped. [`escape`] is its inverse for the delimiter characters (and CR/LF, as `\X0D\`
//! / `\X0A\`). The round trip holds for every escape character except letters and
//! digits the codes themselves use (`E`, `X`, ...): MSH-2 allows them, no sender uses them.

use super::msh::Delimiters;
use crate::buf::Sink;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Append the unescaped form of `input` to `out`.
pub fn unescape_into(input: &[u8], d: &Delimiters, out: &mut impl Sink) {
    let e = d.escape;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != e {
            out.put(b);
            i += 1;
            continue;
        }
        // Find the closing escape character.
        let Some(len) = input[i + 1..].iter().position(|c| *c == e) else {
            out.put_all(&input[i..]);
            return;
        };
        let body = &input[i + 1..i + 1 + len];
        let whole = &input[i..i + len + 2];
        match body {
            b"F" => out.put(d.field),
            b"S" => out.put(d.component),
            b"T" => out.put(d.subcomponent),
            b"R" => out.put(d.repetition),
            b"E" => out.put(d.escape),
            b"P" if d.truncation.is_some() => {
                if let Some(t) = d.truncation {
                    out.put(t)
                }
            }
            b"H" | b"N" => {}
            [b'X', hexes @ ..] if !hexes.is_empty() && hexes.len() % 2 == 0 => {
                let ok = hexes.iter().all(|h| hex(*h).is_some());
                if ok {
                    for pair in hexes.chunks_exact(2) {
                        let hi = hex(pair[0]).unwrap_or(0);
                        let lo = hex(pair[1]).unwrap_or(0);
                        out.put(hi << 4 | lo);
                    }
                } else {
                    out.put_all(whole);
                }
            }
            _ => out.put_all(whole),
        }
        i += len + 2;
    }
}

/// The unescaped form of `input`.
#[cfg(feature = "alloc")]
pub fn unescape(input: &[u8], d: &Delimiters) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    unescape_into(input, d, &mut out);
    out
}

/// Append `input` to `out`, escaping every delimiter character (and CR/LF as `\X0D\` /
/// `\X0A\`, which would otherwise end a segment).
pub fn escape_into(input: &[u8], d: &Delimiters, out: &mut impl Sink) {
    for &b in input {
        let code: Option<&[u8]> = if b == d.escape {
            Some(b"E")
        } else if b == d.field {
            Some(b"F")
        } else if b == d.component {
            Some(b"S")
        } else if b == d.subcomponent {
            Some(b"T")
        } else if b == d.repetition {
            Some(b"R")
        } else if Some(b) == d.truncation {
            Some(b"P")
        } else if b == b'\r' {
            Some(b"X0D")
        } else if b == b'\n' {
            Some(b"X0A")
        } else {
            None
        };
        match code {
            Some(c) => {
                out.put(d.escape);
                out.put_all(c);
                out.put(d.escape);
            }
            None => out.put(b),
        }
    }
}

/// The escaped form of `input`.
#[cfg(feature = "alloc")]
pub fn escape(input: &[u8], d: &Delimiters) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    escape_into(input, d, &mut out);
    out
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let d = Delimiters::default();
        assert_eq!(
            unescape(b"1\\S\\2.14 a\\F\\b\\R\\c\\T\\d\\E\\e\\X0D0A\\f", &d),
            b"1^2.14 a|b~c&d\\e\r\nf"
        );
        assert_eq!(unescape(b"\\H\\HI\\N\\x", &d), b"HIx");
        assert_eq!(
            unescape(b"\\.br\\ \\X0\\ \\Xzz\\ \\P\\ end\\", &d),
            b"\\.br\\ \\X0\\ \\Xzz\\ \\P\\ end\\"
        );
        let d5 = Delimiters {
            truncation: Some(b'#'),
            ..d
        };
        assert_eq!(unescape(b"a\\P\\b", &d5), b"a#b");
        assert_eq!(
            escape(b"a|^~\\&#\r", &d5),
            b"a\\F\\\\S\\\\R\\\\E\\\\T\\\\P\\\\X0D\\"
        );
    }

    #[test]
    fn custom_delimiters_round_trip() {
        let d = Delimiters {
            field: b'!',
            component: b'$',
            repetition: b'r',
            escape: b'?',
            subcomponent: b'@',
            truncation: None,
        };
        let raw = b"x!y$z?rr@\n";
        let e = escape(raw, &d);
        assert_eq!(unescape(&e, &d), raw);
    }
}
