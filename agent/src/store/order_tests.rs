//! The order cache: specimen index, one way out of pending, reports in the same write,
//! sweep, cursors; and a property test against an in-memory model.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

fn opts(reports: bool) -> StoreOptions {
    StoreOptions {
        min_free: 0,
        order_reports: reports,
        ..StoreOptions::default()
    }
}

fn order(id: &str, ch: &str, specimens: &[&str]) -> NewOrder {
    NewOrder {
        id: id.into(),
        channel: ch.into(),
        text: format!("H|\\^&\rO|1|{}||^^^GLU\rL|1|N\r", id),
        specimens: specimens.iter().map(|s| s.to_string()).collect(),
    }
}

fn ids(v: &[Order]) -> Vec<&str> {
    v.iter().map(|o| o.id.as_str()).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The reports queued on `#order-reports`, in order.
fn reports(st: &Store) -> Vec<OrderReportRecord> {
    st.next_pending(ORDER_REPORTS, 1000)
        .unwrap()
        .iter()
        .map(|m| serde_json::from_slice(&m.bytes).unwrap())
        .collect()
}

#[test]
fn orders_are_found_by_specimen_oldest_first_each_once() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(false)).unwrap();
    assert!(st.put_order(order("o1", "c", &["S1", "S2"])).unwrap());
    assert!(st.put_order(order("o2", "c", &["S2"])).unwrap());
    assert!(st.put_order(order("o3", "other", &["S1"])).unwrap());
    // Read from the text (O-3) when not given.
    assert!(st.put_order(order("S9", "c", &[])).unwrap());
    assert_eq!(st.order("S9").unwrap().unwrap().specimens, ["S9"]);
    let found = st
        .orders_for_specimens("c", &s(&["S2", "S1", " S2 "]))
        .unwrap();
    assert_eq!(ids(&found), ["o1", "o2"]);
    assert_eq!(
        ids(&st.orders_for_specimens("c", &s(&["S9"])).unwrap()),
        ["S9"]
    );
    assert!(st
        .orders_for_specimens("c", &s(&["S3", ""]))
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&st.orders_for_specimens("other", &s(&["S1"])).unwrap()),
        ["o3"]
    );
    // Survives a reopen.
    drop(st);
    let st = Store::open(d.path(), opts(false)).unwrap();
    assert_eq!(
        ids(&st.orders_for_specimens("c", &s(&["S1"])).unwrap()),
        ["o1"]
    );
}

#[test]
fn an_order_leaves_pending_once() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(true)).unwrap();
    st.put_order(order("o1", "c", &["S1"])).unwrap();
    st.put_order(order("o2", "c", &["S1"])).unwrap();
    st.put_order(order("o3", "c", &["S3"])).unwrap();
    // A retry keeps it pending and found.
    st.mark_order("o1", OrderOutcome::Retry, Some("busy"))
        .unwrap();
    assert_eq!(st.orders_for_specimens("c", &s(&["S1"])).unwrap().len(), 2);
    let o = st.mark_order("o1", OrderOutcome::Delivered, None).unwrap();
    assert_eq!(o.state, OrderState::Delivered);
    assert!(matches!(
        st.mark_order("o1", OrderOutcome::Failed, Some("x")),
        Err(StoreError::OrderNotPending(id)) if id == "o1"
    ));
    assert!(matches!(
        st.mark_order("o1", OrderOutcome::Retry, None),
        Err(StoreError::OrderNotPending(_))
    ));
    // Delivered: out of the index and the queue.
    assert_eq!(
        ids(&st.orders_for_specimens("c", &s(&["S1"])).unwrap()),
        ["o2"]
    );
    assert_eq!(ids(&st.next_orders("c", 10).unwrap()), ["o2", "o3"]);
    // answer_orders takes only what is still pending, each once.
    let taken = st
        .answer_orders(&s(&["o1", "o2", "o2", "nope"]), "query q-1")
        .unwrap();
    assert_eq!(taken, ["o2"]);
    assert!(st.answer_orders(&s(&["o2"]), "again").unwrap().is_empty());
    assert_eq!(
        st.order("o2").unwrap().unwrap().state,
        OrderState::AnsweredQuery
    );
    assert!(st
        .orders_for_specimens("c", &s(&["S1"]))
        .unwrap()
        .is_empty());
    assert!(matches!(
        st.mark_order("o2", OrderOutcome::Delivered, None),
        Err(StoreError::OrderNotPending(_))
    ));
    assert_eq!(ids(&st.next_orders("c", 10).unwrap()), ["o3"]);
    // The reports, in the order the states were reached.
    let r = reports(&st);
    let got: Vec<(&str, &str, &str)> = r
        .iter()
        .map(|r| (r.id.as_str(), r.status.as_str(), r.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("o1", "delivered", "delivered"),
            ("o2", "answered-query", "query q-1")
        ]
    );
    assert!(r.iter().all(|r| r.channel == "c" && r.at.ends_with('Z')));
    // Survives a reopen: the claim is durable.
    drop(st);
    let st = Store::open(d.path(), opts(true)).unwrap();
    assert!(st.answer_orders(&s(&["o2"]), "x").unwrap().is_empty());
    assert_eq!(reports(&st).len(), 2);
}

