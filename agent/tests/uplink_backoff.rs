//! A busy server is waited out, however many messages arrive meanwhile.
//!
//! Before: every stored message woke the uplink out of its `Retry-After` (the channels'
//! `stored` hook is the uplink's waker), so a server answering 503 with `Retry-After: 1`
//! while an instrument sent ~200 messages/s got ~180 attempts a second, each logged. Here
//! the real clock ([`SystemClock`]) and a thread that stores a message and wakes the uplink
//! every 2 ms, as the channels do, for 429 and 503 alike: the attempts stay one
//! `Retry-After` apart, and the log says so once, not per attempt.

mod common_upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common_upstream::{capture_logs, msg, Fault, QueueSpy, Upstream};
use labagent::uplink::{Clock, MemoryQueue, MemoryTokenCache, Protocol, SystemClock, Uplink};

const FAILURES: usize = 3;

/// Attempts at `/ingest` as the hammering thread saw them arrive: their times.
fn busy_server_is_waited_out(status: u16, says: &str) {
    let up = Upstream::start();
    up.state().ingest_faults.extend(
        std::iter::repeat_with(|| Fault::with_header(status, "Retry-After", "1")).take(FAILURES),
    );
    let q = MemoryQueue::new();
    q.push(msg("chem", 0, Protocol::Astm));
    let clock = SystemClock::new();
    let mut uplink = Uplink::new(
        up.settings(),
        up.auth(),
        Arc::new(q.clone()),
        Arc::new(MemoryTokenCache::new()),
        clock.clone(),
    )
    .unwrap();
    let runner = std::thread::spawn(move || capture_logs(move || uplink.run()).1);

    // The instrument: a message stored and the uplink woken every 2 ms (~500/s), until
    // the upstream accepted the first message after the failures.
    let mut seen = Vec::<Instant>::new();
    let mut wakes = 0u64;
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no delivery within 30 s");
        q.push(msg("chem", n, Protocol::Astm));
        n += 1;
        clock.wake();
        wakes += 1;
        let accepted = !up.state().accepted.is_empty();
        // Counted after looking at `accepted`: the accepted attempt is among them.
        let attempts = up.requests("/ingest").len();
        while seen.len() < attempts {
            seen.push(Instant::now());
        }
        if accepted {
            break;
        }
        // The instrument's pace, not a wait for something.
        std::thread::sleep(Duration::from_millis(2));
    }
    // Everything stored meanwhile is delivered, in order, once the server is back.
    while q.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} left undelivered",
            q.pending()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    clock.shutdown();
    let log = runner.join().unwrap();

    assert!(seen.len() > FAILURES, "{seen:?}");
    for (i, pair) in seen.windows(2).take(FAILURES).enumerate() {
        let gap = pair[1] - pair[0];
        // The times are when this thread noticed the requests (every ~2 ms, later on a
        // busy machine): allow for that. Woken early, the gap would be a few ms.
        assert!(
            gap >= Duration::from_millis(800),
            "attempt {} came {gap:?} after attempt {} despite Retry-After: 1 ({status})",
            i + 2,
            i + 1
        );
    }
    assert!(
        wakes > 300,
        "the test must wake the uplink during the waits: {wakes}"
    );
    let ingest = up.requests("/ingest");
    assert_eq!(
        ingest.len(),
        FAILURES + n,
        "exactly one attempt per failure, then each of the {n} messages once"
    );
    let keys: Vec<&str> = ingest
        .iter()
        .take(FAILURES + 1)
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "the oldest message is retried: {keys:?}"
    );

    // One warning when the failures start, none per repeat, one line when they end.
    let warns: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warns.len(), 1, "{log}");
    assert!(
        warns[0].contains(&format!("upload failed: {says}")),
        "{log}"
    );
    let back: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uploads succeed again"))
        .collect();
    assert_eq!(back.len(), 1, "{log}");
    assert!(
        back[0].contains(&format!("failed_attempts={FAILURES}")) && back[0].contains(says),
        "{log}"
    );
}

#[test]
fn a_503_retry_after_is_waited_out_while_messages_arrive() {
    busy_server_is_waited_out(503, "server unavailable (HTTP 503)");
}

#[test]
fn a_429_retry_after_is_waited_out_while_messages_arrive() {
    busy_server_is_waited_out(429, "rate limited by the server (HTTP 429)");
}

/// An idle uplink is still woken by a new message at once (not at the next poll).
#[test]
fn a_new_message_wakes_an_idle_uplink() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    let clock = SystemClock::new();
    let mut uplink = Uplink::new(
        up.settings(),
        up.auth(),
        Arc::new(q.clone()),
        Arc::new(MemoryTokenCache::new()),
        clock.clone(),
    )
    .unwrap();
    let status = uplink.subscribe();
    let runner = std::thread::spawn(move || uplink.run());
    // Idle (nothing queued) once the first round found the queue empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.borrow().state != labagent::uplink::UplinkState::Ok {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    // Many idle polls (1 s each) would pass before a delivery without the wake.
    let mut took = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        q.push(msg("chem", i, Protocol::Astm));
        clock.wake();
        while q.pending() > 0 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(t.elapsed());
    }
    clock.shutdown();
    runner.join().unwrap();
    // Each message came right after the uplink went idle: unwoken, each would wait out
    // the 1 s poll.
    let slowest = took.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(700),
        "a woken idle uplink delivers well within its 1 s poll: {took:?}"
    );
}

/// A store that cannot be read is not an empty queue: the uplink backs off and tries
/// again; a confirmation that cannot be written makes it wait too, and the message goes
/// again with the same key (at-least-once), instead of being resent in a tight loop.
#[test]
fn a_failing_store_is_waited_out_not_read_as_empty() {
    let up = Upstream::start();
    let q = MemoryQueue::new();
    q.push(msg("chem", 0, Protocol::Astm));
    let store = Arc::new(QueueSpy {
        inner: q.clone(),
        fail_reads: Arc::new(3.into()),
        fail_confirms: Arc::new(1.into()),
        ..QueueSpy::default()
    });
    let clock = common_upstream::clock(50);
    let mut u = Uplink::new(
        up.settings(),
        up.auth(),
        store,
        Arc::new(MemoryTokenCache::new()),
        clock.clone(),
    )
    .unwrap();
    let status = u.subscribe();
    assert!(u.drain(), "drained once the store answers");
    assert_eq!(q.pending(), 0);
    assert_eq!(q.confirmed(), vec!["chem-000000".to_string()]);
    // Three failed reads and one failed confirmation: four waits, with backoff.
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 4, "{sleeps:?}");
    assert!(sleeps.iter().all(|s| !s.is_zero()), "{sleeps:?}");
    // The unconfirmed message went again with the same Idempotency-Key.
    let keys: Vec<String> = up
        .requests("/ingest")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys, ["chem-000000", "chem-000000"]);
    let st = status.borrow().clone();
    assert_eq!(st.retries, 4);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot mark delivered messages in the store")),
        "{st:?}"
    );
}
