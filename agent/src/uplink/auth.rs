//! Authentication: OAuth2 client credentials (RFC 6749 §4.4), HTTP Basic, and the
//! fallback from one to the other.
//!
//! Invariants:
//! * **One token request at a time.** The whole "is the token good, else fetch one"
//!   step runs under one mutex; a second caller waits and then reuses the fresh token.
//! * **Reuse across restarts, but do not trust the clock blindly.** The token is saved in
//!   the [`TokenCache`] with `obtained_at` and `expires_at`. A stored token is used only if
//!   `obtained_at <= now < renew point` and its lifetime is plausible (positive, at most
//!   [`MAX_LIFETIME`]); a clock that went backwards, or a record that makes no sense,
//!   costs one token request instead of a stream of 401s.
//! * **Renewed ahead of expiry**, at 80 % of the lifetime or 60 s before expiry,
//!   whichever comes first. If renewal fails while the old token is still valid, the old
//!   one keeps being used.
//! * **The token endpoint is rate limited** (Medplum: 160/min per IP): after a failure no
//!   new request is made before a capped exponential backoff (or the server's
//!   `Retry-After`) has passed; [`Authenticator::retry_in`] tells the caller how long.
//! * **Scope is checked** at every new token: more than requested is logged as a warning
//!   (and refused under `strict_scope`); a response without `scope` means "as requested".
//! * **No secret or token is ever formatted into a log line** ([`Secret`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::backoff::{seed, Backoff, Clock};
use super::http::{HttpClient, NetError};
use super::queue::{unix_secs, StoredToken, TokenCache};
use super::response::{wait_hint, Hints};
use super::status::AuthMode;
use super::{AuthMethod, AuthSettings, ClientAuth, Fallback, Secret};

/// A stored token claiming a longer life than this is not trusted.
pub const MAX_LIFETIME: u64 = 7 * 24 * 3600;
/// Assumed lifetime when the server sends no `expires_in`.
const DEFAULT_LIFETIME: u64 = 300;

/// What to put in `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    /// The full header value, `Bearer ...`.
    Bearer(Secret),
    /// The full header value, `Basic ...`.
    Basic(Secret),
}

impl Credential {
    pub fn header_value(&self) -> Option<&str> {
        match self {
            Credential::None => None,
            Credential::Bearer(s) | Credential::Basic(s) => Some(s.expose()),
        }
    }
}

/// Why no credential could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client was refused (401/403, `invalid_client`, ...) or the token is unusable
    /// (scope broader than allowed under `strict_scope`).
    #[error("{0}")]
    Credentials(String),
    /// The token endpoint does not offer client credentials here (and no fallback).
    #[error("token endpoint refused the grant: {0}")]
    GrantRefused(String),
    /// The token endpoint asked to slow down.
    #[error("token endpoint rate limited")]
    RateLimited,
    /// 5xx, unexpected answers, network errors at the token endpoint.
    #[error("token endpoint: {0}")]
    Endpoint(String),
    /// A TLS problem with the token endpoint.
    #[error("token endpoint TLS: {0}")]
    Tls(String),
}

struct State {
    token: Option<StoredToken>,
    loaded: bool,
    fallback_until: Option<Instant>,
    next_attempt: Option<Instant>,
    last_error: Option<AuthError>,
    backoff: Backoff,
}

/// Hands out the `Authorization` value for each request.
pub struct Authenticator {
    settings: AuthSettings,
    http: HttpClient,
    cache: Arc<dyn TokenCache>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    token_requests: AtomicU64,
}

