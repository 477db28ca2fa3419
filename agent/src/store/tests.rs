//! Unit tests and the property test against a `VecDeque` model.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::engine::{FaultyEngine, SledEngine};
use super::*;

fn opts() -> StoreOptions {
    StoreOptions {
        min_free: 0,
        ..StoreOptions::default()
    }
}

fn msg(ch: &str, bytes: &[u8]) -> NewMessage {
    NewMessage {
        channel: ch.into(),
        protocol: Protocol::Hl7,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_874_700_123),
        clock_synced: Some(true),
        bytes: bytes.to_vec(),
        meta: serde_json::json!({"msh10": "X1"}).into(),
    }
}

#[test]
fn append_get_fifo_and_ids() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let a = s.append(msg("a", b"one")).unwrap();
    let b = s.append(msg("a", b"two")).unwrap();
    let big = vec![7u8; 100_000];
    let c = s.append(msg("b", &big)).unwrap();
    assert!(!a.duplicate && a.id.seq() < b.id.seq());
    let id_text = a.id.to_string();
    assert_eq!(id_text.len(), 8 + 1 + 12, "{id_text}");
    assert_eq!(id_text.parse::<MessageId>().unwrap(), a.id);
    let p = s.next_pending("a", 10).unwrap();
    assert_eq!(
        p.iter().map(|m| m.bytes.clone()).collect::<Vec<_>>(),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(s.get(c.id).unwrap().unwrap().bytes, big);
    assert_eq!(s.channels(), vec!["a".to_string(), "b".to_string()]);
    let st = s.stats().unwrap();
    assert_eq!(st.totals.pending, 3);
    assert_eq!(st.totals.pending_bytes, 6 + 100_000);
    assert_eq!(st.channels[0].oldest_pending.unwrap().0, a.id);
    // No blobs: the 100 kB message was chunked.
    assert!(
        !d.path().join("sled/blobs").exists()
            || std::fs::read_dir(d.path().join("sled/blobs"))
                .unwrap()
                .next()
                .is_none()
    );
    let mut out = Vec::new();
    assert_eq!(s.export(SystemTime::UNIX_EPOCH, &mut out).unwrap(), 3);
    let first: serde_json::Value =
        serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["received_at"], "2026-11-28T14:05:00.123Z");
    assert_eq!(first["id"], id_text);
}

#[test]
fn duplicate_within_keep_delivered() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let a = s.append(msg("a", b"same")).unwrap();
    let b = s.append(msg("a", b"same")).unwrap();
    assert_eq!((b.id, b.duplicate), (a.id, true));
    assert!(!s.append(msg("other", b"same")).unwrap().duplicate);
    s.confirm(a.id).unwrap();
    assert!(s.append(msg("a", b"same")).unwrap().duplicate);
    assert_eq!(s.prune(SystemTime::now()).unwrap(), 0);
    assert_eq!(
        s.prune(SystemTime::now() + Duration::from_secs(8 * 86_400))
            .unwrap(),
        1
    );
    let c = s.append(msg("a", b"same")).unwrap();
    assert!(!c.duplicate && c.id != a.id);
}

/// Probes of the duplicate index that went to the engine, and whether its filter is built.
fn dedup_probes(s: &Store) -> (u64, bool) {
    let f = dedup::lock(&s.shared.dedup);
    (f.probes, f.ready_for_test())
}

#[test]
fn new_messages_skip_the_duplicate_lookup_and_duplicates_are_still_found() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let first = s.append(msg("a", b"m-0")).unwrap();
    let (p0, ready) = dedup_probes(&s);
    assert!(ready, "an empty store's filter is built at open");
    for i in 1..300 {
        s.append(msg("a", format!("m-{i}").as_bytes())).unwrap();
    }
    let (p1, _) = dedup_probes(&s);
    assert!(
        p1 - p0 < 5,
        "{} engine lookups for 299 new messages",
        p1 - p0
    );
    assert_eq!(
        s.append(msg("a", b"m-0")).unwrap(),
        Appended {
            id: first.id,
            duplicate: true
        }
    );
    drop(s);
    // Reopened: the keys written before are read back into the filter.
    let s = Store::open(d.path(), opts()).unwrap();
    assert!(dedup_probes(&s).1);
    for i in [0, 150, 299] {
        assert!(
            s.append(msg("a", format!("m-{i}").as_bytes()))
                .unwrap()
                .duplicate,
            "m-{i}"
        );
    }
    assert!(
        !s.append(msg("b", b"m-0")).unwrap().duplicate,
        "another channel's copy"
    );
}

