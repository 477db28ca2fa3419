//! Host queries end to end through the channel driver (issue 17): the instrument asks
//! which tests to run for its specimens and gets the answer within `query_timeout` — from
//! the upstream (the channel's query hook), else, in `orders = "query"` mode, from the
//! durable order cache, else "nothing known". The real query exchanges of the fixtures go
//! through: Vitros (answered with exactly its order download's records, the LIS's stray
//! frame digits removed), Erba (five specimens in one Q record), Mindray QRY^Q02, and an
//! IHE QBP^Q11.
//!
//! The instrument is the test, on the other end of an in-memory pipe; everything runs on
//! tokio's paused clock, so "within query_timeout" is measured in virtual time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labagent::channel::{ChannelCtx, Hooks, OrderReport};
use labagent::query::{QueryHook, QueryRequest};
use labagent::source::Conn;
use labagent::store::{NewOrder, OrderState, Protocol, Store, StoreOptions};
use labagent_config::{
    AckMode, Astm, Channel, Encoding, Hl7, OrderMode, ProtocolSettings, Transport,
};
use labagent_hal::astm::frame::{encode_frame, Decoded, FrameDecoder};
use labagent_hal::astm::{ACK, ENQ, EOT};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};

const CH: &str = "q";
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Guard on each wait, in virtual time.
const GUARD: Duration = Duration::from_secs(120);

fn shared(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures")
            .join(rel),
    )
    .ok()
}

/// The record text of a wire capture's frames.
fn frames_text(wire: &[u8]) -> Vec<u8> {
    let mut dec = FrameDecoder::<labagent_hal::buf::VecBuf>::new(64 * 1024);
    let mut text = Vec::new();
    for &b in wire {
        if let Decoded::Frame(f) = dec.push(b) {
            text.extend_from_slice(f.text);
        }
    }
    text
}

/// What the upstream does with a query.
#[derive(Clone)]
enum Upstream {
    /// Knows nothing (or is down): `None` at once.
    Nothing,
    /// Answers with this text.
    Answer(String),
    /// Never answers (a server slower than any deadline).
    Silent,
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    ctx: Arc<ChannelCtx>,
    inst: DuplexStream,
    _stop: watch::Sender<bool>,
    reports: mpsc::UnboundedReceiver<OrderReport>,
    asked: Arc<Mutex<Vec<QueryRequest>>>,
    /// Senders of silent answers, kept so they never resolve.
    _held: Arc<Mutex<Vec<oneshot::Sender<Option<String>>>>>,
}

fn settings_astm() -> ProtocolSettings {
    ProtocolSettings::Astm(Astm {
        receive_timeout: Duration::from_secs(30),
        ack_timeout: Duration::from_secs(15),
        max_retries: 6,
        max_frame: 64 * 1024,
        max_message: 4 << 20,
        query_id_component: None,
    })
}

fn settings_hl7() -> ProtocolSettings {
    ProtocolSettings::Hl7(Hl7 {
        ack: AckMode::Original,
        max_message: 1 << 20,
        max_connections: 4,
        idle_timeout: Duration::from_secs(600),
    })
}

