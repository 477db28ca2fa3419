//! OAuth2 client credentials, Basic, fallback, scope, and secrets kept out of logs.

mod common_upstream;

use std::time::{Duration, SystemTime};

use common_upstream::{capture_logs, clock, msg, uplink, Fault, Upstream, CLIENT_SECRET};
use labagent::uplink::{
    AuthMethod, AuthMode, ClientAuth, Fallback, MemoryQueue, MemoryTokenCache, Protocol, Secret,
    TokenCache, UplinkState,
};

#[test]
fn five_restarts_inside_one_token_lifetime_make_one_token_request() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(0);
    for n in 0..5 {
        q.push(msg("a", n, Protocol::Astm));
        let mut u = uplink(up.settings(), up.auth(), &q, &cache, &c); // a "restart"
        assert!(u.drain());
        c.advance(Duration::from_secs(10 * 60));
    }
    assert_eq!(up.state().tokens_issued, 1);
    assert_eq!(q.confirmed().len(), 5);
    let t = cache.load().unwrap();
    assert_eq!(t.expires_at - t.obtained_at, 3600);
}

/// Callers that need a token at the same moment wait for the one request in flight.
#[test]
fn concurrent_callers_share_one_token_request() {
    use labagent::uplink::http::HttpClient;
    use labagent::uplink::Authenticator;
    use std::sync::Arc;
    let up = Upstream::start();
    let auth = Arc::new(Authenticator::new(
        up.auth(),
        HttpClient::new(&up.settings()).unwrap(),
        Arc::new(MemoryTokenCache::new()),
        clock(0),
    ));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let a = auth.clone();
            std::thread::spawn(move || a.credential().unwrap())
        })
        .collect();
    let creds: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(creds.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(up.state().tokens_issued, 1);
    assert_eq!(auth.token_requests(), 1);
}

#[test]
fn a_clock_gone_backwards_gets_a_new_token() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(0);
    q.push(msg("a", 0, Protocol::Astm));
    uplink(up.settings(), up.auth(), &q, &cache, &c).drain();
    // The board rebooted without a battery-backed clock: it thinks it is 1970.
    c.set_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
    q.push(msg("a", 1, Protocol::Astm));
    uplink(up.settings(), up.auth(), &q, &cache, &c).drain();
    assert_eq!(up.state().tokens_issued, 2);
    // An implausible record (lifetime of a year) is not trusted either.
    let mut t = cache.load().unwrap();
    t.expires_at = t.obtained_at + 365 * 86_400;
    cache.save(&t);
    q.push(msg("a", 2, Protocol::Astm));
    uplink(up.settings(), up.auth(), &q, &cache, &c).drain();
    assert_eq!(up.state().tokens_issued, 3);
    assert_eq!(q.confirmed().len(), 3);
}

#[test]
fn token_is_renewed_ahead_of_expiry() {
    let up = Upstream::start();
    up.state().expires_in = 300;
    let q = MemoryQueue::new();
    let c = clock(0);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    q.push(msg("a", 0, Protocol::Astm));
    u.drain();
    c.advance(Duration::from_secs(239)); // 80 % of 300 s = 240 s
    q.push(msg("a", 1, Protocol::Astm));
    u.drain();
    assert_eq!(up.state().tokens_issued, 1);
    c.advance(Duration::from_secs(1));
    q.push(msg("a", 2, Protocol::Astm));
    u.drain();
    assert_eq!(
        up.state().tokens_issued,
        2,
        "renewed before it expired, no 401 needed"
    );
    assert_eq!(up.requests("/ingest").len(), 3);
}

