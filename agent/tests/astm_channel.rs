//! The ASTM driver (`labagent::channel::astm::serve`: the hal's link on the generic
//! driver) with a real store behind it, the
//! instrument played by the test on the other end of an in-memory pipe (`Conn::detached`
//! over a tokio duplex). Everything runs on tokio's paused clock: the pipe has no kernel
//! in between, so virtual time only moves when both sides wait (the store's blocking
//! calls hold it still), and the receive and contention timers cost no real time.
//!
//! Each test checks what the instrument saw on the wire (ACK / NAK bytes) against what the
//! store holds (through the store's own API), so a driver that ACKed before storing, lost
//! a frame, stored twice or kept frame envelopes would fail here.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use labagent::channel::astm::order_text;
use labagent::channel::{ChannelCtx, Hooks, OrderReport};
use labagent::simulate::{wire::Wire, AstmInstrument};
use labagent::source::Conn;
use labagent::store::{Message, NewMessage, NewOrder, State, Store, StoreOptions};
use labagent_config::{Astm, Channel, Encoding, ProtocolSettings, Transport};
use labagent_hal::astm::frame::encode_frame;
use labagent_hal::astm::{ACK, CR, ENQ, EOT, ETB, ETX, LF, NAK, STX};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const CH: &str = "chem";
/// Guard on each wait, in virtual time (valid here: no kernel IO, see the module doc).
const GUARD: Duration = Duration::from_secs(120);

fn channel(receive_timeout: Duration) -> Channel {
    Channel {
        name: CH.into(),
        transport: Transport::Listen("127.0.0.1:0".parse().unwrap()),
        encoding: Encoding::Auto,
        settings: ProtocolSettings::Astm(Astm {
            receive_timeout,
            ack_timeout: Duration::from_secs(15),
            max_retries: 6,
            max_frame: 64 * 1024,
            max_message: 4 << 20,
            query_id_component: None,
        }),
        orders: labagent_config::OrderMode::Push,
        query_timeout: std::time::Duration::from_secs(5),
    }
}

fn store_opts(max_bytes: u64) -> StoreOptions {
    StoreOptions {
        max_bytes,
        // Independent of the machine's free disk space.
        min_free: 0,
        ..StoreOptions::default()
    }
}

/// The driver on one end of a pipe, the instrument's end in the test's hands.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    ctx: Arc<ChannelCtx>,
    inst: DuplexStream,
    stop: watch::Sender<bool>,
    driver: JoinHandle<io::Result<()>>,
    orders: mpsc::UnboundedReceiver<OrderReport>,
    /// FN of the next frame in the current transmission.
    fn_next: u8,
}

impl Rig {
    fn start(opts: StoreOptions, receive_timeout: Duration) -> Rig {
        Self::start_with(opts, receive_timeout, |_| {})
    }

