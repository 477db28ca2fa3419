//! The `[[channel]]` keys of `format = "fhir"`: `code_map`, `timezone`,
//! `patient_id_system`, `fhir_skip_qc`, `fhir_qc_markers`, `code_component`.
//!
//! Decisions worth knowing:
//! - A code map is its own TOML file (one table per local code, see [`CodeMap`]); it is
//!   read and checked here, so `check-config` reports its problems with the code map's
//!   own file, line and column, and a SIGHUP re-reads it.
//! - A LOINC code is checked for its form and its mod-10 check digit (a typo is an
//!   error); a unit that is not UCUM as far as [`crate::ucum`] knows is a warning.
//! - `timezone` must name a zone of the system's tzdata (`/usr/share/zoneinfo`): an
//!   unknown name is an error, because every result time would be off by hours.
//! - The keys are validated whatever the uplink's format; the model keeps them (in
//!   [`crate::Uplink::fhir`]) for every channel when `format = "fhir"`, and otherwise
//!   only for channels that set one.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::check::Ctx;
use crate::error::Diagnostic;
use crate::schema::{RawChannel, S};

/// Default of `fhir_skip_qc`.
pub const SKIP_QC: bool = true;
/// QC markers always recognised (E1394 H-12 / O-12 = `Q`).
pub const QC_MARKERS: &[&str] = &["Q"];

/// The FHIR mapping settings of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelFhir {
    /// `code_map`: local test code → LOINC.
    pub code_map: Option<CodeMap>,
    /// `timezone`: IANA name of the instrument clock's zone; `None`: the host's.
    pub timezone: Option<String>,
    /// `patient_id_system`: the identifier system of the patient ids the instrument sends.
    pub patient_id_system: Option<String>,
    /// `fhir_skip_qc`: QC messages are kept as delivered-by-policy, not posted.
    pub skip_qc: bool,
    /// `fhir_qc_markers`: values that mark QC besides `Q` (Mindray `QR`), matched against
    /// ASTM H-12 and O-12, HL7 MSH-11, MSH-16 and SPM-11.
    pub qc_markers: Vec<String>,
    /// `code_component`: which component of R-3's test id is the code (1-based); `None`:
    /// the first non-empty one.
    pub code_component: Option<u32>,
}

impl ChannelFhir {
    /// Every default: no code map, the host's zone, QC skipped.
    pub fn defaults() -> Self {
        ChannelFhir {
            skip_qc: SKIP_QC,
            ..Default::default()
        }
    }

    /// Whether any key differs from the defaults (what is printed).
    pub fn is_default(&self) -> bool {
        *self == Self::defaults()
    }
}

/// One code map file.
///
/// ```toml
/// # local code = LOINC code, display, UCUM unit
/// [GLU]
/// loinc = "2345-7"
/// display = "Glucose [Mass/volume] in Serum or Plasma"
/// unit = "mg/dL"
///
/// "1/1/not" = { loinc = "2986-8", unit = "pg/mL" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMap {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Local code (as the instrument sends it, case-sensitive) → entry.
    pub codes: BTreeMap<String, CodeMapEntry>,
}

/// What a local code maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMapEntry {
    /// LOINC code, e.g. `2345-7`.
    pub loinc: String,
    pub display: Option<String>,
    /// UCUM unit, e.g. `mg/dL`; replaces the unit the instrument sends.
    pub unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    loinc: S<String>,
    display: S<String>,
    unit: S<String>,
}

