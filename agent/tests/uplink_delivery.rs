//! Delivery against the test upstream: the upload contract, faults, order, rejection.
//! Waits run on a virtual clock; only the timeout tests spend real (sub-second) time.

mod common_upstream;

use std::collections::HashMap;
use std::time::Duration;

use common_upstream::{clock, msg, uplink, Fault, QueueSpy, Upstream};
use labagent::uplink::queue::Fate;
use labagent::uplink::{Format, MemoryQueue, MemoryTokenCache, Protocol, UplinkState};

/// Every confirmed id was answered 2xx by the server, in the same order; per channel,
/// confirmation order is the queue order; nothing is left.
fn assert_delivered_in_order(up: &Upstream, q: &MemoryQueue, expected: &[String]) {
    assert_eq!(q.pending(), 0, "nothing left behind");
    let confirmed = q.confirmed();
    let accepted: Vec<String> = up.state().accepted.iter().map(|(k, _)| k.clone()).collect();
    // Nothing confirmed without a 2xx: the server's accepted list covers every confirmation,
    // in order (duplicates after a lost answer would be allowed, none happen here).
    assert_eq!(confirmed, accepted, "confirmations follow 2xx answers");
    let mut by_channel: HashMap<String, Vec<String>> = HashMap::new();
    for id in &confirmed {
        by_channel
            .entry(id.split('-').next().unwrap().to_string())
            .or_default()
            .push(id.clone());
    }
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    for id in expected {
        want.entry(id.split('-').next().unwrap().to_string())
            .or_default()
            .push(id.clone());
    }
    assert_eq!(by_channel, want, "per-channel FIFO, nothing lost");
}

/// Every attempt at one key carried the same body: the Idempotency-Key is stable.
fn assert_keys_stable(up: &Upstream) {
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for r in up.requests("/ingest") {
        let key = r
            .header("idempotency-key")
            .expect("Idempotency-Key")
            .to_string();
        let prev = bodies.entry(key.clone()).or_insert_with(|| r.body.clone());
        assert_eq!(prev, &r.body, "key {key} reused for another body");
    }
}

#[test]
fn raw_post_has_the_contract_headers() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    q.push(msg("a", 1, Protocol::Hl7));
    q.push(msg("a", 2, Protocol::Raw));
    let c = clock(0);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    let reqs = up.requests("/ingest");
    assert_eq!(reqs.len(), 3);
    let ct: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("content-type").unwrap())
        .collect();
    assert_eq!(
        ct,
        [
            "text/plain; charset=utf-8",
            "x-application/hl7-v2+er7",
            "text/plain; charset=utf-8"
        ]
    );
    let r = &reqs[1];
    assert_eq!(r.header("idempotency-key"), Some("a-000001"));
    assert_eq!(r.header("x-labagent-agent"), Some("chem-lab-1"));
    assert_eq!(r.header("x-labagent-channel"), Some("a"));
    assert_eq!(r.header("x-labagent-protocol"), Some("hl7"));
    assert_eq!(
        r.header("x-labagent-received-at"),
        Some("2026-11-28T14:59:47.124Z")
    );
    assert!(r
        .header("authorization")
        .unwrap()
        .starts_with("Bearer tok-1-"));
    assert_eq!(r.text(), msg("a", 1, Protocol::Hl7).text);
    assert_eq!(
        up.connections(),
        1,
        "token and three posts share one kept-alive connection"
    );
    assert!(c.sleeps().is_empty());
    let st = u.subscribe().borrow().clone();
    assert_eq!(st.state, UplinkState::Ok);
    assert_eq!(st.delivered, 3);
    assert!(st.last_delivery.is_some() && st.token_expires_at.is_some());
}

#[test]
fn faults_lose_nothing_keep_order_and_keys() {
    let up = Upstream::start();
    {
        let mut st = up.state();
        st.ingest_faults.extend([
            Fault::status(500),
            Fault::with_header(503, "Retry-After", "7"),
            Fault::with_header(429, "RateLimit", "\"default\";r=0;t=30"),
            Fault::Reset,
            Fault::status(502),
            Fault::with_header(503, "Retry-After", "Sat, 28 Nov 2026 15:01:00 GMT"),
        ]);
    }
    let q = MemoryQueue::new();
    let mut ids = vec![];
    for n in 0..6 {
        for ch in ["a", "b"] {
            let m = msg(ch, n, Protocol::Astm);
            ids.push(m.id.clone());
            q.push(m);
        }
    }
    let c = clock(100);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    assert_delivered_in_order(&up, &q, &ids);
    assert_keys_stable(&up);
    let sleeps = c.sleeps();
    assert_eq!(sleeps.len(), 6, "one wait per fault: {sleeps:?}");
    assert_eq!(sleeps[1], Duration::from_secs(7), "Retry-After seconds");
    assert_eq!(sleeps[2], Duration::from_secs(30), "RateLimit t");
    // Server-given waits do not advance the backoff: the reset is its second step.
    assert!(
        sleeps[0] <= Duration::from_secs(1) && sleeps[3] <= Duration::from_secs(2),
        "{sleeps:?}"
    );
    // The HTTP date is an absolute time on the (virtual) wall clock; 0 s if already past.
    assert!(sleeps[5] <= Duration::from_secs(73));
    assert_eq!(up.state().tokens_issued, 1);
}

