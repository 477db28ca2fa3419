//! Reading values the way the mapping table says: numbers, comparators, units, reference
//! ranges, abnormal flags and result statuses.

/// A FHIR decimal as text, exactly as sent (trailing zeros are precision, FHIR keeps them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

/// A plain decimal number: optional sign, digits, at most one decimal point (a single
/// decimal comma counts as a point). Returned as a valid JSON number with the precision
/// kept: `+4,20` → `4.20`, `.5` → `0.5`, `007` → `7`. Exponents, thousands separators
/// and anything else: `None`.
pub fn decimal(text: &str) -> Option<Decimal> {
    let t = text.trim();
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let seps = body.bytes().filter(|&b| b == b'.' || b == b',').count();
    if seps > 1 {
        return None;
    }
    let (int, frac) = match body.find(['.', ',']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.unwrap_or("").bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if int.is_empty() && frac.map_or(true, str::is_empty) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut out = String::with_capacity(t.len() + 1);
    let zero = int.is_empty() && frac.map_or(true, |f| f.bytes().all(|b| b == b'0'));
    if neg && !zero {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if let Some(f) = frac.filter(|f| !f.is_empty()) {
        out.push('.');
        out.push_str(f);
    }
    Some(Decimal(out))
}

/// `<5`, `>=1.2`, `5`: the comparator and the number.
pub fn comparator_decimal(text: &str) -> Option<(Option<&'static str>, Decimal)> {
    let t = text.trim();
    for (op, fhir) in [("<=", "<="), (">=", ">="), ("<", "<"), (">", ">")] {
        if let Some(rest) = t.strip_prefix(op) {
            return decimal(rest).map(|d| (Some(fhir), d));
        }
    }
    decimal(t).map(|d| (None, d))
}

/// A reference range read as the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    /// `70-110`, `70 to 110`, `<5` (high), `>1` (low).
    Bounds {
        low: Option<Decimal>,
        high: Option<Decimal>,
    },
    /// Anything else: kept as text.
    Text(String),
}

pub fn range(text: &str) -> Option<Range> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let bounds = |low, high| Some(Range::Bounds { low, high });
    if let Some(rest) = t.strip_prefix("<=").or_else(|| t.strip_prefix('<')) {
        if let Some(h) = decimal(rest) {
            return bounds(None, Some(h));
        }
    }
    if let Some(rest) = t.strip_prefix(">=").or_else(|| t.strip_prefix('>')) {
        if let Some(l) = decimal(rest) {
            return bounds(Some(l), None);
        }
    }
    if let Some((a, b)) = t.split_once(" to ") {
        if let (Some(l), Some(h)) = (decimal(a), decimal(b)) {
            return bounds(Some(l), Some(h));
        }
    }
    // `70-110`, `-5-5`, `-10--2`: the dash that separates is the first one after a digit.
    let bytes = t.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] == b'-' && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b' ') {
            if let (Some(l), Some(h)) = (decimal(&t[..i]), decimal(&t[i + 1..])) {
                return bounds(Some(l), Some(h));
            }
        }
    }
    Some(Range::Text(t.to_string()))
}

/// v3 ObservationInterpretation code and display for an abnormal flag.
pub fn interpretation(flag: &str) -> Option<(&'static str, &'static str)> {
    Some(match flag.trim() {
        "L" => ("L", "Low"),
        "H" => ("H", "High"),
        "LL" => ("LL", "Critical low"),
        "HH" => ("HH", "Critical high"),
        "N" => ("N", "Normal"),
        "A" => ("A", "Abnormal"),
        "<" => ("<", "Off scale low"),
        ">" => (">", "Off scale high"),
        _ => return None,
    })
}

/// Result status (R-9, OBX-11) → FHIR Observation.status.
pub fn status(code: &str) -> &'static str {
    match code.trim() {
        "F" | "V" | "R" => "final",
        "P" => "preliminary",
        "C" => "corrected",
        "X" => "cancelled",
        "I" => "registered",
        _ => "unknown",
    }
}