/// Validates the FHIR keys of one channel; `k` renders a key path.
pub fn channel(
    ctx: &mut Ctx<'_>,
    ch: &Spanned<RawChannel>,
    k: &dyn Fn(&str) -> String,
) -> ChannelFhir {
    let c = ch.get_ref();
    let mut out = ChannelFhir::defaults();
    if let Some(p) = &c.code_map {
        let path = ctx.abs_path(p, &k("code_map"));
        if path.is_absolute() {
            out.code_map = load_code_map(ctx, &path, &p.span(), &k("code_map"));
        }
    }
    if let Some(tz) = &c.timezone {
        match check_timezone(tz.get_ref()) {
            Ok(()) => out.timezone = Some(tz.get_ref().clone()),
            Err(e) => ctx.error(&tz.span(), &k("timezone"), e),
        }
    }
    if let Some(s) = &c.patient_id_system {
        let v = s.get_ref();
        if v.is_empty() || v.chars().any(char::is_whitespace) || !v.contains(':') {
            ctx.error(
                &s.span(),
                &k("patient_id_system"),
                format!("expected a URI like \"urn:oid:1.2.3\" or \"https://hospital.example/mrn\", got \"{v}\""),
            );
        } else {
            out.patient_id_system = Some(v.clone());
        }
    }
    out.skip_qc = ctx.value(&c.fhir_skip_qc, SKIP_QC);
    if let Some(m) = &c.fhir_qc_markers {
        for v in m.get_ref() {
            if v.trim().is_empty() {
                ctx.error(
                    &m.span(),
                    &k("fhir_qc_markers"),
                    "markers must not be empty",
                );
            } else if !QC_MARKERS.contains(&v.as_str()) && !out.qc_markers.contains(v) {
                out.qc_markers.push(v.clone());
            }
        }
    }
    if let Some(n) = &c.code_component {
        out.code_component = Some(ctx.int(&Some(n.clone()), &k("code_component"), 1, 1, 32));
    }
    out
}

/// Whether the system tzdata has zone `name`.
pub fn check_timezone(name: &str) -> Result<(), String> {
    let ok_chars = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        && !name.starts_with('/')
        && !name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if !ok_chars {
        return Err(format!(
            "expected an IANA time zone name like \"Europe/Berlin\" or \"America/Chicago\", got \"{name}\""
        ));
    }
    match tz::TimeZone::from_posix_tz(&format!(":{name}")) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "unknown time zone \"{name}\": not in the system's tzdata (/usr/share/zoneinfo); expected a name like \"Europe/Berlin\" (install the tzdata package if none is found)"
        )),
    }
}

/// LOINC: 1 to 7 digits, `-`, the mod-10 check digit.
pub fn check_loinc(code: &str) -> Result<(), String> {
    let Some((num, check)) = code.split_once('-') else {
        return Err(format!(
            "expected a LOINC code like \"2345-7\", got \"{code}\""
        ));
    };
    if num.is_empty()
        || num.len() > 7
        || !num.bytes().all(|b| b.is_ascii_digit())
        || check.len() != 1
        || !check.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "expected a LOINC code like \"2345-7\", got \"{code}\""
        ));
    }
    let want = loinc_check_digit(num);
    if check.as_bytes()[0] - b'0' != want {
        return Err(format!(
            "\"{code}\" is not a LOINC code: its check digit should be {want} (\"{num}-{want}\"); a typo?"
        ));
    }
    Ok(())
}

/// The mod-10 check digit of LOINC (Luhn over the digits, rightmost doubled).
fn loinc_check_digit(num: &str) -> u8 {
    let mut sum = 0u32;
    for (i, b) in num.bytes().rev().enumerate() {
        let d = u32::from(b - b'0');
        sum += if i % 2 == 0 {
            let x = d * 2;
            x / 10 + x % 10
        } else {
            d
        };
    }
    ((10 - sum % 10) % 10) as u8
}

/// Reads and checks a code map; its diagnostics name the code map file. `span`/`key`: the
/// `code_map` key in the config, for a file that cannot be read at all.
pub fn load_code_map(
    ctx: &mut Ctx<'_>,
    path: &Path,
    span: &Range<usize>,
    key: &str,
) -> Option<CodeMap> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                span,
                key,
                format!("cannot read code map {}: {e}", path.display()),
            );
            return None;
        }
    };
    let (map, errors, warnings) = parse_code_map(&text, path);
    let ok = errors.is_empty();
    ctx.errors.extend(errors);
    ctx.warnings.extend(warnings);
    ok.then_some(map)
}