impl Authenticator {
    pub fn new(
        settings: AuthSettings,
        http: HttpClient,
        cache: Arc<dyn TokenCache>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Authenticator {
            settings,
            http,
            cache,
            clock,
            state: Mutex::new(State {
                token: None,
                loaded: false,
                fallback_until: None,
                next_attempt: None,
                last_error: None,
                backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(300), seed()),
            }),
            token_requests: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests made to the token endpoint by this instance.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// The mode in use right now.
    pub fn mode(&self) -> AuthMode {
        match self.settings.method {
            AuthMethod::None => AuthMode::None,
            AuthMethod::Basic => AuthMode::Basic,
            AuthMethod::ClientCredentials => {
                let st = self.state();
                match st.fallback_until {
                    Some(until) if self.clock.instant() < until => AuthMode::FallbackBasic,
                    _ => AuthMode::ClientCredentials,
                }
            }
        }
    }

    /// Expiry of the token in use (never the token).
    pub fn token_expiry(&self) -> Option<SystemTime> {
        let st = self.state();
        st.token
            .as_ref()
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.expires_at))
    }

    /// How long until the token endpoint may be asked again (zero: now).
    pub fn retry_in(&self) -> Duration {
        let st = self.state();
        st.next_attempt
            .map(|at| at.saturating_duration_since(self.clock.instant()))
            .unwrap_or(Duration::ZERO)
    }

    /// The server said 401 to `used`: forget that token so the next call fetches a new one.
    pub fn invalidate(&self, used: &Credential) {
        let mut st = self.state();
        if let (Credential::Bearer(v), Some(t)) = (used, &st.token) {
            if v.expose().strip_prefix("Bearer ") == Some(t.access_token.expose()) {
                st.token = None;
                st.next_attempt = None;
                self.cache.clear();
                tracing::info!("server refused the access token; a new one will be requested");
            }
        }
    }

    /// The `Authorization` value for the next request.
    pub fn credential(&self) -> Result<Credential, AuthError> {
        match self.settings.method {
            AuthMethod::None => Ok(Credential::None),
            AuthMethod::Basic => Ok(self.basic()),
            AuthMethod::ClientCredentials => self.oauth(),
        }
    }

    fn basic(&self) -> Credential {
        let secret = self
            .settings
            .secret
            .as_ref()
            .map(Secret::expose)
            .unwrap_or("");
        let raw = format!("{}:{}", self.settings.client_id, secret);
        Credential::Basic(Secret::new(format!("Basic {}", STANDARD.encode(raw))))
    }

    fn oauth(&self) -> Result<Credential, AuthError> {
        let mut st = self.state();
        let now_i = self.clock.instant();
        if let Some(until) = st.fallback_until {
            if now_i < until {
                return Ok(self.basic());
            }
        }
        if !st.loaded {
            st.loaded = true;
            st.token = self.cache.load();
            if let Some(t) = &st.token {
                tracing::debug!(
                    expires_at = t.expires_at,
                    obtained_at = t.obtained_at,
                    "token cache loaded"
                );
            }
        }
        let now = unix_secs(self.clock.now());
        if let Some(t) = &st.token {
            if fresh(t, now) {
                return Ok(bearer(t));
            }
        }
        if let Some(at) = st.next_attempt {
            if now_i < at {
                return self.keep_old_or(
                    &st,
                    now,
                    st.last_error.clone().unwrap_or(AuthError::RateLimited),
                );
            }
        }
        match self.fetch() {
            Ok(token) => {
                st.backoff.reset();
                st.next_attempt = None;
                st.last_error = None;
                if st.fallback_until.take().is_some() {
                    tracing::warn!(
                        "token endpoint grants client credentials again: leaving Basic fallback"
                    );
                }
                self.cache.save(&token);
                let c = bearer(&token);
                st.token = Some(token);
                Ok(c)
            }
            Err((err, hint)) => {
                if matches!(err, AuthError::GrantRefused(_))
                    && self.settings.fallback == Fallback::Basic
                {
                    st.fallback_until = Some(now_i + self.settings.fallback_retry);
                    tracing::warn!(
                        error = %err,
                        retry_oauth_in_s = self.settings.fallback_retry.as_secs(),
                        "falling back to HTTP Basic authentication"
                    );
                    return Ok(self.basic());
                }
                let wait = hint.unwrap_or_else(|| st.backoff.next_delay());
                st.next_attempt = Some(now_i + wait);
                st.last_error = Some(err.clone());
                tracing::warn!(error = %err, retry_in_s = wait.as_secs(), "no access token");
                self.keep_old_or(&st, now, err)
            }
        }
    }

    /// While renewal fails, a token that has not expired yet is still good to use.
    fn keep_old_or(&self, st: &State, now: u64, err: AuthError) -> Result<Credential, AuthError> {
        match &st.token {
            Some(t) if now >= t.obtained_at && now + 5 < t.expires_at => Ok(bearer(t)),
            _ => Err(err),
        }
    }

    /// One token request. On failure: the error and the wait the server asked for.
    fn fetch(&self) -> Result<StoredToken, (AuthError, Option<Duration>)> {
        let s = &self.settings;
        let secret = s.secret.as_ref().map(Secret::expose).unwrap_or("");
        let mut form = String::from("grant_type=client_credentials");
        if let Some(scope) = &s.scope {
            form.push_str("&scope=");
            form.push_str(&form_encode(scope));
        }
        let basic;
        let mut headers = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ];
        match s.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
                let raw = format!("{}:{}", form_encode(&s.client_id), form_encode(secret));
                basic = Secret::new(format!("Basic {}", STANDARD.encode(raw)));
                headers.push(("Authorization", basic.expose()));
            }
            ClientAuth::Post => {
                form.push_str("&client_id=");
                form.push_str(&form_encode(&s.client_id));
                form.push_str("&client_secret=");
                form.push_str(&form_encode(secret));
            }
        }
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url = %s.token_url, "requesting an access token");
        let obtained = self.clock.now();
        let reply = self
            .http
            .post(&s.token_url, &headers, form.as_bytes())
            .map_err(|e: NetError| {
                let err = match e.kind {
                    super::http::NetErrorKind::Tls => AuthError::Tls(e.detail),
                    _ => AuthError::Endpoint(e.detail),
                };
                (err, None)
            })?;
        if (200..300).contains(&reply.status) {
            return self
                .parse_token(&reply.body, unix_secs(obtained))
                .map_err(|e| (e, None));
        }
        Err(classify_token_error(
            reply.status,
            &reply.hints,
            &reply.body,
            obtained,
        ))
    }

    fn parse_token(&self, body: &str, obtained_at: u64) -> Result<StoredToken, AuthError> {
        let v: serde_json::Value = serde_json::from_str(body)
            .map_err(|_| AuthError::Endpoint("token response is not JSON".into()))?;
        let access_token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Endpoint("token response has no access_token".into()))?;
        let token_type = v["token_type"].as_str().unwrap_or("");
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Endpoint(format!(
                "unsupported token_type {token_type:?}"
            )));
        }
        let expires_in = match &v["expires_in"] {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(DEFAULT_LIFETIME),
            serde_json::Value::String(s) => s.parse().unwrap_or(DEFAULT_LIFETIME),
            _ => DEFAULT_LIFETIME,
        };
        let granted = v["scope"].as_str().map(str::to_string);
        self.check_scope(granted.as_deref())?;
        tracing::info!(expires_in, scope = ?granted.as_deref().or(self.settings.scope.as_deref()), "new access token");
        Ok(StoredToken {
            access_token: Secret::new(access_token),
            token_type: "Bearer".into(),
            expires_at: obtained_at + expires_in,
            obtained_at,
            scope: granted.or_else(|| self.settings.scope.clone()),
        })
    }

    fn check_scope(&self, granted: Option<&str>) -> Result<(), AuthError> {
        let (Some(requested), Some(granted)) = (self.settings.scope.as_deref(), granted) else {
            return Ok(());
        };
        let extra = scope_excess(requested, granted);
        if extra.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            requested,
            granted,
            extra = %extra.join(" "),
            strict_scope = self.settings.strict_scope,
            "token endpoint granted a broader scope than requested"
        );
        if self.settings.strict_scope {
            return Err(AuthError::Credentials(format!(
                "granted scope is broader than requested (extra: {}); refused by strict_scope",
                extra.join(" ")
            )));
        }
        Ok(())
    }
}