impl Rig {
    fn start(
        settings: ProtocolSettings,
        mode: OrderMode,
        upstream: Upstream,
        orders: &[NewOrder],
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("store"),
            StoreOptions {
                min_free: 0,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let protocol = match settings {
            ProtocolSettings::Hl7(_) => Protocol::Hl7,
            _ => Protocol::Astm,
        };
        for o in orders {
            assert!(store.put_order_for(o.clone(), protocol).unwrap());
        }
        let (rtx, reports) = mpsc::unbounded_channel();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a2, h2) = (asked.clone(), held.clone());
        let query: QueryHook = Arc::new(move |q, _deadline| {
            a2.lock().unwrap().push(q);
            let (tx, rx) = oneshot::channel();
            match &upstream {
                Upstream::Nothing => drop(tx.send(None)),
                Upstream::Answer(t) => drop(tx.send(Some(t.clone()))),
                Upstream::Silent => h2.lock().unwrap().push(tx),
            }
            rx
        });
        let hooks = Hooks {
            order: Arc::new(move |r| drop(rtx.send(r))),
            query,
            ..Hooks::default()
        };
        let config = Channel {
            name: CH.into(),
            transport: Transport::Listen("127.0.0.1:0".parse().unwrap()),
            encoding: Encoding::Auto,
            settings,
            orders: mode,
            query_timeout: QUERY_TIMEOUT,
        };
        let (stop, stopping) = watch::channel(false);
        let ctx = ChannelCtx::new(config, store.clone(), hooks, stopping);
        let (agent_end, inst) = tokio::io::duplex(64 * 1024);
        let conn = Conn::detached("test-pipe", Box::new(agent_end));
        tokio::spawn(labagent::channel::serve(conn, ctx.clone()));
        Rig {
            _dir: dir,
            store,
            ctx,
            inst,
            _stop: stop,
            reports,
            asked,
            _held: held,
        }
    }

    async fn byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        timeout(GUARD, self.inst.read_exact(&mut b))
            .await
            .expect("the agent answers")
            .unwrap();
        b[0]
    }

    /// Sends records as an ASTM transmission, a frame per record (the agent ACKs each),
    /// then EOT; returns when the EOT was written.
    async fn astm_query(&mut self, text: &[u8]) -> Instant {
        self.inst.write_all(&[ENQ]).await.unwrap();
        assert_eq!(self.byte().await, ACK);
        let mut buf = vec![0u8; 300];
        for (i, rec) in text.split_inclusive(|&b| b == b'\r').enumerate() {
            let n = encode_frame(((i + 1) % 8) as u8, rec, true, &mut buf).unwrap();
            self.inst.write_all(&buf[..n]).await.unwrap();
            assert_eq!(self.byte().await, ACK, "frame {i} ACKed");
        }
        self.inst.write_all(&[EOT]).await.unwrap();
        Instant::now()
    }

    /// The agent's answer transmission, the instrument ACKing each frame: (record text,
    /// when its ENQ arrived).
    async fn astm_answer(&mut self) -> (String, Instant) {
        assert_eq!(self.byte().await, ENQ, "the agent bids for the line");
        let at = Instant::now();
        self.inst.write_all(&[ACK]).await.unwrap();
        let mut dec = FrameDecoder::<labagent_hal::buf::VecBuf>::new(64 * 1024);
        let mut text = Vec::new();
        loop {
            let b = self.byte().await;
            if b == EOT {
                return (String::from_utf8(text).unwrap(), at);
            }
            if let Decoded::Frame(f) = dec.push(b) {
                text.extend_from_slice(f.text);
                self.inst.write_all(&[ACK]).await.unwrap();
            }
        }
    }

    /// Sends one MLLP block; returns when written.
    async fn mllp(&mut self, msg: &[u8]) -> Instant {
        let mut block = vec![0x0b];
        block.extend_from_slice(msg);
        block.extend_from_slice(&[0x1c, 0x0d]);
        self.inst.write_all(&block).await.unwrap();
        Instant::now()
    }

    /// The next MLLP block from the agent: (message, when its first byte arrived).
    async fn mllp_reply(&mut self) -> (String, Instant) {
        assert_eq!(self.byte().await, 0x0b);
        let at = Instant::now();
        let mut msg = Vec::new();
        loop {
            let b = self.byte().await;
            if b == 0x1c {
                assert_eq!(self.byte().await, 0x0d);
                return (String::from_utf8(msg).unwrap(), at);
            }
            msg.push(b);
        }
    }

    fn state(&self, id: &str) -> OrderState {
        self.store.order(id).unwrap().unwrap().state
    }
}