#[test]
fn the_filter_build_reads_every_page_of_a_large_index() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let n = dedup::PAGE * 2 + 7;
    let mut last = None;
    for i in 0..n {
        let (_, t) = s
            .append_nowait(msg("a", format!("m-{i}").as_bytes()))
            .unwrap();
        last = Some(t);
    }
    s.wait_durable_blocking(last.unwrap()).unwrap();
    drop(s);
    let s = Store::open(d.path(), opts()).unwrap();
    // The build goes on past the first page on a thread of its own; rebuild here, on this
    // thread, the same way, to check what it reads.
    *dedup::lock(&s.shared.dedup) = dedup::Filter::default();
    dedup::scan_all(&s).unwrap();
    assert!(dedup_probes(&s).1);
    for i in [0, dedup::PAGE - 1, dedup::PAGE, 2 * dedup::PAGE, n - 1] {
        assert!(
            s.append(msg("a", format!("m-{i}").as_bytes()))
                .unwrap()
                .duplicate,
            "m-{i}"
        );
    }
}

#[test]
fn fragments_complete_abandon_restart() {
    let d = tempfile::tempdir().unwrap();
    let frag = |t: &str, b: &[u8]| Fragment {
        channel: "astm1".into(),
        transmission: t.into(),
        protocol: Protocol::Astm,
        received_at: SystemTime::now(),
        clock_synced: Some(false),
        bytes: b.to_vec(),
    };
    {
        let s = Store::open(d.path(), opts()).unwrap();
        let id = s.append_fragment(frag("t1", b"H|\\^&\r")).unwrap();
        assert_eq!(s.append_fragment(frag("t1", &[b'R'; 20_000])).unwrap(), id);
        assert_eq!(s.stats().unwrap().totals.incomplete, 1);
        assert!(s.next_pending("astm1", 10).unwrap().is_empty());
        let done = s
            .complete("astm1", "t1", serde_json::json!({"records": 2}).into())
            .unwrap();
        assert_eq!((done.id, done.duplicate), (id, false));
        assert_eq!(
            s.next_pending("astm1", 10).unwrap()[0].bytes.len(),
            6 + 20_000
        );
        // Same content again → duplicate, partial removed.
        s.append_fragment(frag("t2", b"H|\\^&\r")).unwrap();
        s.append_fragment(frag("t2", &[b'R'; 20_000])).unwrap();
        let again = s
            .complete("astm1", "t2", serde_json::Value::Null.into())
            .unwrap();
        assert_eq!((again.id, again.duplicate), (id, true));
        // An unfinished transmission survives a restart as incomplete.
        s.append_fragment(frag("t3", b"H|partial")).unwrap();
        assert!(matches!(
            s.complete("astm1", "nope", serde_json::Value::Null.into()),
            Err(StoreError::NoPartial { .. })
        ));
    }
    let s = Store::open(d.path(), opts()).unwrap();
    let inc = s.list(Some("astm1"), Some(State::Incomplete), 10).unwrap();
    assert_eq!(inc.len(), 1);
    assert!(matches!(
        s.complete("astm1", "t3", serde_json::Value::Null.into()),
        Err(StoreError::NoPartial { .. })
    ));
    assert_eq!(s.retry_all(State::Incomplete).unwrap(), 1);
    assert_eq!(s.next_pending("astm1", 10).unwrap().len(), 2);
    let st = s.stats().unwrap();
    assert_eq!((st.totals.incomplete, st.totals.pending), (0, 2));
}

#[test]
fn quota_refuse_then_accept_after_delivery() {
    let d = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        max_bytes: 10 * 1024,
        ..opts()
    };
    let s = Store::open(d.path(), o).unwrap();
    let mut ids = Vec::new();
    let err = loop {
        match s.append(msg("a", format!("{:01000}", ids.len()).as_bytes())) {
            Ok(a) => ids.push(a.id),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, StoreError::Full(FullReason::Quota { .. })),
        "{err}"
    );
    assert!(ids.len() >= 5);
    s.confirm(ids[0]).unwrap();
    // Delivered still counts (kept for keep_delivered)...
    assert!(matches!(s.append(msg("a", b"x")), Err(StoreError::Full(_))));
    s.purge_delivered().unwrap();
    // ... and after it is gone there is room again.
    s.append(msg("a", b"x")).unwrap();
}