    /// `prepare` runs on the store before the driver starts (e.g. to queue an order).
    fn start_with(
        opts: StoreOptions,
        receive_timeout: Duration,
        prepare: impl FnOnce(&Store),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store"), opts).unwrap();
        prepare(&store);
        let (otx, orders) = mpsc::unbounded_channel();
        let hooks = Hooks {
            order: Arc::new(move |r| {
                let _ = otx.send(r);
            }),
            ..Hooks::default()
        };
        let (stop, stopping) = watch::channel(false);
        let ctx = ChannelCtx::new(channel(receive_timeout), store.clone(), hooks, stopping);
        let (agent_end, inst) = tokio::io::duplex(64 * 1024);
        let conn = Conn::detached("test-pipe", Box::new(agent_end));
        let driver = tokio::spawn(labagent::channel::astm::serve(conn, ctx.clone()));
        Rig {
            _dir: dir,
            store,
            ctx,
            inst,
            stop,
            driver,
            orders,
            fn_next: 1,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.inst.write_all(bytes).await.unwrap();
    }

    /// The agent's next byte.
    async fn reply(&mut self) -> u8 {
        let mut b = [0u8; 1];
        timeout(GUARD, self.inst.read_exact(&mut b))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the agent answers; counters {:?}",
                    self.ctx.counters.snapshot()
                )
            })
            .unwrap();
        b[0]
    }

    /// ENQ, expecting ACK; frame numbers restart at 1.
    async fn enq(&mut self) {
        self.send(&[ENQ]).await;
        assert_eq!(self.reply().await, ACK, "ENQ answered ACK");
        self.fn_next = 1;
    }

    /// One frame with the next FN; returns the agent's reply. The FN advances only on ACK
    /// (after NAK the instrument sends the same frame, same FN, again).
    async fn frame(&mut self, text: &[u8], last: bool) -> u8 {
        let mut buf = vec![0u8; text.len() + 16];
        let n = encode_frame(self.fn_next, text, last, &mut buf).unwrap();
        self.send(&buf[..n]).await;
        let r = self.reply().await;
        if r == ACK {
            self.fn_next = (self.fn_next + 1) % 8;
        }
        r
    }

    /// Every frame of `text` (records split at 240 bytes, ETB then ETX per record), each
    /// expected to be ACKed.
    async fn records(&mut self, text: &[u8]) {
        for (t, last) in frames(text) {
            assert_eq!(self.frame(&t, last).await, ACK, "frame ACKed");
        }
    }

    async fn eot(&mut self) {
        self.send(&[EOT]).await;
    }

    /// One whole transmission: ENQ, the frames, EOT.
    async fn transmit(&mut self, text: &[u8]) {
        self.enq().await;
        self.records(text).await;
        self.eot().await;
    }

    /// The agent's own transmission (e.g. the answer to a host query), every frame ACKed:
    /// its bytes up to EOT.
    async fn take_transmission(&mut self) -> Vec<u8> {
        assert_eq!(self.reply().await, ENQ, "the agent bids for the line");
        self.send(&[ACK]).await;
        let mut got = Vec::new();
        loop {
            let b = self.reply().await;
            got.push(b);
            match b {
                EOT => return got,
                LF => self.send(&[ACK]).await,
                _ => {}
            }
        }
    }

    /// Stops the driver (it returns once the line is idle) and checks it ended cleanly.
    async fn finish(self) {
        self.stop.send(true).unwrap();
        let r = timeout(GUARD, self.driver)
            .await
            .expect("driver stops when idle");
        r.unwrap().unwrap();
    }

    /// Ends the driver by closing the line (e.g. while it waits for an answer to its ENQ).
    async fn finish_now(self) {
        drop(self.inst);
        let r = timeout(GUARD, self.driver).await.expect("driver ends");
        r.unwrap().unwrap();
    }

    /// Messages of the channel in `state` (None: any), with their bytes, oldest first.
    fn messages(&self, state: Option<State>) -> Vec<Message> {
        self.store
            .list(Some(CH), state, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|i| self.store.get(i.id).unwrap().unwrap())
            .collect()
    }
}

/// Frames as a conforming sender makes them: per record, 240-byte pieces, ETB on all but
/// the record's last piece.
fn frames(text: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    for rec in text.split_inclusive(|&b| b == CR) {
        let n = rec.chunks(240).count();
        for (i, c) in rec.chunks(240).enumerate() {
            out.push((c.to_vec(), i + 1 == n));
        }
    }
    out
}

fn message(sample: &str, results: usize) -> Vec<u8> {
    let mut m = format!(
        "H|\\^&|||Chem-Analyzer^2.1^SN-7|||||LIS||P|1|20261130120000\rP|1||PID-{sample}\rO|1|{sample}||^^^PANEL|R\r"
    );
    for i in 0..results {
        m.push_str(&format!(
            "R|{}|^^^T{i}|{}.{i}|mmol/L||N||F||||20261130120000\r",
            i + 1,
            i + 3
        ));
    }
    m.push_str("L|1|N\r");
    m.into_bytes()
}

fn no_envelope(bytes: &[u8]) {
    for b in [STX, ETX, ETB, ENQ, EOT, LF] {
        assert!(!bytes.contains(&b), "stored text has control byte {b:#04x}");
    }
}