#[test]
fn client_secret_basic_form_encodes_and_post_sends_fields() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut a = up.auth();
    a.scope = Some("system/Bot.x".into());
    uplink(
        up.settings(),
        a.clone(),
        &q,
        &MemoryTokenCache::new(),
        &clock(0),
    )
    .drain();
    let tr = &up.requests("/token")[0];
    // "lab agent/1" and a secret with ':' '%' '&' only survive Basic when form-encoded first.
    assert!(tr.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(
        tr.text(),
        "grant_type=client_credentials&scope=system%2FBot.x"
    );
    assert_eq!(
        tr.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    a.client_auth = ClientAuth::Post;
    q.push(msg("a", 1, Protocol::Astm));
    uplink(up.settings(), a, &q, &MemoryTokenCache::new(), &clock(0)).drain();
    let tr = &up.requests("/token")[1];
    assert_eq!(tr.header("authorization"), None);
    assert!(tr
        .text()
        .contains("&client_id=lab+agent%2F1&client_secret=s3cr3t%3Awith%25odd%26chars-7f1c2e"));
    assert_eq!(q.confirmed().len(), 2);
}

#[test]
fn method_basic_sends_basic_on_every_request() {
    let up = Upstream::start();
    up.state().accept_basic = true;
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    q.push(msg("a", 1, Protocol::Astm));
    let mut a = up.auth();
    a.method = AuthMethod::Basic;
    let mut u = uplink(up.settings(), a, &q, &MemoryTokenCache::new(), &clock(0));
    assert!(u.drain());
    assert!(up.requests("/token").is_empty());
    for r in up.requests("/ingest") {
        assert!(r.header("authorization").unwrap().starts_with("Basic "));
    }
    assert_eq!(u.subscribe().borrow().auth_mode, AuthMode::Basic);
}

fn fallback_case(fault: Option<Fault>, token_path: &str) {
    let up = Upstream::start();
    up.state().accept_basic = true;
    if let Some(f) = fault {
        up.state().token_faults.push_back(f);
    }
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut a = up.auth();
    a.token_url = up.url(token_path);
    a.fallback = Fallback::Basic;
    let c = clock(0);
    let mut u = uplink(up.settings(), a, &q, &MemoryTokenCache::new(), &c);
    let (_, logs) = capture_logs(|| assert!(u.drain()));
    assert!(logs.contains("falling back to HTTP Basic"), "{logs}");
    assert_eq!(u.subscribe().borrow().auth_mode, AuthMode::FallbackBasic);
    assert!(up.requests("/ingest")[0]
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    // An hour later OAuth2 is tried again.
    c.advance(Duration::from_secs(3601));
    q.push(msg("a", 1, Protocol::Astm));
    assert!(u.drain());
    let expected_mode = if token_path == "/token" {
        AuthMode::ClientCredentials
    } else {
        AuthMode::FallbackBasic
    };
    assert_eq!(u.subscribe().borrow().auth_mode, expected_mode);
    assert_eq!(q.confirmed().len(), 2);
}

#[test]
fn fallback_to_basic_on_unsupported_grant_type_then_oauth_again() {
    fallback_case(
        Some(Fault::json(400, r#"{"error":"unsupported_grant_type"}"#)),
        "/token",
    );
}

#[test]
fn fallback_to_basic_on_404_405() {
    fallback_case(None, "/no-such-endpoint");
    fallback_case(Some(Fault::status(405)), "/token");
}

#[test]
fn refused_grant_without_fallback_pauses() {
    let up = Upstream::start();
    let f = Fault::json(400, r#"{"error":"unsupported_grant_type"}"#);
    up.state().token_faults.extend([f.clone(), f]);
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let c = clock(1);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(!u.drain());
    match u.subscribe().borrow().state.clone() {
        UplinkState::Paused { reason } => assert!(reason.contains("refused the grant"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert!(up.requests("/ingest").is_empty());
    assert_eq!(q.pending(), 1);
}

#[test]
fn a_refused_client_is_a_credentials_problem() {
    for (fault, secret) in [
        (None, "wrong"),
        (Some(Fault::status(403)), CLIENT_SECRET),
        (
            Some(Fault::json(401, r#"{"error":"invalid_client"}"#)),
            CLIENT_SECRET,
        ),
        (
            Some(Fault::json(400, r#"{"error":"invalid_client"}"#)),
            CLIENT_SECRET,
        ),
    ] {
        let up = Upstream::start();
        if let Some(f) = fault {
            up.state().token_faults.extend([f.clone(), f]);
        }
        let q = MemoryQueue::new();
        q.push(msg("a", 0, Protocol::Astm));
        let mut a = up.auth();
        a.secret = Some(Secret::new(secret));
        let c = clock(1);
        let mut u = uplink(up.settings(), a, &q, &MemoryTokenCache::new(), &c);
        assert!(!u.drain());
        let st = u.subscribe().borrow().clone();
        match st.state {
            UplinkState::CredentialsProblem { detail } => {
                assert!(detail.contains("refused the client"), "{detail}")
            }
            s => panic!("{s:?}"),
        }
        assert!(up.requests("/ingest").is_empty());
        assert!(q.log().is_empty());
        assert_eq!(q.pending(), 1);
        assert_eq!(
            up.requests("/token").len(),
            2,
            "one request per backoff step"
        );
    }
}

#[test]
fn token_endpoint_failures_back_off() {
    let up = Upstream::start();
    up.state().token_faults.extend([
        Fault::status(500),
        Fault::status(500),
        Fault::with_header(429, "Retry-After", "60"),
        Fault::status(502),
    ]);
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let c = clock(20);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    assert_eq!(up.requests("/token").len(), 5);
    let s = c.sleeps();
    assert_eq!(s.len(), 4, "one wait between token requests: {s:?}");
    assert!(s[0] >= Duration::from_secs(1));
    assert!(s[1] >= Duration::from_secs(2), "grows: {s:?}");
    assert_eq!(
        s[2],
        Duration::from_secs(60),
        "Retry-After of the token endpoint"
    );
    assert_eq!(q.confirmed().len(), 1);
}

#[test]
fn broader_scope_warns_and_strict_scope_refuses() {
    let up = Upstream::start();
    up.state().grant_scope = Some("system/*.* system/Bot.x".into());
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut a = up.auth();
    a.scope = Some("system/Bot.x".into());
    let mut u = uplink(
        up.settings(),
        a.clone(),
        &q,
        &MemoryTokenCache::new(),
        &clock(0),
    );
    let (_, logs) = capture_logs(|| assert!(u.drain()));
    assert!(
        logs.contains("broader scope than requested") && logs.contains("extra=system/*.*"),
        "{logs}"
    );
    assert_eq!(q.confirmed().len(), 1);

    a.strict_scope = true;
    q.push(msg("a", 1, Protocol::Astm));
    let cache = MemoryTokenCache::new();
    let mut u = uplink(up.settings(), a, &q, &cache, &clock(1));
    assert!(!u.drain());
    match u.subscribe().borrow().state.clone() {
        UplinkState::CredentialsProblem { detail } => {
            assert!(detail.contains("strict_scope"), "{detail}")
        }
        s => panic!("{s:?}"),
    }
    assert!(cache.load().is_none(), "a refused token is not kept");
    assert_eq!(q.pending(), 1);
    assert_eq!(up.requests("/ingest").len(), 1);
}

#[test]
fn missing_scope_in_response_means_as_requested() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut a = up.auth();
    a.scope = Some("system/Bot.x".into());
    a.strict_scope = true;
    let cache = MemoryTokenCache::new();
    assert!(uplink(up.settings(), a, &q, &cache, &clock(0)).drain());
    assert_eq!(cache.load().unwrap().scope.as_deref(), Some("system/Bot.x"));
}

/// A whole run through every auth path, logged at TRACE: no secret, token or Basic value.
#[test]
fn no_secret_or_token_in_any_log_line() {
    let up = Upstream::start();
    up.state().accept_basic = true;
    up.state().grant_scope = Some("system/Bot.x more".into());
    let q = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(20);
    let (_, logs) = capture_logs(|| {
        let mut a = up.auth();
        a.scope = Some("system/Bot.x".into());
        a.fallback = Fallback::Basic;
        for n in 0..3 {
            q.push(msg("a", n, Protocol::Astm));
        }
        let mut u = uplink(up.settings(), a.clone(), &q, &cache, &c);
        u.drain();
        up.state().valid_tokens.clear();
        up.state()
            .ingest_faults
            .extend([Fault::status(500), Fault::status(403)]);
        q.push(msg("a", 3, Protocol::Astm));
        u.drain();
        tracing::info!(status = ?u.subscribe().borrow().clone(), token = ?cache.load(), "status");
        up.state()
            .token_faults
            .push_back(Fault::json(400, r#"{"error":"unsupported_grant_type"}"#));
        up.state().valid_tokens.clear();
        c.advance(Duration::from_secs(4000));
        q.push(msg("a", 4, Protocol::Astm));
        let mut u = uplink(up.settings(), a.clone(), &q, &MemoryTokenCache::new(), &c);
        u.drain();
        let mut bad = a;
        bad.secret = Some(Secret::new(CLIENT_SECRET.to_string() + "x"));
        q.push(msg("a", 5, Protocol::Astm));
        uplink(up.settings(), bad, &q, &MemoryTokenCache::new(), &clock(1)).drain();
    });
    assert!(logs.len() > 500, "the run logged: {logs}");
    assert!(up.state().tokens_issued >= 2);
    let mut forbidden = vec![CLIENT_SECRET.to_string(), "s3cr3t".into(), "tok-".into()];
    forbidden.extend(up.state().valid_tokens.iter().cloned());
    for r in up
        .requests("/ingest")
        .iter()
        .chain(up.requests("/token").iter())
    {
        if let Some(v) = r.header("authorization") {
            forbidden.push(v.split(' ').nth(1).unwrap().to_string());
        }
    }
    for f in &forbidden {
        assert!(!logs.contains(f.as_str()), "log contains {f:?}");
    }
    assert!(
        logs.contains("[redacted]"),
        "the status/token debug line was logged redacted"
    );
}
