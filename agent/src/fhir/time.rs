//! Instrument timestamps (`YYYYMMDDHHMMSS`, HL7 `TS` with optional fraction and offset) to
//! FHIR `dateTime`.
//!
//! Instruments send local time without a zone. FHIR requires an offset on every
//! `dateTime` that has a time, so the channel's `timezone` (an IANA zone read from the
//! system tzdata, default the host's) supplies the offset that was in force at that local
//! time. In the hour a DST change repeats, the earlier (summer) offset is taken; in the
//! hour it skips, the offset before the change. A time that is only a date stays a date.

use std::fmt::Write;

/// A timestamp as sent: civil fields to the precision given, and an offset if the sender
/// gave one (HL7 `+0100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    /// `None`: date only.
    pub time: Option<(u8, u8, u8)>,
    /// Milliseconds, when the sender gave a fraction.
    pub millis: Option<u16>,
    /// Seconds east of UTC, when the sender gave it.
    pub offset: Option<i32>,
}

fn num(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |a, &b| {
        a.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl Ts {
    /// `YYYYMMDD[HH[MM[SS[.S+]]]][+/-ZZZZ]`; `None` for anything else (or an impossible
    /// date such as month 13). Separators some instruments add (`2019-07`, `12:30`) make
    /// it `None` too: a wrong time is worse than none.
    pub fn parse(text: &str) -> Option<Ts> {
        let t = text.trim();
        let (body, offset) = match t.find(['+', '-']) {
            Some(i) => {
                let (b, z) = t.split_at(i);
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let z = &z.as_bytes()[1..];
                if z.len() != 4 {
                    return None;
                }
                let hh = num(&z[..2])? as i32;
                let mm = num(&z[2..])? as i32;
                if hh > 14 || mm > 59 {
                    return None;
                }
                (b, Some(sign * (hh * 3600 + mm * 60)))
            }
            None => (t, None),
        };
        let (digits, frac) = match body.split_once('.') {
            Some((d, f)) => (d, Some(f)),
            None => (body, None),
        };
        let b = digits.as_bytes();
        if !matches!(b.len(), 8 | 10 | 12 | 14) {
            return None;
        }
        let year = num(&b[..4])? as i32;
        let month = num(&b[4..6])? as u8;
        let day = num(&b[6..8])? as u8;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let time = if b.len() > 8 {
            let h = num(&b[8..10])? as u8;
            let mi = if b.len() >= 12 {
                num(&b[10..12])? as u8
            } else {
                0
            };
            let s = if b.len() >= 14 {
                num(&b[12..14])? as u8
            } else {
                0
            };
            if h > 23 || mi > 59 || s > 59 {
                return None;
            }
            Some((h, mi, s))
        } else {
            None
        };
        let millis = match frac {
            Some(f) if b.len() == 14 && !f.is_empty() && f.len() <= 4 => {
                let n = num(f.as_bytes())?;
                Some(match f.len() {
                    1 => n * 100,
                    2 => n * 10,
                    3 => n,
                    _ => n / 10,
                } as u16)
            }
            Some(_) => return None,
            None => None,
        };
        Some(Ts {
            year,
            month,
            day,
            time,
            millis,
            offset: if time.is_some() { offset } else { None },
        })
    }

    /// Seconds since the epoch of these civil fields read as UTC.
    fn civil_secs(&self) -> i64 {
        let (h, m, s) = self.time.unwrap_or((0, 0, 0));
        let days = crate::calendar::days_from_civil(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s)
    }

    /// FHIR `dateTime`: the date alone, or with the time and the sender's offset, else the
    /// offset of `zone` at that local time.
    pub fn to_fhir(&self, zone: &Zone) -> String {
        let mut o = format!("{:04}-{:02}-{:02}", self.year, self.month, self.day);
        let Some((h, m, s)) = self.time else {
            return o;
        };
        let _ = write!(o, "T{h:02}:{m:02}:{s:02}");
        if let Some(ms) = self.millis {
            let _ = write!(o, ".{ms:03}");
        }
        let off = self
            .offset
            .unwrap_or_else(|| zone.offset_at_local(self.civil_secs()));
        if off == 0 {
            o.push_str("+00:00");
        } else {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            let _ = write!(o, "{sign}{:02}:{:02}", a / 3600, a % 3600 / 60);
        }
        o
    }
}

/// A time zone: a tzdata zone, or a fixed offset (tests, UTC).
#[derive(Debug, Clone)]
pub enum Zone {
    Tz(tz::TimeZone),
    Fixed(i32),
}

/// Why a zone cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("time zone {name:?}: {detail}")]
pub struct ZoneError {
    pub name: String,
    pub detail: String,
}

impl Zone {
    /// The channel's `timezone` (`None`: the host's, from `TZ` or `/etc/localtime`; UTC if
    /// the host has neither).
    pub fn load(name: Option<&str>) -> Result<Zone, ZoneError> {
        match name {
            Some(n) => tz::TimeZone::from_posix_tz(&format!(":{n}"))
                .map(Zone::Tz)
                .map_err(|e| ZoneError {
                    name: n.to_string(),
                    detail: e.to_string(),
                }),
            None => {
                if let Ok(tz) = std::env::var("TZ") {
                    if let Ok(z) = tz::TimeZone::from_posix_tz(&tz) {
                        return Ok(Zone::Tz(z));
                    }
                }
                Ok(tz::TimeZone::local().map_or(Zone::Fixed(0), Zone::Tz))
            }
        }
    }

    fn offset_at_utc(&self, unix: i64) -> i32 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Tz(z) => z.find_local_time_type(unix).map_or(0, |t| t.ut_offset()),
        }
    }

    /// The offset in force at a local (civil) time, given as seconds read as UTC.
    pub fn offset_at_local(&self, local: i64) -> i32 {
        // The offset one day before and after bracket any single DST change; the earlier
        // offset that maps back onto this local time wins (the summer hour, when repeated).
        let before = self.offset_at_utc(local - 86_400);
        let after = self.offset_at_utc(local + 86_400);
        for off in [before, after] {
            if self.offset_at_utc(local - i64::from(off)) == off {
                return off;
            }
        }
        // A skipped hour: no offset maps back; the one before the change.
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> Zone {
        Zone::load(Some("Europe/Berlin")).unwrap()
    }

    #[test]
    fn forms() {
        let z = Zone::Fixed(0);
        assert_eq!(
            Ts::parse("20191207171714").unwrap().to_fhir(&z),
            "2019-12-07T17:17:14+00:00"
        );
        assert_eq!(Ts::parse("20191207").unwrap().to_fhir(&z), "2019-12-07");
        assert_eq!(
            Ts::parse("201912071717").unwrap().to_fhir(&z),
            "2019-12-07T17:17:00+00:00"
        );
        assert_eq!(
            Ts::parse("20240206081727.12+0100").unwrap().to_fhir(&z),
            "2024-02-06T08:17:27.120+01:00"
        );
        assert_eq!(
            Ts::parse("20240206081727-0530").unwrap().to_fhir(&z),
            "2024-02-06T08:17:27-05:30"
        );
        for bad in [
            "",
            "2019",
            "20191307",
            "20190230",
            "2019-07",
            "20191207251714",
            "2019120717171",
            "x0191207",
        ] {
            assert_eq!(Ts::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn zone_offsets_follow_dst() {
        let z = berlin();
        assert_eq!(
            Ts::parse("20250115120000").unwrap().to_fhir(&z),
            "2025-01-15T12:00:00+01:00"
        );
        assert_eq!(
            Ts::parse("20250715120000").unwrap().to_fhir(&z),
            "2025-07-15T12:00:00+02:00"
        );
        // 2025-10-26 02:30 happens twice: the first (summer) one.
        assert_eq!(
            Ts::parse("20251026023000").unwrap().to_fhir(&z),
            "2025-10-26T02:30:00+02:00"
        );
        // 2025-03-30 02:30 does not exist: the offset before the change.
        assert_eq!(
            Ts::parse("20250330023000").unwrap().to_fhir(&z),
            "2025-03-30T02:30:00+01:00"
        );
        let ny = Zone::load(Some("America/New_York")).unwrap();
        assert_eq!(
            Ts::parse("20250715120000").unwrap().to_fhir(&ny),
            "2025-07-15T12:00:00-04:00"
        );
        assert!(Zone::load(Some("Mars/Olympus")).is_err());
    }
}