#[tokio::test(start_paused = true)]
async fn store_refusal_is_answered_nak_and_the_retry_succeeds_once_space_frees() {
    // Quota 4096 bytes. A filler message takes 3500 (256 of them the per-message
    // overhead): frame 1 (a new partial: 240 bytes + 4 of meta + 256) still fits, frame 2
    // (+200 bytes) does not.
    let filler_id = std::cell::Cell::new(None);
    let mut rig = Rig::start_with(store_opts(4096), Duration::from_secs(30), |s| {
        let a = s
            .append(NewMessage {
                channel: "other".into(),
                protocol: labagent::store::Protocol::Raw,
                received_at: std::time::SystemTime::now(),
                clock_synced: Some(true),
                bytes: vec![b'f'; 3500 - 256 - 2],
                meta: serde_json::json!({}).into(),
            })
            .unwrap();
        filler_id.set(Some(a.id));
    });
    // Several records in one frame, as many instruments send them.
    let head = b"H|\\^&|||Chem-Analyzer^2.1\rP|1||PID-Q\rO|1|Q||^^^X|R\rR|1|^^^A|1|u\rC|1|L|";
    let f1 = [&head[..], &vec![b'c'; 240 - head.len() - 1], b"\r"].concat();
    assert_eq!(f1.len(), 240);
    let f2 = [&b"C|1|L|"[..], &[b'n'; 186], b"\rL|1|N\r"].concat();
    assert_eq!(f2.len(), 199);

    rig.enq().await;
    // f1 is one record of 240 bytes that ends the frame: send it as ETX.
    assert_eq!(rig.frame(&f1, true).await, ACK);
    // ACKed means durable: the partial is in the store with exactly frame 1's text.
    let inc = rig.messages(Some(State::Incomplete));
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].bytes, f1);

    // Frame 2 does not fit the quota: NAK, and nothing new is pending.
    assert_eq!(rig.frame(&f2, true).await, NAK, "store refusal → NAK");
    assert!(rig.messages(Some(State::Pending)).is_empty());
    let snap = rig.ctx.counters.snapshot();
    assert_eq!((snap.refused, snap.naks, snap.stored), (1, 1, 0));
    // The instrument retries; still no room: NAK again, still nothing pending.
    assert_eq!(rig.frame(&f2, true).await, NAK);
    assert!(rig.messages(Some(State::Pending)).is_empty());

    // Space frees: the filler is delivered and purged.
    let id = filler_id.get().unwrap();
    rig.store.confirm(id).unwrap();
    assert_eq!(rig.store.purge_delivered().unwrap(), 1);

    // The same frame, same FN, once more: ACK, and the whole message is stored.
    assert_eq!(rig.frame(&f2, true).await, ACK, "retry after space freed");
    rig.eot().await;
    let full = [&f1[..], &f2[..]].concat();
    let pending = rig.messages(Some(State::Pending));
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].bytes, full);
    assert_eq!(pending[0].info.meta["sender"], "Chem-Analyzer");
    // The refused frame wrote nothing: the partial of frame 1 was completed in place (the
    // driver no longer rewrites a whole partial after a failure), so no incomplete copy
    // is left behind.
    assert!(rig.messages(Some(State::Incomplete)).is_empty());
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_single_frame_message_refused_by_a_full_store_is_never_acked() {
    // Quota smaller than any message: every store call refuses.
    let mut rig = Rig::start(store_opts(200), Duration::from_secs(30));
    let m = b"H|\\^&|||Mini\rL|1|N\r";
    rig.enq().await;
    for _ in 0..3 {
        assert_eq!(rig.frame(m, true).await, NAK);
    }
    rig.eot().await;
    assert!(rig.messages(None).is_empty(), "nothing stored");
    let snap = rig.ctx.counters.snapshot();
    assert_eq!((snap.acknowledged, snap.refused), (0, 3));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_same_message_twice_is_acked_twice_and_stored_once() {
    let mut rig = Rig::start(store_opts(1 << 30), Duration::from_secs(30));
    let m = message("DUP", 3);
    // Multi-frame (a partial per transmission, completed at L) ...
    rig.transmit(&m).await;
    rig.transmit(&m).await;
    // ... and single-frame (appended whole at its only frame).
    let small = b"H|\\^&|||Mini\rL|1|N\r".to_vec();
    rig.transmit(&small).await;
    rig.transmit(&small).await;

    let all = rig.messages(None);
    assert_eq!(
        all.len(),
        2,
        "each stored once: {:?}",
        all.iter().map(|m| &m.info).collect::<Vec<_>>()
    );
    assert_eq!(all[0].bytes, m);
    assert_eq!(all[0].info.state, State::Pending);
    assert_eq!(all[1].bytes, small);
    let snap = rig.ctx.counters.snapshot();
    assert_eq!((snap.stored, snap.duplicates), (2, 2));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_receive_timer_keeps_the_acked_frames_as_incomplete() {
    let mut rig = Rig::start(store_opts(1 << 30), Duration::from_secs(30));
    let m = message("TIMER", 2);
    let fr = frames(&m);
    rig.enq().await;
    let t0 = Instant::now();
    assert_eq!(rig.frame(&fr[0].0, fr[0].1).await, ACK);
    assert_eq!(rig.frame(&fr[1].0, fr[1].1).await, ACK);
    let sent: Vec<u8> = [&fr[0].0[..], &fr[1].0[..]].concat();

    // 29 s of silence: still an open transmission.
    tokio::time::sleep_until(t0 + Duration::from_secs(29)).await;
    let inc = rig.messages(Some(State::Incomplete));
    assert_eq!(inc.len(), 1);
    assert_eq!(
        inc[0].info.reason.as_deref(),
        Some("transmission in progress")
    );
    assert_eq!(rig.ctx.counters.snapshot().incomplete, 0);

    // The 30 s receive timer fires: the partial is closed as incomplete, bytes kept.
    tokio::time::sleep_until(t0 + Duration::from_secs(31)).await;
    let inc = rig.messages(Some(State::Incomplete));
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].bytes, sent);
    assert_eq!(
        inc[0].info.reason.as_deref(),
        Some("transmission did not complete")
    );
    assert!(
        rig.messages(Some(State::Pending)).is_empty(),
        "not forwarded"
    );
    assert_eq!(rig.ctx.counters.snapshot().incomplete, 1);

    // Back to neutral: a late frame gets no answer, a new ENQ starts afresh.
    let mut late = vec![0u8; 300];
    let n = encode_frame(3, &fr[2].0, fr[2].1, &mut late).unwrap();
    rig.send(&late[..n]).await;
    rig.transmit(&m).await;
    let pending = rig.messages(Some(State::Pending));
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].bytes, m);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn several_messages_in_one_transmission_are_stored_separately() {
    let mut rig = Rig::start(store_opts(1 << 30), Duration::from_secs(30));
    let a = message("S1", 4);
    let q = b"H|\\^&|||Immuno-Box^3|||||LIS||P|1\rQ|1|^S2||ALL||||||||O\rQ|2|^S3||ALL||||||||O\rL|1|N\r"
        .to_vec();
    let b =
        b"H|\\^&|||Chem-Analyzer\rP|1\rO|1|S4\rP|2\rO|1|S5\rR|1|^^^K|4.1\rC|1|I|note|G\rL|1|N\r"
            .to_vec();
    rig.enq().await;
    rig.records(&a).await;
    rig.records(&q).await;
    rig.records(&b).await;
    rig.eot().await;
    // A second transmission after EOT, to see the line back in neutral.
    rig.transmit(&message("S6", 1)).await;

    let got = rig.messages(Some(State::Pending));
    assert_eq!(got.len(), 4);
    for (m, want) in got.iter().zip([&a, &q, &b]) {
        assert_eq!(&m.bytes, want, "record text, frame envelopes removed");
        no_envelope(&m.bytes);
        assert_eq!(m.info.protocol, labagent::store::Protocol::Astm);
    }
    let meta = |i: usize| &got[i].info.meta;
    // (patients, orders, results, queries, records)
    let counts = |i: usize| {
        let n = |k: &str| meta(i)[k].as_u64().unwrap();
        (
            n("patients"),
            n("orders"),
            n("results"),
            n("queries"),
            n("records"),
        )
    };
    assert_eq!(meta(0)["sender"], "Chem-Analyzer");
    assert_eq!(counts(0), (1, 1, 4, 0, 8));
    assert_eq!(meta(0)["end"], "terminator");
    assert_eq!(meta(1)["sender"], "Immuno-Box");
    assert_eq!(counts(1), (0, 0, 0, 2, 4));
    assert_eq!(meta(2)["sender"], "Chem-Analyzer");
    assert_eq!(counts(2), (2, 2, 1, 0, 8));
    let snap = rig.ctx.counters.snapshot();
    assert_eq!((snap.stored, snap.naks, snap.incomplete), (4, 0, 0));
    // The Q records were a host query: with no upstream and no cache, "no information"
    // comes once the line is free.
    let answer = rig.take_transmission().await;
    assert!(answer.windows(5).any(|w| w == b"L|1|I"), "{answer:?}");
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_split_over_etb_frames_is_reassembled() {
    let mut rig = Rig::start(store_opts(1 << 30), Duration::from_secs(30));
    let long: String = (0..60).map(|i| format!("seg{i:03}^")).collect();
    assert!(long.len() > 400);
    let m = format!(
        "H|\\^&|||Chem-Analyzer\rP|1\rO|1|ETB\rR|1|^^^LONG|{long}|u\rC|1|L|{}|G\rL|1|N\r",
        "c".repeat(500)
    )
    .into_bytes();
    let fr = frames(&m);
    assert!(
        fr.iter().filter(|(_, last)| !last).count() >= 3,
        "at least 3 ETB frames"
    );
    assert!(fr.iter().all(|(t, _)| t.len() <= 240));
    rig.transmit(&m).await;
    let got = rig.messages(Some(State::Pending));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, m);
    no_envelope(&got[0].bytes);
    assert_eq!(got[0].info.meta["results"], 1);
    assert!(rig.messages(Some(State::Incomplete)).is_empty());
    rig.finish().await;
}

