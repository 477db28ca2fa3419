//! What an HTTP status means for the queue (ARCHITECTURE.md, "Upload contract").
//!
//! One table, [`classify`], decides; the drain loop only carries it out. The split that
//! matters: only statuses that blame *this message* (400, 409, 413, 415, 422) may park
//! it; statuses that blame the configuration or permissions (401, 403, 404, 405, and
//! redirects, which are never followed) pause the whole uplink and keep every message.

use std::time::{Duration, SystemTime};

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// 2xx: confirm.
    Delivered,
    /// 401: get a new token once and send again.
    Unauthorized,
    /// The uplink is misconfigured or not allowed: keep the message, pause, retry later.
    Pause(String),
    /// 429: wait as the server asked (None: it did not say; back off).
    RateLimited(Option<Duration>),
    /// 503: the server is unavailable; wait as it asked (None: it did not say; back off).
    Unavailable(Option<Duration>),
    /// The message itself was refused: park it (bisect a batch first).
    Reject(String),
    /// 5xx and anything unexpected: back off and retry.
    Retry(String),
}

/// The response headers that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub retry_after: Option<String>,
    pub rate_limit: Option<String>,
    pub location: Option<String>,
}

/// The status → action table.
pub fn classify(status: u16, hints: &Hints, now: SystemTime) -> Action {
    match status {
        200..=299 => Action::Delivered,
        401 => Action::Unauthorized,
        403 => Action::Pause("403 Forbidden: the client lacks permission for this URL".into()),
        404 => Action::Pause("404 Not Found: check uplink.url".into()),
        405 => Action::Pause("405 Method Not Allowed: check uplink.url".into()),
        300..=399 => Action::Pause(format!(
            "{status} redirect to {} not followed: set uplink.url to the final URL",
            hints.location.as_deref().unwrap_or("(no Location)")
        )),
        400 | 409 | 413 | 415 | 422 => Action::Reject(format!("HTTP {status}")),
        429 => Action::RateLimited(wait_hint(hints, now)),
        503 => Action::Unavailable(wait_hint(hints, now)),
        _ => Action::Retry(format!("HTTP {status}")),
    }
}

/// The wait a 429/503 asks for: `Retry-After` first, then `RateLimit`'s `t`.
pub fn wait_hint(hints: &Hints, now: SystemTime) -> Option<Duration> {
    hints
        .retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| hints.rate_limit.as_deref().and_then(parse_ratelimit_t))
}

/// `Retry-After: 120` or an HTTP date (RFC 9110 §10.2.3); a date in the past means now.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP date in any of the three forms a recipient must accept (RFC 9110 §5.6.7):
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
pub fn parse_http_date(v: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(v.trim()).ok()
}

/// The `t` parameter of the IETF `RateLimit` header
/// (draft-ietf-httpapi-ratelimit-headers: `RateLimit: "default";r=0;t=30`); with several
/// policies, the longest wait.
pub fn parse_ratelimit_t(v: &str) -> Option<Duration> {
    v.split(',')
        .flat_map(|item| item.split(';').skip(1))
        .filter_map(|param| {
            let (k, val) = param.split_once('=')?;
            (k.trim() == "t")
                .then(|| val.trim().parse::<u64>().ok())
                .flatten()
        })
        .max()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_877_987; // 2026-11-28T14:59:47Z

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn every_status_has_the_contract_action() {
        let h = Hints::default();
        for status in 100u16..=599 {
            let a = classify(status, &h, now());
            let expected = match status {
                200..=299 => "delivered",
                401 => "unauthorized",
                300..=399 | 403 | 404 | 405 => "pause",
                400 | 409 | 413 | 415 | 422 => "reject",
                429 => "ratelimited",
                503 => "unavailable",
                _ => "retry",
            };
            let got = match a {
                Action::Delivered => "delivered",
                Action::Unauthorized => "unauthorized",
                Action::Pause(_) => "pause",
                Action::Reject(_) => "reject",
                Action::RateLimited(_) => "ratelimited",
                Action::Unavailable(_) => "unavailable",
                Action::Retry(_) => "retry",
            };
            assert_eq!(got, expected, "status {status}");
        }
    }

    #[test]
    fn redirect_names_location() {
        let h = Hints {
            location: Some("https://evil.example/".into()),
            ..Hints::default()
        };
        match classify(302, &h, now()) {
            Action::Pause(r) => {
                assert!(r.contains("https://evil.example/") && r.contains("not followed"))
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 15:00:17 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 14:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        // The two obsolete forms RFC 9110 §5.6.7 requires recipients to accept.
        let epoch_784111777 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            epoch_784111777
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), epoch_784111777);
        assert_eq!(
            parse_retry_after("Saturday, 28-Nov-26 15:00:17 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat Nov 28 15:00:17 2026", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now()),
            None
        );
    }

    #[test]
    fn ratelimit_t() {
        assert_eq!(
            parse_ratelimit_t("\"default\";r=0;t=30"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_ratelimit_t("\"a\";r=0;t=5, \"b\";r=1;t=60"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_ratelimit_t("\"default\";r=10"), None);
        let h = Hints {
            rate_limit: Some("\"default\";r=0;t=30".into()),
            ..Hints::default()
        };
        assert_eq!(
            classify(429, &h, now()),
            Action::RateLimited(Some(Duration::from_secs(30)))
        );
        let h = Hints {
            retry_after: Some("7".into()),
            rate_limit: Some("\"d\";t=30".into()),
            ..Hints::default()
        };
        assert_eq!(
            classify(503, &h, now()),
            Action::Unavailable(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(503, &Hints::default(), now()),
            Action::Unavailable(None)
        );
    }
}