#[test]
fn reports_are_written_only_when_asked_for() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(false)).unwrap();
    st.put_order(order("o1", "c", &["S1"])).unwrap();
    st.mark_order("o1", OrderOutcome::Failed, Some("NAK"))
        .unwrap();
    assert!(reports(&st).is_empty());
    assert!(!st.channels().iter().any(|c| c == ORDER_REPORTS));
}

#[test]
fn an_order_that_cannot_be_taken_is_kept_failed_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(true)).unwrap();
    assert!(st
        .put_order_failed(order("o1", "nowhere", &["S1"]), "no channel \"nowhere\"")
        .unwrap());
    assert!(!st
        .put_order_failed(order("o1", "nowhere", &[]), "x")
        .unwrap());
    assert!(
        !st.put_order(order("o1", "nowhere", &[])).unwrap(),
        "same id"
    );
    let o = st.order("o1").unwrap().unwrap();
    assert_eq!(o.state, OrderState::Failed);
    assert!(st.next_orders("nowhere", 10).unwrap().is_empty());
    assert!(st
        .orders_for_specimens("nowhere", &s(&["S1"]))
        .unwrap()
        .is_empty());
    let r = reports(&st);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].status.as_str(), r[0].detail.as_str()),
        ("failed", "no channel \"nowhere\"")
    );
}

#[test]
fn sweep_expires_old_pending_orders_and_forgets_old_finished_ones() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(true)).unwrap();
    st.put_order(order("old", "c", &["S1"])).unwrap();
    st.put_order(order("done", "c", &["S2"])).unwrap();
    st.mark_order("done", OrderOutcome::Delivered, None)
        .unwrap();
    let keep = Duration::from_secs(3600);
    let now = SystemTime::now();
    // Nothing is old yet.
    assert_eq!(st.sweep_orders(keep, now).unwrap(), Sweep::default());
    st.put_order(order("young", "c", &["S1"])).unwrap();
    // Two hours later: both pending orders are older than keep... but "young" is as old
    // as "old" here, so look from a point where only "old" and "done" are: use keep
    // relative to now + 2h and check both pending ones expire, the finished is forgotten.
    let later = now + Duration::from_secs(2 * 3600);
    let sw = st.sweep_orders(keep, later).unwrap();
    let mut expired: Vec<&str> = sw.expired.iter().map(|o| o.id.as_str()).collect();
    expired.sort();
    assert_eq!(expired, ["old", "young"]);
    assert_eq!(sw.forgotten, 1);
    assert!(
        st.order("done").unwrap().is_none(),
        "forgotten: the id may come again"
    );
    assert!(st.put_order(order("done", "c", &[])).unwrap());
    assert_eq!(st.order("old").unwrap().unwrap().state, OrderState::Expired);
    assert!(st
        .orders_for_specimens("c", &s(&["S1"]))
        .unwrap()
        .is_empty());
    assert!(matches!(
        st.mark_order("old", OrderOutcome::Delivered, None),
        Err(StoreError::OrderNotPending(_))
    ));
    let statuses: Vec<String> = reports(&st).into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["delivered", "expired", "expired"]);
    // Expired orders are forgotten after keep too.
    let sw = st
        .sweep_orders(keep, later + Duration::from_secs(2 * 3600))
        .unwrap();
    assert_eq!(sw.forgotten, 2);
}

#[test]
fn cursors_are_kept_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(false)).unwrap();
    assert_eq!(st.cursor("orders").unwrap(), None);
    st.save_cursor("orders", "C1").unwrap();
    st.save_cursor("orders", "C2").unwrap();
    st.save_cursor("commands", "X").unwrap();
    drop(st);
    let st = Store::open(d.path(), opts(false)).unwrap();
    assert_eq!(st.cursor("orders").unwrap().as_deref(), Some("C2"));
    assert_eq!(st.cursor("commands").unwrap().as_deref(), Some("X"));
}