#[test]
fn min_free_refuses() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path(),
        StoreOptions {
            min_free: u64::MAX,
            ..opts()
        },
    )
    .unwrap();
    assert!(matches!(
        s.append(msg("a", b"x")),
        Err(StoreError::Full(FullReason::DiskFree { .. }))
    ));
}

/// The disk is asked for its free space at most once a second or per MiB charged, not
/// per message; a refusal is confirmed by a fresh answer.
#[test]
fn min_free_is_checked_once_a_second_or_per_mib() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path(),
        StoreOptions {
            min_free: 1,
            ..opts()
        },
    )
    .unwrap();
    let checks = |s: &Store| s.shared.free.lock().unwrap().checks;
    for i in 0..500u32 {
        s.append(msg("a", &i.to_be_bytes())).unwrap();
    }
    // 500 small messages in well under a second: one answer (maybe two if slow).
    assert!(checks(&s) <= 2, "{} statvfs calls", checks(&s));
    // Past 1 MiB charged the next write asks again.
    let before = checks(&s);
    for i in 0..3u8 {
        s.append(msg("a", &vec![i; 600 << 10])).unwrap();
    }
    assert!(checks(&s) > before && checks(&s) <= before + 3);
    // The estimate says full: confirmed by a fresh answer before refusing.
    let mut f = quota::FreeSpace::default();
    let dir = d.path();
    assert!(f.check(dir, 1, 0).unwrap().is_ok());
    let real = quota::available(dir).unwrap();
    assert!(
        f.check(dir, 1, real).unwrap().is_ok(),
        "charged up to what is free"
    );
    let n = f.checks;
    assert!(
        f.check(dir, 1, 0).unwrap().is_ok(),
        "the estimate said 0 free; asked again"
    );
    assert_eq!(f.checks, n + 1);
}

#[test]
fn drop_oldest_delivered_first_then_undelivered() {
    let d = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        max_bytes: 4 * (1000 + 256 + 20),
        when_full: WhenFull::DropOldest,
        ..opts()
    };
    let s = Store::open(d.path(), o).unwrap();
    let body = |i: usize| format!("{i:01000}").into_bytes();
    let ids: Vec<_> = (0..4)
        .map(|i| s.append(msg("a", &body(i))).unwrap().id)
        .collect();
    s.confirm(ids[2]).unwrap();
    let e = s.append(msg("a", &body(4))).unwrap().id;
    assert!(
        s.get(ids[2]).unwrap().is_none(),
        "the delivered one goes first"
    );
    assert!(s.get(ids[0]).unwrap().is_some());
    s.append(msg("a", &body(5))).unwrap();
    assert!(
        s.get(ids[0]).unwrap().is_none(),
        "then the oldest undelivered"
    );
    let st = s.stats().unwrap().totals;
    assert_eq!((st.dropped_delivered, st.dropped_undelivered), (1, 1));
    assert_eq!(
        s.next_pending("a", 10)
            .unwrap()
            .iter()
            .map(|m| m.info.id)
            .collect::<Vec<_>>(),
        vec![
            ids[1],
            ids[3],
            e,
            s.next_pending("a", 10).unwrap()[3].info.id
        ]
    );
}

#[test]
fn enospc_refuses_reopens_and_loses_nothing() {
    // The engine fails under the write-ahead log (as the agent runs), and without it.
    for with_log in [true, false] {
        enospc_case(with_log);
    }
}

