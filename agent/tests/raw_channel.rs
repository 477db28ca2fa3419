//! The raw driver over loopback TCP: start/end framing, the reply only after the store
//! said `Ok`, no reply configured, a restarted message kept as incomplete, and the Snibe
//! MAGLUMI capture (records with no link layer: `ENQ STX <records> ETX EOT`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use labagent::channel::{run_channel, ChannelCtx, Hooks};
use labagent::service::adapters::outgoing;
use labagent::source::{Backoff, Link, TcpListenLink, TcpOptions};
use labagent::store::{State, Store, StoreOptions};
use labagent_config::{Channel, Encoding, ProtocolSettings, Raw, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(20);

struct Agent {
    addr: SocketAddr,
    store: Store,
    ctx: Arc<ChannelCtx>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start(raw: Raw, max_bytes: u64) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("store"),
        StoreOptions {
            max_bytes,
            min_free: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let listen = TcpListenLink::new(
        "127.0.0.1:0".parse().unwrap(),
        TcpOptions {
            idle_timeout: None,
            ..TcpOptions::default()
        },
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 1),
    );
    let addr = listen.local_addr().expect("bound");
    let config = Channel {
        name: "maglumi".into(),
        transport: Transport::Listen(addr),
        encoding: Encoding::Auto,
        settings: ProtocolSettings::Raw(raw),
        orders: labagent_config::OrderMode::Push,
        query_timeout: std::time::Duration::from_secs(5),
    };
    let (stop, stopping) = watch::channel(false);
    let ctx = ChannelCtx::new(config, store.clone(), Hooks::default(), stopping);
    tokio::spawn(run_channel(ctx.clone(), Link::Listen(listen)));
    Agent {
        addr,
        store,
        ctx,
        _stop: stop,
        _dir: dir,
    }
}

fn stx_etx(reply: Option<&[u8]>, max_message: u64) -> Raw {
    Raw {
        start: vec![0x02],
        end: vec![0x03],
        reply: reply.map(<[u8]>::to_vec),
        max_message,
    }
}

async fn connect(a: &Agent) -> TcpStream {
    let s = TcpStream::connect(a.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    tokio::time::timeout(T, s.read_exact(&mut b))
        .await
        .expect("no reply in time")
        .unwrap();
    b
}

/// Half-closes and reads what the agent sends until it closes too: the driver handles
/// every byte before it sees the end of the stream, so this is "after everything".
async fn finish(mut s: TcpStream) -> Vec<u8> {
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("agent did not close")
        .unwrap();
    rest
}

fn stored(store: &Store) -> Vec<Vec<u8>> {
    store
        .next_pending("maglumi", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| m.bytes)
        .collect()
}

fn maglumi() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hal/tests/fixtures/raw/snibe_maglumi_1.bin"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglumi_with_reply_after_the_store() {
    let a = start(stx_etx(Some(&[0x06]), 1 << 20), 1 << 30).await;
    let wire = maglumi();
    assert_eq!(&wire[..2], &[0x05, 0x02]);
    let stx = 1;
    let etx = wire.iter().position(|b| *b == 0x03).unwrap();
    let records = wire[stx + 1..etx].to_vec();
    let mut s = connect(&a).await;
    // Split in the middle, then the rest (ETX EOT).
    s.write_all(&wire[..wire.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    s.write_all(&wire[wire.len() / 2..]).await.unwrap();
    assert_eq!(read_n(&mut s, 1).await, vec![0x06]);
    // The reply came after the store call returned: the message is there now.
    assert_eq!(stored(&a.store), vec![records.clone()]);
    // Two messages in one write: two replies.
    s.write_all(b"\x02first\r\x03junk\x02second\r\x03")
        .await
        .unwrap();
    assert_eq!(read_n(&mut s, 2).await, vec![0x06, 0x06]);
    assert_eq!(finish(s).await, b"");
    assert_eq!(
        stored(&a.store),
        vec![records.clone(), b"first\r".to_vec(), b"second\r".to_vec()]
    );
    let m = a.store.next_pending("maglumi", 1).unwrap().remove(0);
    assert_eq!(m.info.protocol, labagent::store::Protocol::Raw);
    assert_eq!(m.info.meta["encoding"], "utf-8");
    assert!(outgoing(m).text.starts_with("H|\\^&||PSWD|Maglumi User|"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reply_nothing_is_sent_back() {
    let a = start(stx_etx(None, 1 << 20), 1 << 30).await;
    let mut s = connect(&a).await;
    s.write_all(&maglumi()).await.unwrap();
    s.write_all(b"\x02two\x03").await.unwrap();
    assert_eq!(
        finish(s).await,
        b"",
        "no reply configured: nothing is written"
    );
    assert_eq!(stored(&a.store).len(), 2);
    assert_eq!(a.ctx.counters.snapshot().stored, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refused_means_no_reply() {
    let a = start(stx_etx(Some(&[0x06]), 1 << 20), 1).await;
    let mut s = connect(&a).await;
    s.write_all(b"\x02refused\x03").await.unwrap();
    assert_eq!(
        finish(s).await,
        b"",
        "no reply for a message that is not durable"
    );
    assert!(stored(&a.store).is_empty());
    assert_eq!(a.ctx.counters.snapshot().refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_fragment_and_too_large_is_dropped() {
    let a = start(
        Raw {
            start: b"<<".to_vec(),
            end: b">>".to_vec(),
            reply: Some(b"OK\r\n".to_vec()),
            max_message: 16,
        },
        1 << 30,
    )
    .await;
    let mut s = connect(&a).await;
    // Multi-byte delimiters split across writes; a restart; an oversized message.
    s.write_all(b"<").await.unwrap();
    s.flush().await.unwrap();
    s.write_all(b"<cut<<whole>").await.unwrap();
    s.flush().await.unwrap();
    s.write_all(b"><<0123456789abcdefXYZ>><<ok>>")
        .await
        .unwrap();
    assert_eq!(read_n(&mut s, 8).await, b"OK\r\nOK\r\n");
    assert_eq!(finish(s).await, b"");
    assert_eq!(stored(&a.store), vec![b"whole".to_vec(), b"ok".to_vec()]);
    let inc = a
        .store
        .list(Some("maglumi"), Some(State::Incomplete), 10)
        .unwrap();
    assert_eq!(inc.len(), 1);
    assert_eq!(a.store.get(inc[0].id).unwrap().unwrap().bytes, b"cut");
    let snap = a.ctx.counters.snapshot();
    assert_eq!((snap.refused, snap.incomplete), (1, 1));
}