#[test]
fn backoff_grows_while_failing() {
    let up = Upstream::start();
    up.state()
        .ingest_faults
        .extend((0..6).map(|_| Fault::status(500)));
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let c = clock(100);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    let s = c.sleeps();
    assert_eq!(s.len(), 6);
    for (n, w) in s.iter().enumerate() {
        let step = Duration::from_secs(1 << n);
        assert!(*w >= step / 2 && *w <= step, "wait {n}: {w:?}");
    }
    assert_eq!(q.confirmed(), vec!["a-000000".to_string()]);
}

#[test]
fn a_hang_times_out_and_the_message_is_sent_again() {
    let up = Upstream::start();
    up.state().ingest_faults.push_back(Fault::Hang);
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Hl7));
    q.push(msg("a", 1, Protocol::Hl7));
    let c = clock(10);
    let mut s = up.settings();
    s.timeout = Duration::from_millis(1000);
    let mut u = uplink(s, up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    let keys: Vec<String> = up
        .requests("/ingest")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys, ["a-000000", "a-000000", "a-000001"]);
    assert_delivered_in_order(&up, &q, &["a-000000".into(), "a-000001".into()]);
    assert_eq!(c.sleeps().len(), 1);
}

#[test]
fn a_slow_body_is_not_a_delivery() {
    let up = Upstream::start();
    up.state().ingest_faults.push_back(Fault::SlowBody {
        pieces: 40,
        delay: Duration::from_millis(50),
    });
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let c = clock(10);
    let mut s = up.settings();
    s.timeout = Duration::from_millis(1000);
    let mut u = uplink(s, up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    let keys: Vec<String> = up
        .requests("/ingest")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["a-000000", "a-000000"],
        "retried after the body timed out"
    );
    assert_eq!(q.confirmed(), vec!["a-000000".to_string()]);
}

#[test]
fn raw_400_parks_that_message_and_the_channel_moves_on() {
    let up = Upstream::start();
    up.state().reject_marker = Some("BAD".into());
    let q = MemoryQueue::new();
    for n in 0..4 {
        let mut m = msg("a", n, Protocol::Astm);
        if n == 1 {
            m.text.push_str("BAD");
        }
        q.push(m);
    }
    let c = clock(0);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    assert_eq!(
        q.log(),
        vec![
            Fate::Confirmed("a-000000".into()),
            Fate::Rejected("a-000001".into(), "HTTP 400".into()),
            Fate::Confirmed("a-000002".into()),
            Fate::Confirmed("a-000003".into()),
        ]
    );
    assert_eq!(u.subscribe().borrow().rejected, 1);
}

#[test]
fn other_message_statuses_park_too() {
    for status in [409u16, 413, 415, 422] {
        let up = Upstream::start();
        up.state().ingest_faults.push_back(Fault::status(status));
        let q = MemoryQueue::new();
        q.push(msg("a", 0, Protocol::Astm));
        q.push(msg("a", 1, Protocol::Astm));
        let mut u = uplink(
            up.settings(),
            up.auth(),
            &q,
            &MemoryTokenCache::new(),
            &clock(0),
        );
        assert!(u.drain());
        assert_eq!(
            q.rejected(),
            vec![("a-000000".to_string(), format!("HTTP {status}"))]
        );
        assert_eq!(q.confirmed(), vec!["a-000001".to_string()]);
    }
}