/// The engine (with or without the write-ahead log under it) fails writes and reopens with
/// ENOSPC while `full` is set. `a_full_file_system_...` below fills a real file system.
fn enospc_case(with_log: bool) {
    let d = tempfile::tempdir().unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let f2 = Arc::clone(&full);
    let sled: Opener =
        Arc::new(|dir: &Path| Ok(Box::new(SledEngine::open(dir, 8 << 20)?) as Box<dyn Engine>));
    let inner = if with_log {
        wal::wal_opener(sled)
    } else {
        sled
    };
    let opener: Opener = Arc::new(move |dir: &Path| {
        if f2.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(Box::new(FaultyEngine {
            inner: inner(dir)?,
            full: Arc::clone(&f2),
        }) as Box<dyn Engine>)
    });
    let s = Store::open_engine(d.path(), opts(), opener).unwrap();
    let mut acked = Vec::new();
    for i in 0..20u32 {
        acked.push((s.append(msg("a", &i.to_be_bytes())).unwrap().id, i));
    }
    full.store(true, Ordering::SeqCst);
    for i in 20..25u32 {
        let e = s.append(msg("a", &i.to_be_bytes())).unwrap_err();
        assert!(
            matches!(e, StoreError::Io(ref io) if io.raw_os_error() == Some(28)),
            "with_log {with_log}: {e}"
        );
    }
    full.store(false, Ordering::SeqCst);
    for i in 25..30u32 {
        acked.push((s.append(msg("a", &i.to_be_bytes())).unwrap().id, i));
    }
    drop(s);
    let s = Store::open(d.path(), opts()).unwrap();
    for (id, i) in acked {
        assert_eq!(
            s.get(id).unwrap().expect("acked message lost").bytes,
            i.to_be_bytes()
        );
    }
}

fn set_version(dir: &std::path::Path, v: u32) {
    let e = SledEngine::open(dir, 1 << 20).unwrap();
    e.apply(vec![(
        keys::VERSION.to_vec(),
        Some(v.to_be_bytes().to_vec()),
    )])
    .unwrap();
    e.sync().unwrap();
}

#[test]
fn format_version_is_checked() {
    let d = tempfile::tempdir().unwrap();
    drop(Store::open(d.path(), opts()).unwrap());
    set_version(d.path(), 99);
    match Store::open(d.path(), opts()) {
        Err(StoreError::UnsupportedFormat {
            found: 99,
            supported: 3,
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a store of another format"),
    }
}

#[test]
fn format_1_is_upgraded_in_place() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_with(d.path(), opts(), EngineKind::SledDirect).unwrap();
    let id = s.append(msg("a", b"from version 1")).unwrap().id;
    drop(s);
    set_version(d.path(), 1);
    let s = Store::open(d.path(), opts()).unwrap();
    assert_eq!(s.get(id).unwrap().unwrap().bytes, b"from version 1");
    drop(s);
    let e = SledEngine::open(d.path(), 1 << 20).unwrap();
    assert_eq!(
        e.get(keys::VERSION).unwrap().unwrap(),
        keys::FORMAT_VERSION.to_be_bytes()
    );
}

/// Every `M` and `B` value in the engine, and whether any value is over [`CHUNK`].
fn message_keys(dir: &std::path::Path) -> (usize, usize, bool) {
    let e = SledEngine::open(dir, 1 << 20).unwrap();
    let all = e.range(&[], &[0xff], usize::MAX).unwrap();
    let count = |t: u8| all.iter().filter(|(k, _)| k[0] == t).count();
    let over = all.iter().any(|(_, v)| v.len() > engine::CHUNK);
    (count(b'M'), count(b'B'), over)
}

/// A message whose header and bytes fit in one value is one `M` key, no chunk; one that
/// does not fit is chunked as before (no value over `CHUNK`: no sled blob). Its bytes stay
/// through every state change, and a second copy is still a duplicate.
#[test]
fn a_small_message_is_one_record_and_keeps_its_bytes_through_its_states() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_with(d.path(), opts(), EngineKind::SledDirect).unwrap();
    let small = s.append(msg("a", b"MSH|^~\\&|\0|")).unwrap().id;
    let edge = vec![b'x'; engine::CHUNK - 64];
    let edge_id = s.append(msg("a", &edge)).unwrap().id;
    let big = vec![b'y'; 3 * engine::CHUNK];
    let big_id = s.append(msg("a", &big)).unwrap().id;
    let rejected = s.append_rejected(msg("b", b"no MSH"), "no MSH").unwrap().id;
    drop(s);
    // The edge case's header pushes it past CHUNK: chunked, 1 + 3 chunks of the big one.
    assert_eq!(message_keys(d.path()), (4, 1 + 3, false));
    let s = Store::open_with(d.path(), opts(), EngineKind::SledDirect).unwrap();
    s.confirm(small).unwrap();
    s.confirm_many(&[edge_id, big_id]).unwrap();
    s.retry(rejected).unwrap();
    s.retry(small).unwrap();
    assert_eq!(s.get(small).unwrap().unwrap().bytes, b"MSH|^~\\&|\0|");
    assert_eq!(s.get(edge_id).unwrap().unwrap().bytes, edge);
    assert_eq!(s.get(big_id).unwrap().unwrap().bytes, big);
    let p = s.next_pending("b", 10).unwrap();
    assert_eq!(p[0].bytes, b"no MSH");
    assert!(s.append(msg("a", b"MSH|^~\\&|\0|")).unwrap().duplicate);
    s.confirm(small).unwrap();
    assert_eq!(s.purge_delivered().unwrap(), 3);
    drop(s);
    assert_eq!(message_keys(d.path()), (1, 0, false));
}