fn bearer(t: &StoredToken) -> Credential {
    Credential::Bearer(Secret::new(format!("Bearer {}", t.access_token.expose())))
}

/// Whether a (possibly stored) token may be used at wall-clock `now` without renewal.
pub fn fresh(t: &StoredToken, now: u64) -> bool {
    if t.expires_at <= t.obtained_at || t.expires_at - t.obtained_at > MAX_LIFETIME {
        return false; // inconsistent record
    }
    if now < t.obtained_at {
        return false; // the clock went backwards since: do not guess
    }
    now < renew_at(t)
}

/// 80 % of the lifetime or 60 s before expiry, whichever comes first.
pub fn renew_at(t: &StoredToken) -> u64 {
    let life = t.expires_at.saturating_sub(t.obtained_at);
    let at80 = t.obtained_at + life * 4 / 5;
    at80.min(t.expires_at.saturating_sub(60)).max(t.obtained_at)
}

/// Scopes in `granted` that were not in `requested` (space-separated sets).
pub fn scope_excess(requested: &str, granted: &str) -> Vec<String> {
    let req: BTreeSet<&str> = requested.split_ascii_whitespace().collect();
    granted
        .split_ascii_whitespace()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|s| !req.contains(s))
        .map(str::to_string)
        .collect()
}

