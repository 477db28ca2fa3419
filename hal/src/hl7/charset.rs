//! MSH-18 (HL7 table 0211) → WHATWG encoding label.
//!
//! Decoding happens in the agent (encoding_rs); the hal only names the encoding. The
//! returned strings are labels `encoding_rs::Encoding::for_label` accepts. `None` means
//! "unknown or not decodable from an MLLP byte stream": the agent then falls back
//! (UTF-8 if valid, else windows-1252, per PROTOCOLS.md).
//!
//! Decisions:
//! - A bare `UNICODE` (Erba ELite 580) maps to UTF-8. The table once meant UCS-2, but
//!   UTF-16 cannot travel inside MLLP (its bytes would collide with VT/FS/CR), and the
//!   real sender's bytes are ASCII.
//! - `UNICODE UTF-16` / `UNICODE UTF-32` → `None`, for the same reason.
//! - `ISO IR87` (JIS X 0208 with ISO 2022 escapes) → `iso-2022-jp`; `ISO IR14`
//!   (JIS X 0201) → `shift_jis`, whose single-byte range is JIS X 0201; `ISO IR159`
//!   (JIS X 0212) → `None` (no WHATWG decoder).
//! - Matching ignores ASCII case, surrounding spaces, and `_`/`-`/space differences
//!   (`UNICODE_UTF-8`, `ISO-IR 100` and `8859-1` all occur in the wild).

/// The WHATWG label for an MSH-18 value, or `None` if unknown/undecodable.
pub fn encoding_label(msh18: &[u8]) -> Option<&'static str> {
    // Normalise into a small stack buffer: uppercase, separators removed.
    let mut key = [0u8; 24];
    let mut n = 0;
    for &b in msh18 {
        if matches!(b, b' ' | b'_' | b'-' | b'/' | b'.') {
            continue;
        }
        if n == key.len() {
            return None;
        }
        key[n] = b.to_ascii_uppercase();
        n += 1;
    }
    let k = &key[..n];
    Some(match k {
        b"ASCII" | b"USASCII" | b"ISOIR6" => "us-ascii",
        b"88591" | b"ISOIR100" | b"ISO88591" | b"LATIN1" => "iso-8859-1",
        b"88592" | b"ISOIR101" | b"ISO88592" => "iso-8859-2",
        b"88593" | b"ISOIR109" | b"ISO88593" => "iso-8859-3",
        b"88594" | b"ISOIR110" | b"ISO88594" => "iso-8859-4",
        b"88595" | b"ISOIR144" | b"ISO88595" => "iso-8859-5",
        b"88596" | b"ISOIR127" | b"ISO88596" => "iso-8859-6",
        b"88597" | b"ISOIR126" | b"ISO88597" => "iso-8859-7",
        b"88598" | b"ISOIR138" | b"ISO88598" => "iso-8859-8",
        b"88599" | b"ISOIR148" | b"ISO88599" => "iso-8859-9",
        b"885915" | b"ISO885915" | b"ISOIR203" => "iso-8859-15",
        b"UNICODE" | b"UNICODEUTF8" | b"UTF8" | b"ISOIR192" => "utf-8",
        b"ISOIR87" => "iso-2022-jp",
        b"ISOIR14" | b"SHIFTJIS" | b"SJIS" => "shift_jis",
        b"ISOIR149" | b"KSX1001" | b"KSC5601" => "euc-kr",
        b"ISOIR58" | b"GB2312" => "gbk",
        b"GB18030" => "gb18030",
        b"BIG5" => "big5",
        b"WINDOWS1252" | b"CP1252" => "windows-1252",
        b"WINDOWS1251" | b"CP1251" => "windows-1251",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::encoding_label;

    #[test]
    fn table_0211() {
        for (v, l) in [
            (&b"8859/1"[..], Some("iso-8859-1")),
            (b"8859/15", Some("iso-8859-15")),
            (b"UNICODE UTF-8", Some("utf-8")),
            (b"UNICODE", Some("utf-8")),
            (b" unicode utf-8 ", Some("utf-8")),
            (b"ASCII", Some("us-ascii")),
            (b"ISO IR87", Some("iso-2022-jp")),
            (b"ISO IR14", Some("shift_jis")),
            (b"ISO IR159", None),
            (b"UNICODE UTF-16", None),
            (b"GB 18030-2000", None),
            (b"", None),
            (b"a very long value that overflows the key buffer", None),
        ] {
            assert_eq!(encoding_label(v), l, "{:?}", core::str::from_utf8(v));
        }
    }
}