/// A format-2 store keeps every message's bytes in `B` chunks. Opened by this binary, it
/// is upgraded in place: its messages read, change state and deduplicate as before, and
/// new ones are written in the new layout beside them.
#[test]
fn format_2_is_upgraded_in_place_and_its_chunked_messages_read() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_with(d.path(), opts(), EngineKind::SledDirect).unwrap();
    let old = s.append(msg("a", b"written by version 2")).unwrap().id;
    drop(s);
    // Rewrite the record as format 2 wrote it: header JSON alone, the bytes in a chunk.
    let e = SledEngine::open(d.path(), 1 << 20).unwrap();
    let mut h = keys::decode(&e.get(&keys::msg(old.seq())).unwrap().unwrap()).unwrap();
    let bytes = h.inline.take().expect("written beside its header");
    h.chunks = 1;
    e.apply(vec![
        (keys::body(old.seq(), 0), Some(bytes)),
        (keys::msg(old.seq()), Some(serde_json::to_vec(&h).unwrap())),
    ])
    .unwrap();
    e.sync().unwrap();
    drop(e);
    set_version(d.path(), 2);
    let s = Store::open(d.path(), opts()).unwrap();
    assert_eq!(s.get(old).unwrap().unwrap().bytes, b"written by version 2");
    assert!(
        s.append(msg("a", b"written by version 2"))
            .unwrap()
            .duplicate
    );
    let new = s.append(msg("a", b"written by version 3")).unwrap().id;
    s.confirm(old).unwrap();
    assert_eq!(s.get(old).unwrap().unwrap().bytes, b"written by version 2");
    assert_eq!(s.next_pending("a", 10).unwrap()[0].info.id, new);
    drop(s);
    let e = SledEngine::open(d.path(), 1 << 20).unwrap();
    assert_eq!(
        e.get(keys::VERSION).unwrap().unwrap(),
        keys::FORMAT_VERSION.to_be_bytes()
    );
}

#[test]
fn orders_and_token() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let o = |id: &str| NewOrder {
        id: id.into(),
        channel: "c".into(),
        text: format!("O|{id}"),
        specimens: Vec::new(),
    };
    assert!(s.put_order(o("o1")).unwrap());
    assert!(s.put_order(o("o2")).unwrap());
    assert!(!s.put_order(o("o1")).unwrap());
    assert_eq!(
        s.next_orders("c", 10)
            .unwrap()
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>(),
        ["o1", "o2"]
    );
    s.mark_order("o1", OrderOutcome::Retry, Some("busy"))
        .unwrap();
    assert_eq!(s.next_orders("c", 10).unwrap()[0].attempts, 1);
    s.mark_order("o1", OrderOutcome::Delivered, None).unwrap();
    assert_eq!(s.next_orders("c", 10).unwrap().len(), 1);
    assert!(
        !s.put_order(o("o1")).unwrap(),
        "a delivered order id is still known"
    );
    let t = Token {
        access_token: Secret::new("eyJ.secret"),
        token_type: "Bearer".into(),
        expires_at_unix: 42,
        obtained_at_unix: 7,
        scope: None,
    };
    assert!(!format!("{t:?}").contains("eyJ"));
    s.save_token(&t).unwrap();
    drop(s);
    let s = Store::open(d.path(), opts()).unwrap();
    assert_eq!(s.load_token().unwrap().unwrap(), t);
}

#[test]
fn group_commit_shares_syncs() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let before = s.stats().unwrap().syncs;
    std::thread::scope(|sc| {
        for t in 0..8 {
            let s = s.clone();
            sc.spawn(move || {
                for i in 0..50 {
                    s.append(msg("a", format!("{t}-{i}").as_bytes())).unwrap();
                }
            });
        }
    });
    let syncs = s.stats().unwrap().syncs - before;
    assert!(syncs <= 400, "{syncs} syncs for 400 appends");
    assert_eq!(s.stats().unwrap().totals.pending, 400);
}