#[test]
fn json_batch_is_bisected_to_the_message_at_fault() {
    let up = Upstream::start();
    up.state().reject_marker = Some("BAD".into());
    let q = MemoryQueue::new();
    let mut ids = vec![];
    for n in 0..20 {
        let mut m = msg("a", n, Protocol::Hl7);
        if n == 13 {
            m.text.push_str("BAD");
        } else {
            ids.push(m.id.clone());
        }
        q.push(m);
    }
    let mut s = up.settings();
    s.format = Format::Json;
    s.batch_max = 8;
    let c = clock(0);
    let mut u = uplink(s, up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(u.drain());
    assert_eq!(
        q.rejected(),
        vec![("a-000013".to_string(), "HTTP 400".to_string())]
    );
    assert_delivered_in_order(&up, &q, &ids);
    let reqs = up.requests("/ingest");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    let first: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(first.as_array().unwrap().len(), 8);
    assert_eq!(
        first[0],
        serde_json::json!({
            "id": "a-000000", "agent": "chem-lab-1", "channel": "a", "protocol": "hl7",
            "received_at": "2026-11-28T14:59:47.123Z", "clock_synced": true,
            "text": msg("a", 0, Protocol::Hl7).text, "meta": {"n": 0}
        })
    );
    // [0..8) ok; [8..16) refused → [8..12) ok, [12..16) refused → [12..14) refused →
    // [12] ok, [13] refused; [14..16) ok; then [16..20) ok.
    assert_eq!(reqs.len(), 9);
}

#[test]
fn persistent_403_pauses_the_uplink_and_keeps_every_message() {
    let up = Upstream::start();
    up.state()
        .ingest_faults
        .extend((0..10).map(|_| Fault::status(403)));
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    q.push(msg("b", 0, Protocol::Astm));
    let c = clock(3);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    assert!(!u.drain(), "stopped by the clock's budget while paused");
    assert_eq!(q.pending(), 2);
    assert!(q.log().is_empty(), "a 403 is not the message's fault");
    let st = u.subscribe().borrow().clone();
    match st.state {
        UplinkState::Paused { reason } => assert!(reason.contains("403"), "{reason}"),
        s => panic!("{s:?}"),
    }
    let s = c.sleeps();
    assert!(s[2] > s[0], "retries back off: {s:?}");
}

#[test]
fn revoked_token_mid_stream_costs_one_new_token() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    let cache = MemoryTokenCache::new();
    let c = clock(0);
    let mut u = uplink(up.settings(), up.auth(), &q, &cache, &c);
    for n in 0..3 {
        q.push(msg("a", n, Protocol::Astm));
    }
    assert!(u.drain());
    up.state().valid_tokens.clear(); // revoked on the server
    for n in 3..6 {
        q.push(msg("a", n, Protocol::Astm));
    }
    assert!(u.drain());
    assert_eq!(up.state().tokens_issued, 2);
    assert_eq!(q.confirmed().len(), 6);
    assert!(
        c.sleeps().is_empty(),
        "the retry after a new token is immediate"
    );
    let auths: Vec<String> = up
        .requests("/ingest")
        .iter()
        .map(|r| r.header("authorization").unwrap()[..12].to_string())
        .collect();
    assert_eq!(auths[3], "Bearer tok-1", "the revoked one, refused");
    assert_eq!(
        auths[4], "Bearer tok-2",
        "the same message again with the new token"
    );
}

#[test]
fn persistent_401_pauses_after_one_new_token() {
    let up = Upstream::start();
    up.state()
        .ingest_faults
        .extend([Fault::status(401), Fault::status(401)]);
    let q = MemoryQueue::new();
    q.push(msg("a", 0, Protocol::Astm));
    let c = clock(1);
    let mut u = uplink(up.settings(), up.auth(), &q, &MemoryTokenCache::new(), &c);
    u.drain();
    assert_eq!(up.state().tokens_issued, 2, "one new token, not a loop");
    assert_eq!(
        up.requests("/ingest").len(),
        3,
        "two refused, then delivered after the pause"
    );
    assert_eq!(q.confirmed(), vec!["a-000000".to_string()]);
    assert_eq!(c.sleeps().len(), 1);
}

#[test]
fn connections_are_reused() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    for n in 0..50 {
        q.push(msg(["a", "b"][n % 2], n, Protocol::Astm));
    }
    let mut u = uplink(
        up.settings(),
        up.auth(),
        &q,
        &MemoryTokenCache::new(),
        &clock(0),
    );
    assert!(u.drain());
    assert_eq!(q.confirmed().len(), 50);
    assert_eq!(up.connections(), 1);
}

/// Raw posts one message per request, but reads the queue 16 messages at a time and
/// confirms what a read delivered in one store write (each read and each confirmation is
/// a store operation: one per message was a third of the uplink's CPU). A failure part-way
/// confirms those accepted before it; the next read starts at the one that failed, which
/// goes again with its key, and the order holds.
#[test]
fn raw_reads_the_queue_in_runs_and_confirms_each_run_at_once() {
    let up = Upstream::start();
    {
        let mut st = up.state();
        for _ in 0..5 {
            st.ingest_faults.push_back(Fault::status(200));
        }
        st.ingest_faults.push_back(Fault::status(503));
    }
    let q = QueueSpy::default();
    for n in 0..40 {
        q.inner.push(msg("a", n, Protocol::Astm));
    }
    let c = clock(10);
    let mut u = labagent::uplink::Uplink::new(
        up.settings(),
        up.auth(),
        std::sync::Arc::new(q.clone()),
        std::sync::Arc::new(MemoryTokenCache::new()),
        c.clone(),
    )
    .unwrap();
    assert!(u.drain());
    assert_eq!(
        *q.calls.lock().unwrap(),
        [
            "read 16: 16",
            "confirm a-000000..a-000004 (5)",
            "read 16: 16",
            "confirm a-000005..a-000020 (16)",
            "read 16: 16",
            "confirm a-000021..a-000036 (16)",
            "read 16: 3",
            "confirm a-000037..a-000039 (3)",
            "read 16: 0",
        ]
    );
    let keys: Vec<String> = up
        .requests("/ingest")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    let mut want: Vec<String> = (0..=5).map(|n| format!("a-{n:06}")).collect();
    want.extend((5..40).map(|n| format!("a-{n:06}")));
    assert_eq!(keys, want, "the failed one again, then the rest in order");
    let confirmed: Vec<String> = q.inner.confirmed();
    let all: Vec<String> = (0..40).map(|n| format!("a-{n:06}")).collect();
    assert_eq!(confirmed, all);
    assert_eq!(u.subscribe().borrow().delivered, 40);
}
