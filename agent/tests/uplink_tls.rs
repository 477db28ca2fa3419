//! Transport safety: trust, mutual TLS, plain http, redirects; and the threaded run with
//! its status channel.

mod common_upstream;

use std::sync::Arc;
use std::time::Duration;

use common_upstream::{clock, msg, uplink, TestCa, Upstream};
use labagent::uplink::{
    AuthSettings, MemoryQueue, MemoryTokenCache, Protocol, SystemClock, Uplink, UplinkError,
    UplinkState,
};

#[test]
fn a_server_from_another_ca_is_refused() {
    let up = Upstream::start();
    let other = TestCa::new();
    let mut s = up.settings();
    s.ca_file = Some(other.ca_file.clone());
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut u = uplink(
        s,
        AuthSettings::none(),
        &q,
        &MemoryTokenCache::new(),
        &clock(2),
    );
    assert!(!u.drain());
    assert!(q.log().is_empty(), "nothing confirmed");
    assert!(
        up.state().requests.is_empty(),
        "no request passed the handshake"
    );
    match u.subscribe().borrow().state.clone() {
        UplinkState::Paused { reason } => assert!(reason.starts_with("TLS"), "{reason}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn the_token_endpoint_is_checked_too() {
    let up = Upstream::start();
    let other = TestCa::new();
    let mut s = up.settings();
    s.ca_file = Some(other.ca_file.clone());
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut u = uplink(s, up.auth(), &q, &MemoryTokenCache::new(), &clock(1));
    assert!(!u.drain());
    assert!(up.state().requests.is_empty(), "the secret never left");
    assert!(matches!(
        u.subscribe().borrow().state,
        UplinkState::Paused { .. }
    ));
}

#[test]
fn plain_http_is_refused_without_opt_in() {
    let q: Arc<MemoryQueue> = Arc::new(MemoryQueue::new());
    let cache = Arc::new(MemoryTokenCache::new());
    let up = Upstream::start();
    let mut s = up.settings();
    s.url = "http://127.0.0.1:1/ingest".into();
    let e = Uplink::new(
        s.clone(),
        AuthSettings::none(),
        q.clone(),
        cache.clone(),
        clock(0),
    )
    .err()
    .unwrap();
    assert!(matches!(e, UplinkError::PlainHttp { .. }), "{e}");
    // The token URL too: the secret would travel in clear.
    let mut a = up.auth();
    a.token_url = "http://127.0.0.1:1/token".into();
    let e = Uplink::new(up.settings(), a, q.clone(), cache.clone(), clock(0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("token_url"), "{e}");
    s.allow_plain_http = true;
    assert!(Uplink::new(s, AuthSettings::none(), q, cache, clock(0)).is_ok());
}

#[test]
fn a_redirect_is_not_followed_and_credentials_stay_home() {
    let up = Upstream::start();
    let mut s = up.settings();
    s.url = up.url("/redirect");
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let mut u = uplink(s, up.auth(), &q, &MemoryTokenCache::new(), &clock(1));
    assert!(!u.drain());
    assert!(
        up.requests("/elsewhere").is_empty(),
        "the Location was not visited"
    );
    assert_eq!(up.requests("/redirect").len(), 2);
    assert!(q.log().is_empty());
    match u.subscribe().borrow().state.clone() {
        UplinkState::Paused { reason } => {
            assert!(
                reason.contains("not followed") && reason.contains("/elsewhere"),
                "{reason}"
            )
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn mutual_tls() {
    let up = Upstream::start_with(true);
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    // Without a client certificate the server refuses the handshake.
    let mut u = uplink(
        up.settings(),
        AuthSettings::none(),
        &q,
        &MemoryTokenCache::new(),
        &clock(1),
    );
    assert!(!u.drain());
    assert!(q.log().is_empty());
    let (cert, key) = up.ca.client_files();
    let mut s = up.settings();
    s.client_cert = Some(cert);
    s.client_key = Some(key);
    let mut a = up.auth();
    a.token_url = up.url("/token");
    let mut u = uplink(s, a, &q, &MemoryTokenCache::new(), &clock(0));
    assert!(u.drain());
    assert_eq!(q.confirmed(), vec!["a-000000".to_string()]);
}

#[test]
fn half_a_client_certificate_is_a_setup_error() {
    let up = Upstream::start();
    let mut s = up.settings();
    s.client_cert = Some(up.ca_file().to_owned());
    let q: Arc<MemoryQueue> = Arc::new(MemoryQueue::new());
    let e = Uplink::new(
        s,
        AuthSettings::none(),
        q,
        Arc::new(MemoryTokenCache::new()),
        clock(0),
    )
    .err()
    .unwrap();
    assert!(matches!(e, UplinkError::Tls(_)), "{e}");
}

/// The production shape: own thread, real clock, status through the watch channel; the
/// test waits on status changes, not on time.
#[tokio::test(flavor = "current_thread")]
async fn spawned_uplink_publishes_status_and_wakes_on_new_data() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    for n in 0..5 {
        q.push(msg("a", n, Protocol::Hl7));
    }
    let u = Uplink::new(
        up.settings(),
        up.auth(),
        Arc::new(q.clone()),
        Arc::new(cache),
        SystemClock::new(),
    )
    .unwrap();
    let handle = u.spawn().unwrap();
    let mut rx = handle.subscribe();
    let wait_for = |n: u64, rx: &mut tokio::sync::watch::Receiver<_>| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                rx.wait_for(|s: &labagent::uplink::UplinkStatus| s.delivered >= n),
            )
            .await
            .expect("delivered in time")
            .expect("uplink alive")
            .clone()
        }
    };
    let st = wait_for(5, &mut rx).await;
    assert_eq!(st.state, UplinkState::Ok);
    assert!(st.token_expires_at.is_some());
    q.push(msg("a", 5, Protocol::Hl7));
    handle.wake();
    wait_for(6, &mut rx).await;
    assert_eq!(q.confirmed().len(), 6);
    handle.shutdown();
    assert_eq!(rx.borrow().state, UplinkState::Stopped);
}