// ---- property test against a model ----

#[derive(Debug, Clone)]
enum Op {
    Append(usize, u8),
    Confirm(usize, usize),
    Reject(usize, usize),
    Retry(usize, usize),
    PruneNone,
    PruneAll,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..12u8).prop_map(|(c, b)| Op::Append(c, b)),
        2 => (0..2usize, 0..4usize).prop_map(|(c, k)| Op::Confirm(c, k)),
        1 => (0..2usize, 0..4usize).prop_map(|(c, k)| Op::Reject(c, k)),
        1 => (0..2usize, 0..4usize).prop_map(|(c, k)| Op::Retry(c, k)),
        1 => Just(Op::PruneNone),
        1 => Just(Op::PruneAll),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone)]
struct ModelMsg {
    id: MessageId,
    bytes: Vec<u8>,
    state: State,
}

const CH: [&str; 2] = ["ch-a", "ch-b"];

fn body(b: u8) -> Vec<u8> {
    // Some bodies span several chunks.
    let n = if b % 3 == 0 { 20_000 } else { 10 + b as usize };
    (0..n)
        .map(|i| (i as u8).wrapping_mul(b).wrapping_add(b))
        .collect()
}

fn check(s: &Store, model: &[VecDeque<ModelMsg>; 2]) {
    let mut totals = Counters::default();
    for (c, q) in model.iter().enumerate() {
        let pending: Vec<_> = q.iter().filter(|m| m.state == State::Pending).collect();
        let got = s.next_pending(CH[c], usize::MAX).unwrap();
        assert_eq!(
            got.iter().map(|m| m.info.id).collect::<Vec<_>>(),
            pending.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        for (g, m) in got.iter().zip(&pending) {
            assert_eq!(g.bytes, m.bytes);
        }
        let all = s.list(Some(CH[c]), None, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|i| (i.id, i.state)).collect::<Vec<_>>(),
            q.iter().map(|m| (m.id, m.state)).collect::<Vec<_>>()
        );
        totals.pending += pending.len() as u64;
        totals.pending_bytes += pending.iter().map(|m| m.bytes.len() as u64).sum::<u64>();
        totals.delivered += q.iter().filter(|m| m.state == State::Delivered).count() as u64;
        totals.rejected += q.iter().filter(|m| m.state == State::Rejected).count() as u64;
    }
    let st = s.stats().unwrap().totals;
    assert_eq!(
        (st.pending, st.pending_bytes, st.delivered, st.rejected),
        (
            totals.pending,
            totals.pending_bytes,
            totals.delivered,
            totals.rejected
        )
    );
}

fn nth(q: &VecDeque<ModelMsg>, state: State, k: usize) -> Option<usize> {
    let idx: Vec<usize> = q
        .iter()
        .enumerate()
        .filter(|(_, m)| m.state == state)
        .map(|(i, _)| i)
        .collect();
    if idx.is_empty() {
        None
    } else {
        Some(idx[k % idx.len()])
    }
}

proptest! {
    // Deterministic: fixed seed (override with PROPTEST_RNG_SEED / PROPTEST_CASES).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x1ab0_a6e7),
        ),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path(), opts()).unwrap();
        let mut model: [VecDeque<ModelMsg>; 2] = [VecDeque::new(), VecDeque::new()];
        for op in ops {
            match op {
                Op::Append(c, b) => {
                    let bytes = body(b);
                    let a = s.append(msg(CH[c], &bytes)).unwrap();
                    match model[c].iter().find(|m| m.bytes == bytes) {
                        Some(m) => prop_assert_eq!((a.id, a.duplicate), (m.id, true)),
                        None => {
                            prop_assert!(!a.duplicate);
                            prop_assert!(model.iter().flatten().all(|m| m.id < a.id));
                            model[c].push_back(ModelMsg { id: a.id, bytes, state: State::Pending });
                        }
                    }
                }
                Op::Confirm(c, k) => if let Some(i) = nth(&model[c], State::Pending, k) {
                    s.confirm(model[c][i].id).unwrap();
                    model[c][i].state = State::Delivered;
                },
                Op::Reject(c, k) => if let Some(i) = nth(&model[c], State::Pending, k) {
                    s.reject(model[c][i].id, "422").unwrap();
                    model[c][i].state = State::Rejected;
                },
                Op::Retry(c, k) => if let Some(i) = nth(&model[c], State::Rejected, k) {
                    s.retry(model[c][i].id).unwrap();
                    model[c][i].state = State::Pending;
                },
                Op::PruneNone => { prop_assert_eq!(s.prune(SystemTime::now()).unwrap(), 0); }
                Op::PruneAll => {
                    let n = s.prune(SystemTime::now() + Duration::from_secs(8 * 86_400)).unwrap();
                    let before: usize = model.iter().map(|q| q.len()).sum();
                    for q in model.iter_mut() { q.retain(|m| m.state != State::Delivered); }
                    prop_assert_eq!(n, before - model.iter().map(|q| q.len()).sum::<usize>());
                }
                Op::Restart => {
                    drop(s);
                    s = Store::open(d.path(), opts()).unwrap();
                }
            }
            check(&s, &model);
        }
    }
}