/// Parses code map text; returns the map and its errors and warnings (file = `path`).
pub fn parse_code_map(text: &str, path: &Path) -> (CodeMap, Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut map = CodeMap {
        path: path.to_path_buf(),
        codes: BTreeMap::new(),
    };
    let raw: BTreeMap<Spanned<String>, Spanned<RawEntry>> = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let mut d = crate::parse::diagnostic(text, path, &e);
            if d.key.is_empty() {
                d.message = format!("code map: {}", d.message);
            } else {
                d.message = format!("code map entry {}", d.message);
            }
            return (map, vec![d], Vec::new());
        }
    };
    let mut cx = Ctx::new(text, path);
    for (code, entry) in raw {
        let key = format!("code \"{}\"", code.get_ref());
        let e = entry.get_ref();
        if code.get_ref().trim().is_empty() {
            cx.error(&code.span(), &key, "a local code must not be empty");
            continue;
        }
        let loinc = match &e.loinc {
            None => {
                cx.error(
                    &entry.span(),
                    &format!("{key}.loinc"),
                    "is required (e.g. loinc = \"2345-7\")",
                );
                continue;
            }
            Some(l) => {
                if let Err(m) = check_loinc(l.get_ref()) {
                    cx.error(&l.span(), &format!("{key}.loinc"), m);
                    continue;
                }
                l.get_ref().clone()
            }
        };
        let unit = e.unit.as_ref().map(|u| {
            if !crate::ucum::is_valid(u.get_ref()) {
                cx.warn(
                    &u.span(),
                    &format!("{key}.unit"),
                    format!(
                        "\"{}\" is not a UCUM unit labagent knows (UCUM is case-sensitive: mg/dL, umol/L, 10*9/L, [IU]/L); it is sent as text only",
                        u.get_ref()
                    ),
                );
            }
            u.get_ref().clone()
        });
        map.codes.insert(
            code.get_ref().clone(),
            CodeMapEntry {
                loinc,
                display: e.display.as_ref().map(|d| d.get_ref().clone()),
                unit,
            },
        );
    }
    (map, cx.errors, cx.warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loinc_check_digits() {
        for ok in [
            "2345-7", "718-7", "4548-4", "11502-2", "2986-8", "6690-2", "777-3",
        ] {
            assert_eq!(check_loinc(ok), Ok(()), "{ok}");
        }
        let e = check_loinc("2345-8").unwrap_err();
        assert!(e.contains("2345-7"), "{e}");
        assert!(check_loinc("2345").is_err());
        assert!(check_loinc("23a5-7").is_err());
        assert!(check_loinc("12345678-1").is_err());
    }

    #[test]
    fn code_map_errors_have_positions_and_units_are_flagged() {
        let text = "\"1/1/not\" = { loinc = \"2986-9\", unit = \"pg/ml\" }\n[GLU]\nloinc = \"2345-7\"\nunit = \"mg/dL\"\n\n[NA]\nloinc = \"2951-2\"\nunit = \"mmol/l\"\n\n[K]\nloinc = \"2823-3\"\nunit = \"mEq/L\"\n";
        let (map, errors, warnings) = parse_code_map(text, Path::new("/etc/codes.toml"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.line, e.col), (1, 23), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/codes.toml:1:23: code \"1/1/not\".loinc"),
            "{e}"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].line, 12);
        assert!(warnings[0].message.contains("mEq/L"));
        assert_eq!(map.codes["GLU"].loinc, "2345-7");
        assert_eq!(map.codes["NA"].unit.as_deref(), Some("mmol/l"));
        assert!(!map.codes.contains_key("1/1/not"));
    }

    #[test]
    fn code_map_syntax_and_unknown_keys() {
        let (_, e, _) = parse_code_map(
            "[GLU]\nloinc = \"2345-7\"\nunits = \"mg/dL\"\n",
            Path::new("/c.toml"),
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 3, "{}", e[0]);
        assert!(e[0].message.contains("unknown key `units`"), "{}", e[0]);
        assert_eq!(e[0].hint.as_deref(), Some("unit"));
        let (_, e, _) = parse_code_map("[GLU\nloinc = 1\n", Path::new("/c.toml"));
        assert_eq!((e.len(), e[0].line), (1, 1), "{e:?}");
    }

    #[test]
    fn timezones() {
        assert_eq!(check_timezone("Europe/Berlin"), Ok(()));
        assert_eq!(check_timezone("UTC"), Ok(()));
        assert!(check_timezone("Europe/Berln")
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(check_timezone("../etc/passwd").is_err());
        assert!(check_timezone("/usr/share/zoneinfo/UTC").is_err());
        assert!(check_timezone("CET-1CEST").is_err());
    }
}
