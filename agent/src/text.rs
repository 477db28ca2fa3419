//! Bytes as text: which encoding a stored message is decoded with, the decoding itself,
//! hex digests, and wire bytes rendered for a terminal. One copy of each, for every
//! protocol and every command.
//!
//! # Which encoding (`encoding = "auto"`)
//!
//! The store keeps the instrument's bytes untouched; the message's meta records the label
//! the uplink decodes them with ([`encoding_label`]). An explicit channel `encoding`
//! always wins. Under `auto`, in this order:
//!
//! 1. bytes that are valid UTF-8 **and** hold at least one multi-byte sequence are UTF-8,
//!    whatever a single-byte declaration (HL7 MSH-18 `8859/1`, …) says: real Latin-1 or
//!    windows-1252 text almost never forms valid multi-byte UTF-8 (an accented letter
//!    would have to be followed by exactly the right continuation bytes), while
//!    instruments that declare `8859/1` and send UTF-8 exist (Roche cITm, fixture
//!    `roche_citm_2.hl7`, whose `·` would otherwise arrive as `Â·`);
//! 2. a declaration (MSH-18) naming a set the decoder knows: `ASCII` only when the bytes
//!    are ASCII, and a multi-byte set (Shift_JIS, GBK, …) is kept even over rule 1, as
//!    its bytes may well be valid UTF-8 by accident;
//! 3. UTF-8 when the bytes are valid UTF-8 (plain ASCII among them);
//! 4. windows-1252, what instruments that send accented names without saying so use.
//!
//! ASTM and raw messages have no declaration: rules 1, 3 and 4.

use labagent_config::Encoding;

/// The encoding label stored in a message's meta (a WHATWG label [`decode`] accepts).
/// `declared` is what the message says about itself (an HL7 MSH-18 mapped to a label),
/// `None` for protocols without a declaration.
pub fn encoding_label(enc: &Encoding, declared: Option<&str>, bytes: &[u8]) -> String {
    let label = match enc {
        Encoding::Label(l) => return l.clone(),
        Encoding::Auto => {
            let utf8 = std::str::from_utf8(bytes).is_ok();
            let multibyte_utf8 = utf8 && !bytes.is_ascii();
            // MSH-18 `ASCII` cannot describe bytes over 0x7F (Mindray declares it).
            let declared = declared
                .and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()).map(|e| (l, e)))
                .filter(|(l, _)| *l != "us-ascii" || bytes.is_ascii());
            match declared {
                Some((_, e)) if multibyte_utf8 && e.is_single_byte() => "utf-8",
                Some((l, _)) => l,
                None if utf8 => "utf-8",
                None => "windows-1252",
            }
        }
    };
    label.to_string()
}

/// Decodes `bytes` per an encoding label (WHATWG labels: `utf-8`, `latin1`,
/// `windows-1252`, `iso-8859-15`, ...). Unknown labels and invalid sequences fall back to
/// UTF-8 with replacement characters; nothing is dropped silently.
pub fn decode(bytes: &[u8], label: &str) -> String {
    decode_with(bytes, encoding(label))
}

/// The encoding a label names; unknown labels read as UTF-8 (see [`decode`]).
pub fn encoding(label: &str) -> &'static encoding_rs::Encoding {
    encoding_rs::Encoding::for_label(label.trim().as_bytes()).unwrap_or(encoding_rs::UTF_8)
}

/// [`decode`] with the encoding looked up already (several fields of one message). ASCII
/// reads the same in every ASCII-compatible encoding, so it is copied as it is.
pub fn decode_with(bytes: &[u8], enc: &'static encoding_rs::Encoding) -> String {
    match std::str::from_utf8(bytes) {
        Ok(t) if bytes.is_ascii() && enc.is_ascii_compatible() => t.to_string(),
        _ => enc.decode(bytes).0.into_owned(),
    }
}

/// Lower-case hex, two digits per byte (digests, tokens).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Names for the ASCII control bytes a technician meets on an instrument line.
pub fn control_name(b: u8) -> Option<&'static str> {
    Some(match b {
        0x00 => "NUL",
        0x01 => "SOH",
        0x02 => "STX",
        0x03 => "ETX",
        0x04 => "EOT",
        0x05 => "ENQ",
        0x06 => "ACK",
        0x0b => "VT",
        0x0a => "LF",
        0x0d => "CR",
        0x10 => "DLE",
        0x15 => "NAK",
        0x17 => "ETB",
        0x1c => "FS",
        0x1d => "GS",
        0x1e => "RS",
        0x1f => "US",
        0x7f => "DEL",
        _ => return None,
    })
}