#[cfg(feature = "bench-redb")]
#[test]
fn redb_engine_same_interface() {
    let d = tempfile::tempdir().unwrap();
    let a = {
        let s = Store::open_with(d.path(), opts(), EngineKind::Redb).unwrap();
        let a = s.append(msg("a", b"one")).unwrap();
        assert!(s.append(msg("a", b"one")).unwrap().duplicate);
        s.append(msg("a", b"two")).unwrap();
        s.confirm(a.id).unwrap();
        a
    };
    let s = Store::open_with(d.path(), opts(), EngineKind::Redb).unwrap();
    assert_eq!(s.get(a.id).unwrap().unwrap().info.state, State::Delivered);
    assert_eq!(s.next_pending("a", 10).unwrap()[0].bytes, b"two");
}

#[test]
fn confirm_many_is_confirm_for_a_batch() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let ids: Vec<MessageId> = (0..5u8)
        .map(|i| {
            s.append(msg(if i % 2 == 0 { "a" } else { "b" }, &[i; 10]))
                .unwrap()
                .id
        })
        .collect();
    s.reject(ids[4], "bad").unwrap();
    // A repeated id counts once; a rejected one is skipped with an error after the rest.
    let r = s.confirm_many(&[ids[0], ids[1], ids[1], ids[2], ids[4]]);
    assert!(
        matches!(r, Err(StoreError::InvalidState { id, .. }) if id == ids[4]),
        "{r:?}"
    );
    let st = s.stats().unwrap();
    assert_eq!(
        (st.totals.pending, st.totals.delivered, st.totals.rejected),
        (1, 3, 1)
    );
    assert_eq!(st.totals.pending_bytes, 10);
    assert_eq!(s.next_pending("a", 10).unwrap().len(), 0);
    assert_eq!(s.next_pending("b", 10).unwrap()[0].info.id, ids[3]);
    for id in &ids[..3] {
        let m = s.get(*id).unwrap().unwrap();
        assert_eq!(m.info.state, State::Delivered);
        assert!(m.info.delivered_at.is_some());
    }
    // Confirming again is a no-op; counters survive a reopen.
    s.confirm_many(&ids[..3]).unwrap();
    drop(s);
    let s = Store::open(d.path(), opts()).unwrap();
    let st = s.stats().unwrap();
    assert_eq!(
        (st.totals.pending, st.totals.delivered, st.totals.rejected),
        (1, 3, 1)
    );
    // Delivered messages are pruned like singly confirmed ones.
    assert_eq!(s.purge_delivered().unwrap(), 3);
}