/// The instrument's end of the pipe as a blocking [`Wire`] for the simulator, driven from
/// a `spawn_blocking` thread. `first` holds bytes the test already read.
struct PipeWire {
    rt: tokio::runtime::Handle,
    io: DuplexStream,
    first: Vec<u8>,
}

impl Wire for PipeWire {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.rt.block_on(self.io.write_all(bytes))
    }
    fn read_timeout(&mut self, buf: &mut [u8], wait: Duration) -> io::Result<usize> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.len());
            buf[..n].copy_from_slice(&self.first[..n]);
            self.first.drain(..n);
            return Ok(n);
        }
        // A real-time wait: virtual time stands still while this blocking task runs.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            let _ = tx.send(());
        });
        let io = &mut self.io;
        self.rt.block_on(async move {
            tokio::select! {
                r = io.read(buf) => r,
                _ = rx => Ok(0),
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_order_waits_for_the_instrument_that_won_contention_then_is_delivered() {
    let order = "H|\\^&|||LIS\rP|1||PID-ORD\rO|1|SAMPLE-9||^^^GLU\\^^^NA|R\rL|1|N\r";
    let mut rig = Rig::start_with(store_opts(1 << 30), Duration::from_secs(30), |s| {
        assert!(s
            .put_order(NewOrder {
                id: "ord-1".into(),
                channel: CH.into(),
                text: order.replace('\r', "\n"),
                specimens: Vec::new(),
            })
            .unwrap());
    });
    // The driver finds the order at once and bids for the line.
    assert_eq!(rig.reply().await, ENQ, "the agent's ENQ for the order");
    let t0 = Instant::now();
    // The instrument bids too: it wins, its ENQ is answered ACK and its message received.
    rig.send(&[ENQ]).await;
    assert_eq!(rig.reply().await, ACK, "the instrument wins contention");
    rig.fn_next = 1;
    let result = message("RES", 2);
    rig.records(&result).await;
    rig.eot().await;
    let got = rig.messages(Some(State::Pending));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, result);
    // The order is still queued, untried.
    let queued = rig.store.next_orders(CH, 10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].attempts, 0);
    assert!(rig.orders.try_recv().is_err());

    // After the contention wait the agent bids again; the simulator receives the order.
    assert_eq!(rig.reply().await, ENQ, "the agent's next ENQ");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(20),
        "host waits ≥ 20 s after contention, waited {waited:?}"
    );
    let wire = PipeWire {
        rt: tokio::runtime::Handle::current(),
        io: rig.inst,
        first: vec![ENQ],
    };
    let (received, wire) = tokio::task::spawn_blocking(move || {
        let mut wire = wire;
        let mut inst = AstmInstrument::new(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let n = inst.receive(&mut wire, 1, deadline).unwrap();
        assert_eq!(n, 1, "the instrument received the order");
        (inst.received.messages, wire)
    })
    .await
    .unwrap();
    rig.inst = wire.io;
    assert_eq!(received, vec![order_text(order)]);

    // Delivered: reported through Hooks.order and no longer queued.
    let report = timeout(GUARD, rig.orders.recv())
        .await
        .expect("order report")
        .unwrap();
    assert_eq!(
        (
            report.channel.as_str(),
            report.id.as_str(),
            report.state.as_str()
        ),
        (CH, "ord-1", "delivered")
    );
    assert!(rig.store.next_orders(CH, 10).unwrap().is_empty());
    // The order's own id is remembered: a redelivery from the broker is not queued again.
    assert!(!rig
        .store
        .put_order(NewOrder {
            id: "ord-1".into(),
            channel: CH.into(),
            text: order.into(),
            specimens: Vec::new(),
        })
        .unwrap());
    // The agent ends its transfer with EOT.
    assert_eq!(rig.reply().await, EOT);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn an_instrument_that_asks_again_after_contention_is_answered() {
    let order = "H|\\^&|||LIS\rO|1|SAMPLE-7||^^^K|R\rL|1|N\r";
    let mut rig = Rig::start_with(store_opts(1 << 30), Duration::from_secs(30), |s| {
        s.put_order(NewOrder {
            id: "ord-2".into(),
            channel: CH.into(),
            text: order.into(),
            specimens: Vec::new(),
        })
        .unwrap();
    });
    assert_eq!(rig.reply().await, ENQ, "the agent bids for the line");
    rig.send(&[ENQ]).await;
    assert_eq!(
        rig.reply().await,
        ACK,
        "contention: the instrument's ENQ answered"
    );
    // LIS1-A: on contention the instrument waits at least 1 s and sends ENQ again,
    // ignoring the host's reply in between. That ENQ must be answered as well.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.enq().await;
    let m = message("AGAIN", 1);
    rig.records(&m).await;
    rig.eot().await;
    let got = rig.messages(Some(State::Pending));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, m);
    assert!(rig.messages(Some(State::Incomplete)).is_empty());
    // Then the order goes out.
    assert_eq!(rig.reply().await, ENQ);
    rig.finish_now().await;
}

#[tokio::test(start_paused = true)]
async fn the_simulator_wins_contention_then_takes_the_order() {
    let order = "H|\\^&|||LIS\rO|1|SAMPLE-5||^^^CA|R\rL|1|N\r";
    let mut rig = Rig::start_with(store_opts(1 << 30), Duration::from_secs(30), |s| {
        s.put_order(NewOrder {
            id: "ord-5".into(),
            channel: CH.into(),
            text: order.into(),
            specimens: Vec::new(),
        })
        .unwrap();
    });
    // The agent's ENQ is on the line when the instrument starts its own transfer.
    assert_eq!(rig.reply().await, ENQ);
    let result = message("SIM", 3);
    let wire = PipeWire {
        rt: tokio::runtime::Handle::current(),
        io: rig.inst,
        first: vec![ENQ],
    };
    let r = result.clone();
    let (sent, wire) = tokio::task::spawn_blocking(move || {
        let mut wire = wire;
        let mut inst = AstmInstrument::new(None);
        let sent = inst.send_all(&mut wire, &[r]).unwrap();
        (sent, wire)
    })
    .await
    .unwrap();
    assert!(sent[0].delivered, "{sent:?}");
    // Asked again after its 1 s contention wait, not the host's 20 s (the bound leaves
    // room for a loaded machine's slow syncs).
    assert!(sent[0].elapsed < Duration::from_secs(12), "{sent:?}");
    rig.inst = wire.io;
    let got = rig.messages(Some(State::Pending));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, result);
    assert!(rig.messages(Some(State::Incomplete)).is_empty());

    // Then the agent's turn: the order reaches the simulator.
    assert_eq!(rig.reply().await, ENQ);
    let wire = PipeWire {
        rt: tokio::runtime::Handle::current(),
        io: rig.inst,
        first: vec![ENQ],
    };
    let (received, wire) = tokio::task::spawn_blocking(move || {
        let mut wire = wire;
        let mut inst = AstmInstrument::new(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        inst.receive(&mut wire, 1, deadline).unwrap();
        (inst.received.messages, wire)
    })
    .await
    .unwrap();
    rig.inst = wire.io;
    assert_eq!(received, vec![order_text(order)]);
    let report = timeout(GUARD, rig.orders.recv()).await.unwrap().unwrap();
    assert_eq!(
        (report.id.as_str(), report.state.as_str()),
        ("ord-5", "delivered")
    );
    assert_eq!(rig.reply().await, EOT);
    rig.finish().await;
}

/// Awaits `f`, failing after `secs` of *real* time: under the paused clock a driver that
/// spins never lets virtual time advance, so a virtual guard would never fire.
async fn within_real<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        let _ = tx.send(());
    });
    tokio::select! {
        v = f => v,
        _ = rx => panic!("{what}: not done within {secs} s of real time"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_transmission_outlasting_the_order_wait_does_not_spin_the_driver() {
    let order = "H|\\^&|||LIS\rO|1|SAMPLE-8||^^^K|R\rL|1|N\r";
    let mut rig = Rig::start_with(store_opts(1 << 30), Duration::from_secs(30), |s| {
        s.put_order(NewOrder {
            id: "ord-3".into(),
            channel: CH.into(),
            text: order.into(),
            specimens: Vec::new(),
        })
        .unwrap();
    });
    assert_eq!(rig.reply().await, ENQ);
    rig.send(&[ENQ]).await;
    assert_eq!(rig.reply().await, ACK);
    rig.fn_next = 1;
    // A slow instrument: a frame every 8 s, 40 s in all, well past the 20 s after which
    // the order may be tried again. The driver must sleep through it, not wake in a loop
    // (which would also keep virtual time from advancing at all).
    let m = message("SLOW", 2);
    let t0 = Instant::now();
    within_real(30, "slow transmission", async {
        for (text, last) in frames(&m) {
            tokio::time::sleep(Duration::from_secs(8)).await;
            assert_eq!(rig.frame(&text, last).await, ACK);
        }
        rig.eot().await;
        // Only now, with the line idle, the order goes out.
        assert_eq!(rig.reply().await, ENQ);
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_secs(40));
    assert_eq!(rig.messages(Some(State::Pending))[0].bytes, m);
    rig.finish_now().await;
}

#[test]
fn frames_helper_splits_like_a_sender() {
    let rec = [vec![b'x'; 500], vec![CR]].concat();
    let f = frames(&rec);
    assert_eq!(
        f.iter().map(|(t, l)| (t.len(), *l)).collect::<Vec<_>>(),
        vec![(240, false), (240, false), (21, true)]
    );
}
