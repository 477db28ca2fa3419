//! The specimen ids an order names, for the order cache's index (host queries match an
//! order by them).
//!
//! - ASTM: O-3 (the specimen id; the record type is field 1), every repeat, every
//!   non-empty component. Delimiters come from the H record (`H|\^&`: field, repeat,
//!   component, escape), else the defaults. The text may still carry framing: control
//!   characters (STX, ETX, ETB, ...) and a frame number before a record type (`2P|`,
//!   `3O|` — one LIS leaves them in its order download) are skipped, and a line that is
//!   not a record (a frame checksum) is ignored.
//! - HL7: ORC-2, ORC-3, OBR-2, OBR-3 (each repeat's first component) and SPM-2 (each
//!   repeat's first component, first subcomponent). Separators come from MSH.
//! - raw: none.
//!
//! Ids are trimmed; empty ones and ids holding a NUL are left out; each id once, in the
//! order found. An order whose ids cannot be read gets none: it is never matched by a
//! query.

use super::Protocol;

/// The specimen ids in an order's text (see the module doc).
pub fn order_specimens(protocol: Protocol, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    match protocol {
        Protocol::Astm => astm(text, &mut out),
        Protocol::Hl7 => hl7(text, &mut out),
        Protocol::Raw => {}
    }
    out
}

fn push(out: &mut Vec<String>, id: &str) {
    let id = id.trim();
    if !id.is_empty() && !id.contains('\0') && !out.iter().any(|x| x == id) {
        out.push(id.to_string());
    }
}

/// Lines of `text` with framing removed: leading control characters and frame digits.
fn records(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n']).filter_map(|line| {
        let line = line.trim_start_matches(|c: char| c.is_ascii_control());
        let line = line.trim_start_matches(|c: char| c.is_ascii_digit());
        (!line.is_empty()).then_some(line)
    })
}

fn astm(text: &str, out: &mut Vec<String>) {
    let (mut field, mut repeat, mut component) = ('|', '\\', '^');
    for rec in records(text) {
        let mut cs = rec.chars();
        let kind = cs.next().unwrap_or(' ').to_ascii_uppercase();
        if kind == 'H' {
            let d: Vec<char> = cs.take(3).collect();
            if let [f, r, c] = d[..] {
                (field, repeat, component) = (f, r, c);
            }
            continue;
        }
        if kind != 'O' || !rec.get(1..).is_some_and(|r| r.starts_with(field)) {
            continue;
        }
        // Field 1 is the record type: O-3 is the third piece.
        let Some(o3) = rec.split(field).nth(2) else {
            continue;
        };
        let o3 = o3.trim_end_matches(|c: char| c.is_ascii_control());
        for rep in o3.split(repeat) {
            for comp in rep.split(component) {
                push(out, comp);
            }
        }
    }
}

fn hl7(text: &str, out: &mut Vec<String>) {
    let (mut field, mut component, mut repeat, mut sub) = ('|', '^', '~', '&');
    for seg in records(text) {
        let name: String = seg.chars().take(3).collect();
        if name == "MSH" {
            let d: Vec<char> = seg.chars().skip(3).take(5).collect();
            if d.len() >= 5 {
                (field, component, repeat, sub) = (d[0], d[1], d[2], d[4]);
            } else if let [f, c, r, ..] = d[..] {
                (field, component, repeat) = (f, c, r);
            }
            continue;
        }
        let fields: &[usize] = match name.as_str() {
            "ORC" | "OBR" => &[2, 3],
            "SPM" => &[2],
            _ => continue,
        };
        if !seg.get(3..).is_some_and(|r| r.starts_with(field)) {
            continue;
        }
        let parts: Vec<&str> = seg.split(field).collect();
        for &i in fields {
            let Some(f) = parts.get(i) else { continue };
            for rep in f.split(repeat) {
                let first = rep.split(component).next().unwrap_or("");
                let first = if name == "SPM" {
                    first.split(sub).next().unwrap_or("")
                } else {
                    first
                };
                push(out, first);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture of ../shared/fixtures/astm-wire (as in tests/fhir_mapping.rs).
    fn fixture(name: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = [
            root.join("../shared/fixtures"),
            std::path::PathBuf::from("/work/shared/fixtures"),
        ]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("../shared/fixtures not found");
        let p = dir.join("astm-wire").join(name);
        String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
            .into_owned()
    }

    #[test]
    fn vitros_order_download_with_stray_frame_digits() {
        let text = fixture("nish_ortho_vitros3600_order_download.bin");
        assert_eq!(order_specimens(Protocol::Astm, &text), ["1068687"]);
        // The same without framing, as an upstream would send it.
        let clean = "H|\\^&|||3600796||||||||LIS2-A|20201121111002\rP|1|||||||\r\
                     O|1|1068687||^^^1.0000+002+1.0|R||20201121111002||||N||||5||||||||||O\rL|1|N\r";
        assert_eq!(order_specimens(Protocol::Astm, clean), ["1068687"]);
    }

    #[test]
    fn erba_order_download_with_backtick_repeats() {
        let text = fixture("nish_erba_xl1000_order_download.bin");
        assert_eq!(order_specimens(Protocol::Astm, &text), ["12121212"]);
    }

    #[test]
    fn every_repeat_and_component_of_o3() {
        let text = "H|`^&\rO|1|A1^B2`C3^^|X9||\rO|2|A1|||\rO|3||||\r";
        assert_eq!(order_specimens(Protocol::Astm, text), ["A1", "B2", "C3"]);
        // Default delimiters without an H record; lowercase record type; LF lines.
        assert_eq!(
            order_specimens(Protocol::Astm, "o|1| S1 \\S2|\n"),
            ["S1", "S2"]
        );
        assert!(order_specimens(Protocol::Astm, "garbage\u{0}|||").is_empty());
        assert!(order_specimens(Protocol::Astm, "").is_empty());
        assert!(order_specimens(Protocol::Raw, "O|1|X|").is_empty());
    }

    #[test]
    fn hl7_orc_obr_spm() {
        let text = "MSH|^~\\&|LIS||AN||20240101||OML^O33|1|P|2.5.1\r\
                    PID|1||P1\r\
                    SPM|1|SP1&LIS^FILL~SP2||\r\
                    ORC|NW|PL1^LIS|FI1\r\
                    OBR|1|PL1|FI2|GLU\r";
        assert_eq!(
            order_specimens(Protocol::Hl7, text),
            ["SP1", "SP2", "PL1", "FI1", "FI2"]
        );
        // Other separators from MSH.
        let odd = "MSH#$*\\@#LIS\rORC#NW#A$x*B$y\r";
        assert_eq!(order_specimens(Protocol::Hl7, odd), ["A", "B"]);
        assert!(order_specimens(Protocol::Hl7, "MSH|^~\\&|\rPID|1\r").is_empty());
    }
}