/// The UCUM code of a unit as instruments write it, for the common lab units; `None`:
/// not in the table (the unit is then sent as text only).
pub fn ucum(unit: &str) -> Option<&'static str> {
    let u = unit.trim();
    UNITS.iter().find(|(k, _)| *k == u).map(|(_, v)| *v)
}

/// Unit text → UCUM code. Exact spellings: UCUM is case-sensitive (mmol vs Mmol).
const UNITS: &[(&str, &str)] = &[
    ("mg/dL", "mg/dL"),
    ("mg/dl", "mg/dL"),
    ("g/dL", "g/dL"),
    ("g/dl", "g/dL"),
    ("g/L", "g/L"),
    ("g/l", "g/L"),
    ("mg/L", "mg/L"),
    ("mg/l", "mg/L"),
    ("ug/L", "ug/L"),
    ("µg/L", "ug/L"),
    ("ug/dL", "ug/dL"),
    ("µg/dL", "ug/dL"),
    ("ug/mL", "ug/mL"),
    ("µg/mL", "ug/mL"),
    ("ng/mL", "ng/mL"),
    ("ng/ml", "ng/mL"),
    ("ng/dL", "ng/dL"),
    ("ng/L", "ng/L"),
    ("pg/mL", "pg/mL"),
    ("pg/ml", "pg/mL"),
    ("mmol/L", "mmol/L"),
    ("mmol/l", "mmol/L"),
    ("umol/L", "umol/L"),
    ("umol/l", "umol/L"),
    ("µmol/L", "umol/L"),
    ("μmol/L", "umol/L"),
    ("nmol/L", "nmol/L"),
    ("nmol/l", "nmol/L"),
    ("pmol/L", "pmol/L"),
    ("pmol/l", "pmol/L"),
    ("mmol/mol", "mmol/mol"),
    ("mEq/L", "meq/L"),
    ("mmol/kg", "mmol/kg"),
    ("mOsm/kg", "mosm/kg"),
    ("U/L", "U/L"),
    ("U/l", "U/L"),
    ("IU/L", "[IU]/L"),
    ("IU/l", "[IU]/L"),
    ("U/mL", "U/mL"),
    ("kU/L", "kU/L"),
    ("IU/mL", "[IU]/mL"),
    ("mIU/mL", "m[IU]/mL"),
    ("mIU/ml", "m[IU]/mL"),
    ("uIU/mL", "u[IU]/mL"),
    ("µIU/mL", "u[IU]/mL"),
    ("nkat/L", "nkat/L"),
    ("ukat/L", "ukat/L"),
    ("µkat/L", "ukat/L"),
    ("10*9/L", "10*9/L"),
    ("10^9/L", "10*9/L"),
    ("x10^9/L", "10*9/L"),
    ("10E9/L", "10*9/L"),
    ("10*12/L", "10*12/L"),
    ("10^12/L", "10*12/L"),
    ("x10^12/L", "10*12/L"),
    ("10E12/L", "10*12/L"),
    ("10*3/uL", "10*3/uL"),
    ("10^3/uL", "10*3/uL"),
    ("x10^3/uL", "10*3/uL"),
    ("10^3/µL", "10*3/uL"),
    ("10*6/uL", "10*6/uL"),
    ("10^6/uL", "10*6/uL"),
    ("x10^6/uL", "10*6/uL"),
    ("10^6/µL", "10*6/uL"),
    ("/uL", "/uL"),
    ("/µL", "/uL"),
    ("%", "%"),
    ("fL", "fL"),
    ("fl", "fL"),
    ("pg", "pg"),
    ("g", "g"),
    ("mg", "mg"),
    ("s", "s"),
    ("sec", "s"),
    ("min", "min"),
    ("mm/h", "mm/h"),
    ("mm/hr", "mm/h"),
    ("mmHg", "mm[Hg]"),
    ("mm[Hg]", "mm[Hg]"),
    ("kPa", "kPa"),
    ("Cel", "Cel"),
    ("°C", "Cel"),
    ("mL/min", "mL/min"),
    ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
    ("ratio", "{ratio}"),
    ("INR", "{INR}"),
    ("pH", "[pH]"),
    ("/HPF", "/[HPF]"),
    ("/LPF", "/[LPF]"),
    ("g/24h", "g/(24.h)"),
    ("mg/24h", "mg/(24.h)"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Option<String> {
        decimal(s).map(|d| d.0)
    }

    #[test]
    fn decimals_keep_precision() {
        assert_eq!(d("4.20"), Some("4.20".into()));
        assert_eq!(d(" 98.2 "), Some("98.2".into()));
        assert_eq!(d("4,220000"), Some("4.220000".into()));
        assert_eq!(d("+5"), Some("5".into()));
        assert_eq!(d("-0.0515"), Some("-0.0515".into()));
        assert_eq!(d(".5"), Some("0.5".into()));
        assert_eq!(d("5."), Some("5".into()));
        assert_eq!(d("007"), Some("7".into()));
        assert_eq!(d("-0"), Some("0".into()));
        for bad in [
            "", "-", ".", "1.2.3", "1,2.3", "1e5", "12 3", "abc", "1/2", "???", "Negative",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn comparators() {
        assert_eq!(
            comparator_decimal("<0.5"),
            Some((Some("<"), Decimal("0.5".into())))
        );
        assert_eq!(
            comparator_decimal(">=12"),
            Some((Some(">="), Decimal("12".into())))
        );
        assert_eq!(comparator_decimal("12"), Some((None, Decimal("12".into()))));
        assert_eq!(comparator_decimal("<<1"), None);
    }

    #[test]
    fn ranges() {
        let b = |l: Option<&str>, h: Option<&str>| {
            Some(Range::Bounds {
                low: l.map(|x| Decimal(x.into())),
                high: h.map(|x| Decimal(x.into())),
            })
        };
        assert_eq!(range("70-110"), b(Some("70"), Some("110")));
        assert_eq!(range("4.00-10.00"), b(Some("4.00"), Some("10.00")));
        assert_eq!(range("70 to 110"), b(Some("70"), Some("110")));
        assert_eq!(range(" 3.5 - 5.1 "), b(Some("3.5"), Some("5.1")));
        assert_eq!(range("-5-5"), b(Some("-5"), Some("5")));
        assert_eq!(range("<5"), b(None, Some("5")));
        assert_eq!(range(">1"), b(Some("1"), None));
        assert_eq!(range("70_105"), Some(Range::Text("70_105".into())));
        assert_eq!(range("negative"), Some(Range::Text("negative".into())));
        assert_eq!(range("  "), None);
    }

    #[test]
    fn tables() {
        assert_eq!(status("F"), "final");
        assert_eq!(status("V"), "final");
        assert_eq!(status("R"), "final");
        assert_eq!(status("P"), "preliminary");
        assert_eq!(status("C"), "corrected");
        assert_eq!(status("X"), "cancelled");
        assert_eq!(status("I"), "registered");
        assert_eq!(status(""), "unknown");
        assert_eq!(status("Z"), "unknown");
        assert_eq!(interpretation("HH"), Some(("HH", "Critical high")));
        assert_eq!(interpretation("~"), None);
        assert_eq!(ucum(" umol/L "), Some("umol/L"));
        assert_eq!(ucum("10^9/L"), Some("10*9/L"));
        assert_eq!(ucum("furlongs"), None);
    }

    #[test]
    fn every_ucum_code_in_the_table_is_valid_ucum() {
        for (unit, code) in UNITS {
            assert!(labagent_config::ucum::is_valid(code), "{unit} -> {code}");
        }
    }
}
