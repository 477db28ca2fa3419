//! TCP links on loopback: `listen` hands out up to `max_connections` connections and closes
//! the rest, closes silent ones after `idle_timeout`; `connect` comes back with backoff when
//! the server goes away and returns on the same port.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use labagent::source::{
    Backoff, Conn, Endpoint, Link, LinkOptions, PortState, TcpListenLink, TcpOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f` with a guard in real time (a virtual-time guard would fire early under the
/// paused clock while the kernel is still moving bytes).
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(GUARD);
        let _ = tx.send(());
    });
    tokio::select! {
        v = f => v,
        _ = rx => panic!("{what}: nothing within {GUARD:?}"),
    }
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 3)
}

fn opts(max: usize, idle: Option<Duration>) -> TcpOptions {
    TcpOptions {
        max_connections: max,
        idle_timeout: idle,
        ..TcpOptions::default()
    }
}

fn accept_all(mut link: TcpListenLink) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let conn = link.next_connection().await;
            if tx.send(conn).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether the server closed this client (EOF or reset), as seen by the client.
async fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8];
    matches!(c.read(&mut buf).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn listen_limits_connections() {
    let link = TcpListenLink::new("127.0.0.1:0".parse().unwrap(), opts(3, None), backoff());
    let addr = link.local_addr().expect("bound");
    let mut status = link.status();
    assert_eq!(status.borrow().state, PortState::Listening);
    let mut conns = accept_all(link);

    let mut clients = Vec::new();
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut conn = within("accepted", conns.recv()).await.unwrap();
        // Each is its own pipe, both ways.
        c.write_all(&[b'a' + i]).await.unwrap();
        let mut b = [0u8; 1];
        within("read", conn.read_exact(&mut b)).await.unwrap();
        assert_eq!(b[0], b'a' + i);
        conn.write_all(b"ok").await.unwrap();
        let mut b = [0u8; 2];
        within("reply", c.read_exact(&mut b)).await.unwrap();
        clients.push(c);
        held.push(conn);
    }
    status.wait_for(|s| s.connections == 3).await.unwrap();

    // The fourth is accepted and closed at once.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(within("4th closed", closed_by_server(&mut fourth)).await);
    assert_eq!(status.borrow().connections, 3);
    assert!(conns.try_recv().is_err());

    // A slot freed is a slot usable again.
    drop(held.pop());
    assert!(within("client sees close", closed_by_server(&mut clients[2])).await);
    status.wait_for(|s| s.connections == 2).await.unwrap();
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let mut conn = within("5th accepted", conns.recv()).await.unwrap();
    fifth.write_all(b"z").await.unwrap();
    let mut b = [0u8; 1];
    within("read", conn.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"z");
    assert_eq!(status.borrow().opened, 4);
}

#[tokio::test(start_paused = true)]
async fn listen_idle_timeout_closes_a_silent_connection() {
    let idle = Duration::from_secs(600);
    let mut link = TcpListenLink::new(
        "127.0.0.1:0".parse().unwrap(),
        opts(4, Some(idle)),
        backoff(),
    );
    let addr = link.local_addr().unwrap();

    let (client, conn) = tokio::join!(TcpStream::connect(addr), link.next_connection());
    let mut client = client.unwrap();
    let mut conn = conn;
    let start = tokio::time::Instant::now();

    // Traffic keeps it open: a byte at +0, the wait restarts from there.
    client.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    within("first byte", conn.read_exact(&mut b)).await.unwrap();

    // Then silence: the read fails with TimedOut after exactly `idle`.
    let err = conn.read(&mut b).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), idle);
    assert!(conn.end_reason().is_some());
    drop(conn);
    assert!(within("client sees close", closed_by_server(&mut client)).await);
}

#[tokio::test(start_paused = true)]
async fn connect_reconnects_when_the_server_returns_on_the_same_port() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    let mut link = Link::new(
        Endpoint::Connect(addr.to_string()),
        LinkOptions {
            backoff: backoff(),
            tcp: opts(1, None),
        },
    );
    assert!(!link.concurrent());
    let mut status = link.status();

    let (conn, accepted) = tokio::join!(link.next_connection(), server.accept());
    let mut conn = conn;
    let (mut peer, _) = accepted.unwrap();
    assert_eq!(status.borrow().state, PortState::Open);
    peer.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    within("bytes from server", conn.read_exact(&mut b))
        .await
        .unwrap();
    assert_eq!(&b, b"hi");

    // The server goes away entirely.
    drop(peer);
    drop(server);
    let mut b = [0u8; 1];
    let r = within("EOF", conn.read(&mut b)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    drop(conn);

    let (tx, mut rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let c = link.next_connection().await;
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    status
        .wait_for(|s| s.state == PortState::Reconnecting && s.attempts >= 4)
        .await
        .unwrap();
    assert!(status.borrow().last_error.is_some());

    // No busy loop: attempts over 10 virtual minutes stay within the backoff's bound.
    let a0 = status.borrow().attempts;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let tries = status.borrow().attempts - a0;
    assert!((10..=50).contains(&tries), "{tries} attempts");

    // Back on the same port.
    let server = TcpListener::bind(addr).await.unwrap();
    let (accepted, conn) = tokio::join!(
        within("accept", server.accept()),
        within("reconnect", rx.recv())
    );
    let (mut peer, _) = accepted.unwrap();
    let mut conn = conn.unwrap();
    assert_eq!(status.borrow().state, PortState::Open);
    conn.write_all(b"again").await.unwrap();
    let mut b = [0u8; 5];
    within("bytes to server", peer.read_exact(&mut b))
        .await
        .unwrap();
    assert_eq!(&b, b"again");
}