fn order(id: &str, text: &str, specimens: &[&str]) -> NewOrder {
    NewOrder {
        id: id.into(),
        channel: CH.into(),
        text: text.into(),
        specimens: specimens.iter().map(|s| s.to_string()).collect(),
    }
}

/// Removes the LIS's stray frame digit before each record type (`2P|` → `P|`).
fn without_frame_digits(text: &str) -> String {
    text.split_inclusive('\r')
        .map(|r| {
            let b = r.as_bytes();
            if b.len() > 2 && b[0].is_ascii_digit() && b[1].is_ascii_uppercase() {
                &r[1..]
            } else {
                r
            }
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn vitros_query_is_answered_from_the_cache_with_exactly_the_order_download_records() {
    let (Some(query), Some(download)) = (
        shared("astm-wire/nish_ortho_vitros3600_query.bin"),
        shared("astm-wire/nish_ortho_vitros3600_order_download.bin"),
    ) else {
        return;
    };
    // The order as the LIS sent it (stray digits and all); its specimen read from O-3.
    let text = String::from_utf8(frames_text(&download)).unwrap();
    let mut rig = Rig::start(
        settings_astm(),
        OrderMode::Query,
        Upstream::Nothing,
        &[order("vitros-1", &text, &[])],
    );
    let eot = rig.astm_query(&frames_text(&query)).await;
    let (answer, at) = rig.astm_answer().await;
    assert_eq!(answer, without_frame_digits(&text));
    assert!(answer.starts_with("H|\\^&|||3600796") && answer.contains("\rO|1|1068687|"));
    assert!(at - eot < QUERY_TIMEOUT, "answered within query_timeout");
    let asked = rig.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "the upstream was asked first");
    assert_eq!(asked[0].specimens, ["1068687"]);
    assert!(asked[0].text.contains("Q|1|^1068687"));
    assert_eq!(rig.state("vitros-1"), OrderState::AnsweredQuery);
    let r = timeout(GUARD, rig.reports.recv()).await.unwrap().unwrap();
    assert_eq!(
        (r.id.as_str(), r.state.as_str()),
        ("vitros-1", "answered-query")
    );
    let q = rig.ctx.counters.snapshot().queries;
    assert_eq!((q.upstream, q.cache, q.none), (0, 1, 0));
    // Stored like any message, for the audit trail, with kind = "query".
    let stored = rig.store.list(Some(CH), None, 10).unwrap();
    assert_eq!(stored.len(), 1);
    let m = rig.store.get(stored[0].id).unwrap().unwrap();
    assert_eq!(m.info.meta["kind"], "query");
    // A second query for the same specimen: the order is never sent twice.
    let eot = rig.astm_query(&frames_text(&query)).await;
    let (answer, at) = rig.astm_answer().await;
    assert_eq!(answer, "H|\\^&\rL|1|I\r", "no information");
    assert!(at - eot < QUERY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn erba_multi_query_answers_the_known_specimens_in_one_message() {
    let Some(query) = shared("astm-wire/nish_erba_xl1000_multiquery_recon.bin") else {
        return;
    };
    let order_for = |sid: &str| {
        format!(
            "H|`^&|||LIS\rP|1|PID-{sid}\rO|1|{sid}^||^^^Na`^^^K|S||20100607074416||||A\rL|1|N\r"
        )
    };
    // Three of the five specimens are known, stored out of the query's order.
    let known = ["1007151", "1007149", "1007148"];
    let orders: Vec<NewOrder> = known
        .iter()
        .enumerate()
        .map(|(i, s)| order(&format!("erba-{i}"), &order_for(s), &[]))
        .collect();
    let mut rig = Rig::start(
        settings_astm(),
        OrderMode::Query,
        Upstream::Nothing,
        &orders,
    );
    let eot = rig.astm_query(&frames_text(&query)).await;
    let (answer, at) = rig.astm_answer().await;
    assert!(at - eot < QUERY_TIMEOUT);
    assert_eq!(
        rig.asked.lock().unwrap()[0].specimens,
        ["1007149", "1007152", "1007151", "1007150", "1007148"]
    );
    // One H, each order's records in the order they were stored (P records numbered
    // within the answer), one L.
    assert_eq!(
        answer,
        "H|`^&|||LIS\r\
         P|1|PID-1007151\rO|1|1007151^||^^^Na`^^^K|S||20100607074416||||A\r\
         P|2|PID-1007149\rO|1|1007149^||^^^Na`^^^K|S||20100607074416||||A\r\
         P|3|PID-1007148\rO|1|1007148^||^^^Na`^^^K|S||20100607074416||||A\r\
         L|1|N\r"
    );
    for i in 0..3 {
        assert_eq!(rig.state(&format!("erba-{i}")), OrderState::AnsweredQuery);
    }
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_answer_comes_first_and_the_cache_is_left_alone() {
    let q = b"H|\\^&\rQ|1|^S7||ALL\rL|1|N\r";
    let up = "H|\\^&|||LIMS\rP|1\rO|1|S7||^^^GLU\rL|1|N\r";
    let mut rig = Rig::start(
        settings_astm(),
        OrderMode::Query,
        Upstream::Answer(up.replace('\r', "\r\n")),
        &[order("s7", "H|\\^&\rO|1|S7||^^^NA\rL|1|N\r", &[])],
    );
    rig.astm_query(q).await;
    let (answer, _) = rig.astm_answer().await;
    assert_eq!(answer, up, "the upstream's records, line ends made CR");
    assert_eq!(rig.state("s7"), OrderState::Pending);
    assert_eq!(rig.ctx.counters.snapshot().queries.upstream, 1);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_slower_than_query_timeout_gives_way_to_the_cache_or_no_information() {
    let q = b"H|\\^&\rQ|1|^S8||ALL\rL|1|N\r";
    // Cached: answered from the cache in time.
    let cached = "H|\\^&\rP|1\rO|1|S8||^^^K\rL|1|N\r";
    let mut rig = Rig::start(
        settings_astm(),
        OrderMode::Query,
        Upstream::Silent,
        &[order("s8", cached, &[])],
    );
    let eot = rig.astm_query(q).await;
    let (answer, at) = rig.astm_answer().await;
    assert_eq!(answer, cached);
    assert!(
        at - eot >= QUERY_TIMEOUT * 3 / 4,
        "the upstream had its time"
    );
    assert!(at - eot < QUERY_TIMEOUT, "answered within query_timeout");
    // Nothing cached: "no information" in time.
    let mut rig = Rig::start(settings_astm(), OrderMode::Query, Upstream::Silent, &[]);
    let eot = rig.astm_query(q).await;
    let (answer, at) = rig.astm_answer().await;
    assert_eq!(answer, "H|\\^&\rL|1|I\r");
    assert!(at - eot <= QUERY_TIMEOUT);
    assert_eq!(rig.ctx.counters.snapshot().queries.none, 1);
}

#[tokio::test(start_paused = true)]
async fn push_mode_never_answers_from_the_cache_and_query_mode_pushes_only_what_no_query_finds() {
    let q = b"H|\\^&\rQ|1|^S9||ALL\rL|1|N\r";
    // Query mode: an order with a specimen id waits for the query; one whose id cannot be
    // read (no O record) is pushed as it would be in push mode, and only that one.
    let unindexed = "H|\\^&\rC|1|L|recalibrate before the next run|G\rL|1|N\r";
    let mut rig = Rig::start(
        settings_astm(),
        OrderMode::Query,
        Upstream::Nothing,
        &[
            order("s9", "H|\\^&\rO|1|S9||^^^K\rL|1|N\r", &[]),
            order("no-id", unindexed, &[]),
        ],
    );
    let (pushed, _) = rig.astm_answer().await;
    assert_eq!(pushed, unindexed);
    rig.ctx.orders.notify_one();
    let mut b = [0u8; 1];
    assert!(
        timeout(Duration::from_secs(600), rig.inst.read_exact(&mut b))
            .await
            .is_err(),
        "no ENQ for the order a query can find"
    );
    assert_eq!(rig.state("s9"), OrderState::Pending);
    assert_eq!(rig.state("no-id"), OrderState::Delivered);
    // Push mode: the query is answered from the upstream or "no information", never the
    // cache (the order goes out as a download of its own).
    let mut rig = Rig::start(settings_astm(), OrderMode::Push, Upstream::Nothing, &[]);
    rig.store
        .put_order_for(
            order("s9p", "H|\\^&\rO|1|S9||^^^K\rL|1|N\r", &[]),
            Protocol::Astm,
        )
        .unwrap();
    let (pushed, _) = rig.astm_answer().await;
    assert!(
        pushed.contains("O|1|S9"),
        "the order is pushed as it arrives"
    );
    rig.astm_query(q).await;
    let (answer, _) = rig.astm_answer().await;
    assert_eq!(answer, "H|\\^&\rL|1|I\r");
}

#[tokio::test(start_paused = true)]
async fn mindray_qry_q02_over_mllp_is_answered_from_the_cache_in_place_of_the_ack() {
    let (Some(qry), Some(dsr)) = (
        shared("hl7/mindray_cl2000i_qry_1.hl7"),
        shared("hl7/mindray_cl2000i_dsr_1.hl7"),
    ) else {
        return;
    };
    let qry = labagent::simulate::hl7_messages(&qry).remove(0);
    let dsr = String::from_utf8(labagent::simulate::hl7_messages(&dsr).remove(0)).unwrap();
    // The cached answer: Mindray's QCK^Q02 then its DSR^Q03, indexed by QRD-8.
    let qck = "MSH|^~\\&|||||20120508110131||QCK^Q02|4|P|2.3.1||||||ASCII|||\rMSA|AA|4|Message accepted|||0|\rERR|0|\rQAK|SR|OK|\r";
    let cached = format!("{qck}{dsr}");
    let mut rig = Rig::start(
        settings_hl7(),
        OrderMode::Query,
        Upstream::Nothing,
        &[order("m1", &cached, &["0019"])],
    );
    let sent = rig.mllp(&qry).await;
    let (first, at) = rig.mllp_reply().await;
    assert!(at - sent < QUERY_TIMEOUT);
    assert_eq!(first, qck, "the QCK^Q02 comes in place of the ACK");
    let (second, _) = rig.mllp_reply().await;
    assert_eq!(second, dsr.replace('\n', "\r"));
    assert_eq!(rig.asked.lock().unwrap()[0].specimens, ["0019"]);
    assert_eq!(rig.state("m1"), OrderState::AnsweredQuery);
}

#[tokio::test(start_paused = true)]
async fn qbp_q11_with_nothing_known_gets_rsp_k11_nf_in_time() {
    let qbp = "MSH|^~\\&|ANALYZER|LAB|LIS|LAB|20261204120000||QBP^Q11^QBP_Q11|Q123|P|2.5.1\rQPD|WOS^Work Order Step^IHE_LABTF|Q123|SPC-77\rRCP|I||R\r";
    let mut rig = Rig::start(settings_hl7(), OrderMode::Query, Upstream::Nothing, &[]);
    let sent = rig.mllp(qbp.as_bytes()).await;
    let (rsp, at) = rig.mllp_reply().await;
    assert!(at - sent < QUERY_TIMEOUT);
    assert!(rsp.contains("RSP^K11"), "{rsp}");
    assert!(rsp.contains("\rMSA|AA|Q123"), "{rsp}");
    assert!(rsp.contains("\rQAK|Q123|NF"), "{rsp}");
    assert_eq!(rig.asked.lock().unwrap()[0].specimens, ["SPC-77"]);
    assert_eq!(rig.ctx.counters.snapshot().queries.none, 1);
}