/// The token endpoint's error answer → what it means (RFC 6749 §5.2).
fn classify_token_error(
    status: u16,
    hints: &Hints,
    body: &str,
    now: SystemTime,
) -> (AuthError, Option<Duration>) {
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    let what = match &code {
        Some(c) => format!("HTTP {status} {c}"),
        None => format!("HTTP {status}"),
    };
    let err = match (status, code.as_deref()) {
        (404 | 405, _) | (_, Some("unsupported_grant_type")) => AuthError::GrantRefused(what),
        (429 | 503, _) => return (AuthError::RateLimited, wait_hint(hints, now)),
        (401 | 403, _) | (_, Some("invalid_client" | "unauthorized_client")) => {
            AuthError::Credentials(format!(
                "token endpoint refused the client ({what}): check client_id and secret"
            ))
        }
        (_, Some("invalid_scope")) => AuthError::Credentials(format!(
            "token endpoint refused the scope ({what}): check uplink.auth.scope"
        )),
        (300..=399, _) => {
            AuthError::Endpoint(format!("{what}: redirect not followed, check token_url"))
        }
        _ => AuthError::Endpoint(what),
    };
    (err, None)
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(obtained_at: u64, expires_at: u64) -> StoredToken {
        StoredToken {
            access_token: Secret::new("t"),
            token_type: "Bearer".into(),
            expires_at,
            obtained_at,
            scope: None,
        }
    }

    #[test]
    fn freshness_and_renewal_point() {
        let t = tok(1000, 4600); // one hour
        assert_eq!(renew_at(&t), 1000 + 2880);
        assert!(fresh(&t, 1000));
        assert!(fresh(&t, 3879));
        assert!(!fresh(&t, 3880));
        assert!(!fresh(&t, 999), "clock went backwards");
        let short = tok(1000, 1100); // 100 s: 60 s before expiry wins over 80 %
        assert_eq!(renew_at(&short), 1040);
        assert!(!fresh(&tok(1000, 1000), 1000));
        assert!(!fresh(&tok(1000, 1000 + MAX_LIFETIME + 1), 1001));
    }

    #[test]
    fn scope_sets() {
        assert!(scope_excess("system/Bot.x", "system/Bot.x").is_empty());
        assert!(scope_excess("a b", "b a").is_empty());
        assert!(scope_excess("a b", "a").is_empty());
        assert_eq!(
            scope_excess("system/Bot.x", "system/Bot.x system/*.*"),
            vec!["system/*.*"]
        );
    }

    #[test]
    fn form_encoding_rfc6749_2_3_1() {
        assert_eq!(form_encode("a b:c/d%é"), "a+b%3Ac%2Fd%25%C3%A9");
        assert_eq!(form_encode("abc-._*"), "abc-._*");
    }

    #[test]
    fn token_errors() {
        let now = SystemTime::UNIX_EPOCH;
        let h = Hints::default();
        let c = |s, b| classify_token_error(s, &h, b, now).0;
        assert!(matches!(
            c(400, r#"{"error":"unsupported_grant_type"}"#),
            AuthError::GrantRefused(_)
        ));
        assert!(matches!(c(404, ""), AuthError::GrantRefused(_)));
        assert!(matches!(c(405, ""), AuthError::GrantRefused(_)));
        assert!(matches!(
            c(401, r#"{"error":"invalid_client"}"#),
            AuthError::Credentials(_)
        ));
        assert!(matches!(c(403, ""), AuthError::Credentials(_)));
        assert!(matches!(
            c(400, r#"{"error":"invalid_client"}"#),
            AuthError::Credentials(_)
        ));
        assert!(matches!(
            c(400, r#"{"error":"unauthorized_client"}"#),
            AuthError::Credentials(_)
        ));
        assert!(matches!(
            c(400, r#"{"error":"invalid_scope"}"#),
            AuthError::Credentials(_)
        ));
        assert!(matches!(c(500, ""), AuthError::Endpoint(_)));
        let h = Hints {
            retry_after: Some("9".into()),
            ..Hints::default()
        };
        assert_eq!(
            classify_token_error(429, &h, "", now),
            (AuthError::RateLimited, Some(Duration::from_secs(9)))
        );
    }
}