/// Wire bytes as text on one line: printable ASCII as is, control bytes named (`<STX>`),
/// other bytes as `<xHH>`.
pub fn render_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 16);
    for &b in bytes {
        if let Some(n) = control_name(b) {
            s.push('<');
            s.push_str(n);
            s.push('>');
        } else if (0x20..0x7f).contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("<x{b:02X}>"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MSH-18 `8859/1` over UTF-8 bytes, as the Roche cITm sends (`roche_citm_2.hl7`).
    const CITM: &[u8] = b"MSH|^~\\&|cobas8000|LAB|Host||20020607||ORU^R01|1|P|2.3|||||\
|8859/1\rNTE|1|L|1st\xc2\xb7comment\xc2\xb7on\xc2\xb7patient\r";

    fn msh18(bytes: &[u8]) -> Option<&'static str> {
        let v = labagent_hal::hl7::msh::MshView::new_checked(bytes).ok()?;
        labagent_hal::hl7::charset::encoding_label(v.charset())
    }

    #[test]
    fn valid_multibyte_utf8_wins_over_a_single_byte_declaration() {
        assert_eq!(msh18(CITM), Some("iso-8859-1"));
        let label = encoding_label(&Encoding::Auto, msh18(CITM), CITM);
        assert_eq!(label, "utf-8");
        let text = decode(CITM, &label);
        assert!(text.contains("1st·comment·on·patient"), "{text}");
        assert!(!text.contains("Â·"), "{text}");
        // Followed blindly, the declaration gives the mojibake the issue saw.
        assert!(decode(CITM, "iso-8859-1").contains("Â·"));
    }

    /// The hal's copy of the shared corpus file (PID-5 replaced).
    #[test]
    fn the_fixture_decodes_without_mojibake() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hal/tests/fixtures/hl7/roche_citm_2.hl7");
        let bytes = std::fs::read(&p).unwrap();
        let label = encoding_label(&Encoding::Auto, msh18(&bytes), &bytes);
        assert_eq!(label, "utf-8");
        let text = decode(&bytes, &label);
        assert!(text.contains('·') && !text.contains("Â·"), "{text}");
    }

    #[test]
    fn declarations_and_fallbacks() {
        let auto = Encoding::Auto;
        // Real Latin-1 (é = E9 alone) is not UTF-8: the declaration holds.
        let latin = b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.3||||||8859/1\rNTE|1||\xe9\r";
        assert_eq!(encoding_label(&auto, msh18(latin), latin), "iso-8859-1");
        // An explicit label always wins, even over valid multi-byte UTF-8.
        let explicit = Encoding::Label("windows-1252".into());
        assert_eq!(encoding_label(&explicit, msh18(CITM), CITM), "windows-1252");
        // Unknown MSH-18: UTF-8 when valid, else windows-1252.
        let odd = "MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.3||||||KLINGON\rNTE|1||é\r";
        assert_eq!(
            encoding_label(&auto, msh18(odd.as_bytes()), odd.as_bytes()),
            "utf-8"
        );
        assert_eq!(encoding_label(&auto, None, b"\xe9"), "windows-1252");
        // `ASCII` declared over bytes above 0x7F (Mindray): not trusted.
        assert_eq!(
            encoding_label(&auto, Some("us-ascii"), b"ok \xe9"),
            "windows-1252"
        );
        assert_eq!(encoding_label(&auto, Some("us-ascii"), b"ok"), "us-ascii");
        // A multi-byte declaration is kept even when the bytes happen to be valid UTF-8.
        let sjis = "\u{3042}".as_bytes();
        assert_eq!(encoding_label(&auto, Some("shift_jis"), sjis), "shift_jis");
        // ASTM and raw: no declaration.
        assert_eq!(encoding_label(&auto, None, "Müller".as_bytes()), "utf-8");
        assert_eq!(encoding_label(&auto, None, b"plain"), "utf-8");
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn renders_control_bytes() {
        assert_eq!(render_bytes(&[0x06]), "<ACK>");
        assert_eq!(
            render_bytes(&[0x0b, b'M', 0xe9, 0x1c, 0x0d]),
            "<VT>M<xE9><FS><CR>"
        );
    }

    #[test]
    fn decode_with_copies_ascii_and_decodes_the_rest() {
        let latin1 = encoding("latin1");
        assert_eq!(decode_with(b"ORU^R01", latin1), "ORU^R01");
        assert_eq!(decode_with(b"M\xfcller", latin1), "M\u{fc}ller");
        assert_eq!(
            decode_with("Müller".as_bytes(), encoding("utf-8")),
            "Müller"
        );
        assert_eq!(encoding("no such label"), encoding_rs::UTF_8);
    }
}
