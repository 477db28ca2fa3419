//! Durations (`"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"7d"`) and sizes (`"512MiB"`, `"1GB"`,
//! `"4096"` or a plain integer), parsed and printed.
//!
//! Printing picks the largest unit that represents the value exactly, so a printed value
//! always parses back to the same number.

use std::time::Duration;

/// What a duration must look like; part of every duration error message.
pub const DURATION_EXPECTED: &str =
    "expected a duration like \"500ms\", \"30s\", \"10m\", \"2h\" or \"7d\" (units: ms, s, m, h, d)";

/// What a size must look like; part of every size error message.
pub const SIZE_EXPECTED: &str =
    "expected a size like \"512MiB\", \"1GB\", \"64KiB\" or a number of bytes \
     (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";

const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Splits `"30s"` into `(30, "s")`; `None` when there is no leading number.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n = text[..digits].parse::<u64>().ok()?;
    Some((n, text[digits..].trim_start()))
}

/// Parses a duration string. The error is the full sentence to show after the key.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{DURATION_EXPECTED}, got \"{text}\"");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let (_, millis) = DURATION_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .ok_or_else(bad)?;
    let ms = n
        .checked_mul(*millis)
        .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses a size string (a plain number is bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{SIZE_EXPECTED}, got \"{text}\"");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    if unit.is_empty() {
        return Ok(n);
    }
    let (_, mult) = SIZE_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .ok_or_else(bad)?;
    n.checked_mul(*mult)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Formats a duration with the largest exact unit (`Duration::from_secs(600)` → `"10m"`).
/// Sub-millisecond parts cannot be written in the config and are truncated.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0ms".to_owned();
    }
    let (unit, mult) = DURATION_UNITS
        .iter()
        .rev()
        .find(|(_, m)| ms % m == 0)
        .copied()
        .unwrap_or(("ms", 1));
    format!("{}{unit}", ms / mult)
}

/// Formats a size with the largest exact binary unit, else decimal, else bytes.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    for (unit, mult) in SIZE_UNITS.iter().rev() {
        if *mult > 1 && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("30x")
            .unwrap_err()
            .contains("expected a duration"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("9999999999999999d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12XB").unwrap_err().contains("expected a size"));
        assert!(parse_size("99999999TiB").is_err());
    }

    #[test]
    fn printing_round_trips() {
        for d in [
            1, 500, 1000, 30_000, 600_000, 7_200_000, 86_400_000, 90_061_001,
        ] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        for s in [0, 1, 4096, 65536, 1 << 30, 1_000_000_000, 123_456_789] {
            assert_eq!(parse_size(&format_size(s)), Ok(s));
        }
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    }
}