/// A real full file system: a 16 MiB tmpfs with 8 MiB of ballast (needs root, as the test suite runs; skipped with
/// a message otherwise). Appends fill it until the store has refused three times, every
/// refusal is an error, and once space is freed the store takes messages again; every
/// message it accepted is there after a restart.
#[test]
fn a_full_file_system_refuses_then_recovers_and_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=16m",
            "labagent-test",
            mnt.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        assert!(
            !rustix::process::geteuid().is_root(),
            "mount failed as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // Ballast to free later: "space returned".
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
    let dir = mnt.join("store");
    let s = Store::open(&dir, opts()).unwrap();
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..20_000u32 {
        let mut bytes = vec![b'x'; 1024];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        match s.append(msg("a", &bytes)) {
            // An append may succeed after a refusal: reopening after the error lets the
            // store delete its covered log files, whose preallocated space then takes new
            // records. What counts is that every accepted message is there at the end.
            Ok(r) => acked.push((r.id, bytes)),
            Err(StoreError::Io(e)) => {
                eprintln!("append {i} refused: {e}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(refused, 3, "the file system never filled");
    assert!(acked.len() > 100, "filled too early: {}", acked.len());
    std::fs::remove_file(&ballast).unwrap();
    // Delivering frees nothing on disk (sled's file never shrinks), freeing the ballast does.
    let mut after = 0;
    for i in 0..20u32 {
        let bytes = format!("after {i}").into_bytes();
        match s.append(msg("a", &bytes)) {
            Ok(r) => {
                acked.push((r.id, bytes));
                after += 1;
            }
            Err(e) => eprintln!("after freeing space, append {i} refused: {e}"),
        }
    }
    eprintln!(
        "{} accepted before the disk filled, {after} of 20 after",
        acked.len() - after
    );
    assert_eq!(after, 20, "the store did not recover once space was freed");
    drop(s);
    let s = Store::open(&dir, opts()).unwrap();
    for (id, bytes) in &acked {
        assert_eq!(
            &s.get(*id).unwrap().expect("accepted message lost").bytes,
            bytes
        );
    }
}

#[test]
fn sled_apply_each_writes_in_order_and_survives_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let e = SledEngine::open(d.path(), 1 << 20).unwrap();
    e.apply_each(&[
        (b"a", Some(b"1")),
        (b"b", Some(b"1")),
        (b"a", Some(b"2")),
        (b"b", None),
    ])
    .unwrap();
    assert_eq!(e.get(b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(b"b").unwrap(), None);
    e.sync().unwrap();
    drop(e);
    let e = SledEngine::open(d.path(), 1 << 20).unwrap();
    assert_eq!(e.get(b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(b"b").unwrap(), None);
}

/// The queue scan starts at a floor that rises as the head is taken; a message retried
/// below it (an older sequence) must still come first.
#[test]
fn a_retried_message_below_the_scan_floor_is_found() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let ids: Vec<MessageId> = (0..4u8)
        .map(|i| s.append(msg("a", &[i; 8])).unwrap().id)
        .collect();
    s.reject(ids[0], "bad").unwrap();
    for &id in &ids[1..3] {
        assert_eq!(s.peek("a").unwrap().unwrap().info.id, id);
        s.confirm(id).unwrap();
    }
    assert_eq!(s.peek("a").unwrap().unwrap().info.id, ids[3]);
    s.retry(ids[0]).unwrap();
    let got: Vec<MessageId> = s
        .next_pending("a", 10)
        .unwrap()
        .iter()
        .map(|m| m.info.id)
        .collect();
    assert_eq!(got, vec![ids[0], ids[3]]);
    // Another channel's floor is its own.
    let b = s.append(msg("b", b"x")).unwrap().id;
    assert_eq!(s.peek("b").unwrap().unwrap().info.id, b);
    assert_eq!(s.peek("a").unwrap().unwrap().info.id, ids[0]);
}

/// Retries racing with a draining reader: afterwards every pending message is still
/// found by a scan (a floor raised past a re-queued entry would hide it).
#[test]
fn retries_racing_a_drain_leave_nothing_hidden() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts()).unwrap();
    let ids: Vec<MessageId> = (0..200u32)
        .map(|i| s.append(msg("a", &i.to_be_bytes())).unwrap().id)
        .collect();
    for id in &ids[..100] {
        s.reject(*id, "bad").unwrap();
    }
    std::thread::scope(|sc| {
        let r = s.clone();
        sc.spawn(move || {
            for id in &ids[..100] {
                r.retry(*id).unwrap();
            }
        });
        let q = s.clone();
        sc.spawn(move || {
            for _ in 0..400 {
                if let Some(m) = q.peek("a").unwrap() {
                    if m.info.id.seq % 3 == 0 {
                        q.confirm(m.info.id).unwrap();
                    }
                }
            }
        });
    });
    let pending = s.stats().unwrap().totals.pending;
    assert_eq!(
        s.next_pending("a", usize::MAX).unwrap().len() as u64,
        pending
    );
}