#[test]
fn list_orders_filters_by_channel_and_specimen() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), opts(false)).unwrap();
    st.put_order(order("o1", "a", &["S1"])).unwrap();
    st.put_order(order("o2", "b", &["S1", "S2"])).unwrap();
    st.put_order(order("o3", "a", &["S2"])).unwrap();
    st.mark_order("o3", OrderOutcome::Delivered, None).unwrap();
    assert_eq!(
        ids(&st.list_orders(None, None, 10).unwrap()),
        ["o1", "o2", "o3"]
    );
    assert_eq!(
        ids(&st.list_orders(Some("a"), None, 10).unwrap()),
        ["o1", "o3"]
    );
    assert_eq!(
        ids(&st.list_orders(None, Some("S2"), 10).unwrap()),
        ["o2", "o3"]
    );
    assert_eq!(ids(&st.list_orders(None, None, 1).unwrap()), ["o1"]);
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<usize>),
    Mark(usize, u8),
    Answer(Vec<usize>),
    Query(usize, Vec<usize>),
    Reopen,
}

const CHS: [&str; 2] = ["a", "b"];
const SPECS: [&str; 4] = ["S1", "S2", "S3", "S4"];

fn op() -> impl Strategy<Value = Op> {
    let spec = proptest::collection::vec(0..SPECS.len(), 0..3);
    prop_oneof![
        4 => (0..CHS.len(), spec.clone()).prop_map(|(c, s)| Op::Put(c, s)),
        2 => (0..12usize, 0..4u8).prop_map(|(k, o)| Op::Mark(k, o)),
        2 => proptest::collection::vec(0..12usize, 0..4).prop_map(Op::Answer),
        3 => (0..CHS.len(), spec).prop_map(|(c, s)| Op::Query(c, s)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelOrder {
    channel: usize,
    specimens: Vec<usize>,
    pending: bool,
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x0_0de5),
        ),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn order_cache_matches_model(ops in proptest::collection::vec(op(), 1..50)) {
        let d = tempfile::tempdir().unwrap();
        let mut st = Store::open(d.path(), opts(true)).unwrap();
        // Order k has id "o{k}"; insertion order is store order.
        let mut model: BTreeMap<usize, ModelOrder> = BTreeMap::new();
        let mut finished = 0usize;
        for op in ops {
            match op {
                Op::Put(c, sp) => {
                    let k = model.len();
                    let names: Vec<&str> = sp.iter().map(|i| SPECS[*i]).collect();
                    // No specimen given: the text's O-3 is the id itself (never queried).
                    let id = format!("o{k}");
                    prop_assert!(st.put_order(order(&id, CHS[c], &names)).unwrap());
                    model.insert(k, ModelOrder { channel: c, specimens: sp, pending: true });
                }
                Op::Mark(k, o) => {
                    let outcome = [OrderOutcome::Delivered, OrderOutcome::Failed, OrderOutcome::Retry, OrderOutcome::AnsweredQuery][o as usize];
                    let r = st.mark_order(&format!("o{k}"), outcome, None);
                    match model.get_mut(&k) {
                        None => prop_assert!(matches!(r, Err(StoreError::NoOrder(_)))),
                        Some(m) if !m.pending => prop_assert!(matches!(r, Err(StoreError::OrderNotPending(_)))),
                        Some(m) => {
                            r.unwrap();
                            if outcome != OrderOutcome::Retry {
                                m.pending = false;
                                finished += 1;
                            }
                        }
                    }
                }
                Op::Answer(ks) => {
                    let want: Vec<String> = ks.iter().map(|k| format!("o{k}")).collect();
                    let taken = st.answer_orders(&want, "q").unwrap();
                    let mut expect = Vec::new();
                    for k in ks {
                        if let Some(m) = model.get_mut(&k) {
                            if m.pending {
                                m.pending = false;
                                finished += 1;
                                expect.push(format!("o{k}"));
                            }
                        }
                    }
                    prop_assert_eq!(taken, expect);
                }
                Op::Query(c, sp) => {
                    let names: Vec<String> = sp.iter().map(|i| SPECS[*i].to_string()).collect();
                    let got: Vec<String> = st.orders_for_specimens(CHS[c], &names).unwrap()
                        .into_iter().map(|o| o.id).collect();
                    let expect: Vec<String> = model.iter()
                        .filter(|(_, m)| m.pending && m.channel == c && m.specimens.iter().any(|s| sp.contains(s)))
                        .map(|(k, _)| format!("o{k}"))
                        .collect();
                    prop_assert_eq!(got, expect);
                }
                Op::Reopen => {
                    drop(st);
                    st = Store::open(d.path(), opts(true)).unwrap();
                }
            }
            // Invariants after every step: the queues hold exactly the pending orders in
            // order, and one report per finished order.
            for (c, ch) in CHS.iter().enumerate() {
                let q: Vec<String> = st.next_orders(ch, 1000).unwrap().into_iter().map(|o| o.id).collect();
                let expect: Vec<String> = model.iter()
                    .filter(|(_, m)| m.pending && m.channel == c)
                    .map(|(k, _)| format!("o{k}"))
                    .collect();
                prop_assert_eq!(q, expect);
            }
            prop_assert_eq!(reports(&st).len(), finished);
        }
    }
}
