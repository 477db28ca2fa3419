//! MLLP ingest with store-then-ACK: the HL7 driver on a `listen` link with a real store on
//! disk (sled, fsync per commit, group commit across connections), fed by blocking
//! loopback clients sending 1 KiB ORU messages in lockstep (send, wait for the ACK, next).
//! One connection, then 8 concurrent ones. Baseline in the same run: python-hl7's asyncio
//! MLLP server answering `create_ack()` without storing anything (what a user would
//! otherwise script), driven by the same clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labagent::channel::{run_channel, ChannelCtx, Hooks};
use labagent::source::{Backoff, Link, TcpListenLink, TcpOptions};
use labagent::store::{Store, StoreOptions};
use labagent_config::{AckMode, Channel, Encoding, Hl7, ProtocolSettings, Transport};

use crate::table::{percentile, Row};

const MSG_LEN: usize = 1024;
const ONE_CONN: usize = 2000;
const PER_CONN_8: usize = 600;
pub(crate) const WARMUP: usize = 50;

/// python-hl7's documented asyncio server, acknowledging every message, storing nothing.
const PY_SERVER: &str = r#"
import asyncio, hl7
from hl7.mllp import start_hl7_server

async def handle(reader, writer):
    try:
        while not writer.is_closing():
            m = await reader.readmessage()
            writer.writemessage(m.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        if not writer.is_closing():
            writer.close()

async def main():
    server = await start_hl7_server(handle, host="127.0.0.1", port=0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// A 1 KiB HL7 message with a unique control id.
fn message(conn: usize, i: usize) -> Vec<u8> {
    let head = format!(
        "MSH|^~\\&|BENCH|LAB|LIS|HOSP|20261130120000||ORU^R01|B{conn}-{i}|P|2.5\rPID|1||P{conn}-{i}\rOBX|1|TX|NOTE||"
    );
    let mut m = head.into_bytes();
    let pad = MSG_LEN - m.len() - 1;
    m.extend(std::iter::repeat(b'x').take(pad));
    m.push(b'\r');
    assert_eq!(m.len(), MSG_LEN);
    m
}

fn framed(m: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(m.len() + 3);
    v.push(0x0b);
    v.extend_from_slice(m);
    v.extend_from_slice(&[0x1c, 0x0d]);
    v
}

/// Sends `n` messages in lockstep; returns the latency of each (send → whole ACK read).
fn client(addr: SocketAddr, conn: usize, n: usize, warmup: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut lat = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    for i in 0..warmup + n {
        let m = framed(&message(conn, i));
        let t = Instant::now();
        s.write_all(&m).expect("send");
        let mut got = Vec::new();
        while !got.ends_with(&[0x1c, 0x0d]) {
            let k = s.read(&mut buf).expect("read ACK");
            assert!(k > 0, "server closed the connection");
            got.extend_from_slice(&buf[..k]);
        }
        assert!(
            got.windows(6).any(|w| w == b"MSA|AA" || w == b"MSA|CA"),
            "not a positive ACK: {:?}",
            String::from_utf8_lossy(&got)
        );
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    lat
}

pub(crate) struct Figures {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `conns` concurrent lockstep clients, `per` messages each.
pub(crate) fn drive(addr: SocketAddr, conns: usize, per: usize, round: usize) -> Figures {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| std::thread::spawn(move || client(addr, round * 100 + c, per, WARMUP)))
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client"))
        .collect();
    // The warm-up is inside the wall time; count it in the rate.
    let total = conns * (per + WARMUP);
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    lat.sort();
    Figures {
        rate,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
    }
}

/// The driver with a store on disk, on the agent's ingest thread (a current-thread runtime
/// of its own, as `labagent run` has it).
struct Ours {
    _rt: labagent::ingest::Ingest,
    addr: SocketAddr,
    store: Store,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn start_ours(tmpfs: bool) -> Ours {
    let dir = if tmpfs {
        tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    };
    let rt = labagent::ingest::Ingest::start().expect("ingest thread");
    let store = Store::open(
        dir.path().join("store"),
        StoreOptions {
            min_free: 0,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let s = store.clone();
    let _enter = rt.enter();
    let addr = {
        let listen = TcpListenLink::new(
            "127.0.0.1:0".parse().unwrap(),
            TcpOptions {
                max_connections: 16,
                idle_timeout: None,
                ..TcpOptions::default()
            },
            Backoff::with_random_seed(),
        );
        let addr = listen.local_addr().expect("bound");
        let config = Channel {
            name: "bench".into(),
            transport: Transport::Listen(addr),
            encoding: Encoding::Auto,
            settings: ProtocolSettings::Hl7(Hl7 {
                ack: AckMode::Original,
                max_message: 4 << 20,
                max_connections: 16,
                idle_timeout: Duration::ZERO,
            }),
            orders: labagent_config::OrderMode::Push,
            query_timeout: std::time::Duration::from_secs(5),
        };
        let ctx = ChannelCtx::new(config, s, Hooks::default(), stopping);
        rt.spawn(run_channel(ctx, Link::Listen(listen)));
        addr
    };
    drop(_enter);
    Ours {
        _rt: rt,
        addr,
        store,
        _stop: stop,
        _dir: dir,
    }
}

/// The floor of this harness: a bare tokio server that finds the end of each block and
/// answers a fixed ACK — nothing parsed, nothing stored — and, with `sync`, first writes
/// 1.3 KB (about what the store logs per message) into a preallocated file and
/// `fdatasync`s it in place, as the store does. What any store-then-ACK server costs here.
fn floor(sync: bool) -> Figures {
    use std::os::unix::fs::FileExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = labagent_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("log"))
        .expect("file");
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 64 << 20)
        .expect("fallocate");
    let file = std::sync::Arc::new(file);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("bound");
    rt.spawn(async move {
        let mut offset = 0u64;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            let mut last = 0u8;
            while let Ok(k @ 1..) = s.read(&mut buf).await {
                // The client is lockstep: a block ends where a read ends in FS CR.
                let done =
                    buf[..k].ends_with(&[0x1c, 0x0d]) || (k == 1 && last == 0x1c && buf[0] == 0x0d);
                last = buf[k - 1];
                if !done {
                    continue;
                }
                if sync {
                    tokio::task::block_in_place(|| {
                        file.write_all_at(&[b'x'; 1300], offset).expect("write");
                        file.sync_data().expect("fdatasync");
                    });
                    offset += 1300;
                }
                if s.write_all(b"\x0bMSH|^~\\&|F|F\rMSA|AA|1\r\x1c\x0d")
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let f = drive(addr, 1, ONE_CONN, 9);
    drop(rt);
    f
}

/// The python server as a child process, killed by its pid when dropped.
pub(crate) struct Python {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Python {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
        }
        let _ = self.child.wait();
    }
}

pub(crate) fn start_python() -> Option<Python> {
    let mut child = Command::new("python3")
        .args(["-c", PY_SERVER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    let mut py = Python {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        child,
    };
    // On a bad line `py` drops here and kills the child.
    let port: u16 = line.trim().parse().ok()?;
    py.addr.set_port(port);
    Some(py)
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn run() -> Vec<Row> {
    let (fs_rate, fs_p50, fs_p99) = crate::fsync::measure(2000);
    let mut rows = vec![Row::new(
        "fsync reference: 1 KiB write + fdatasync",
        format!("{fs_rate:.0}/s"),
        format!("p50 {} p99 {}", ms(fs_p50), ms(fs_p99)),
    )];

    let ours = start_ours(false);
    let syncs0 = ours.store.stats().map(|s| s.syncs).unwrap_or(0);
    let cpu0 = crate::sys::cpu_time("self");
    let one = drive(ours.addr, 1, ONE_CONN, 0);
    let syncs1 = ours.store.stats().map(|s| s.syncs).unwrap_or(0);
    let cpu1 = crate::sys::cpu_time("self");
    let eight = drive(ours.addr, 8, PER_CONN_8, 1);
    let syncs8 = ours.store.stats().map(|s| s.syncs).unwrap_or(0);
    let cpu8 = crate::sys::cpu_time("self");
    let stored = ours.store.stats().map(|s| s.totals.pending).unwrap_or(0);
    let n1 = (ONE_CONN + WARMUP) as f64;
    let n8 = (8 * (PER_CONN_8 + WARMUP)) as f64;
    let us = |d: Duration, n: f64| d.as_secs_f64() * 1e6 / n;
    rows.push(Row::new(
        "labagent, 1 connection, lockstep",
        format!("{:.0} msgs/s", one.rate),
        format!(
            "{:.0}% of the fsync rate (target >= 50%); {:.2} store syncs/msg; {:.0} us CPU/msg",
            100.0 * one.rate / fs_rate,
            (syncs1 - syncs0) as f64 / n1,
            us(cpu1 - cpu0, n1)
        ),
    ));
    rows.push(Row::new(
        "  ACK latency p50 / p99",
        format!("{} / {}", ms(one.p50), ms(one.p99)),
        "",
    ));
    rows.push(Row::new(
        "labagent, 8 connections, lockstep each",
        format!("{:.0} msgs/s", eight.rate),
        format!(
            "target >= 2000 msgs/s; {:.2} store syncs/msg (group commit); {:.0} us CPU/msg",
            (syncs8 - syncs1) as f64 / n8,
            us(cpu8 - cpu1, n8)
        ),
    ));
    rows.push(Row::new(
        "  ACK latency p50 / p99",
        format!("{} / {}", ms(eight.p50), ms(eight.p99)),
        "",
    ));
    rows.push(Row::new(
        "  messages stored",
        format!("{stored}"),
        format!("expected {}", n1 as u64 + n8 as u64),
    ));
    drop(ours);

    // The same on tmpfs: what is left when a sync costs nothing.
    if std::path::Path::new("/dev/shm").is_dir() {
        let shm = start_ours(true);
        let runs = [
            (1, ONE_CONN, n1, "the path without the sync"),
            (8, PER_CONN_8, n8, "the CPU ceiling"),
        ];
        for (round, (conns, per, n, what)) in runs.into_iter().enumerate() {
            let c0 = crate::sys::cpu_time("self");
            let e = drive(shm.addr, conns, per, 3 + round);
            let c1 = crate::sys::cpu_time("self");
            rows.push(Row::new(
                format!("labagent, {conns} connection(s), store on tmpfs"),
                format!("{:.0} msgs/s", e.rate),
                format!(
                    "p50 {} p99 {}; {:.0} us CPU/msg; no disk: {what}",
                    ms(e.p50),
                    ms(e.p99),
                    us(c1 - c0, n)
                ),
            ));
        }
    }

    // What a server that stores nothing, or only syncs a log, gets through this harness.
    let bare = floor(false);
    let synced = floor(true);
    rows.push(Row::new(
        "floor: bare tokio server, fixed ACK, nothing stored",
        format!("{:.0} msgs/s", bare.rate),
        format!("p50 {} p99 {}; 1 connection", ms(bare.p50), ms(bare.p99)),
    ));
    rows.push(Row::new(
        "floor: the same + 1.3 KB write + fdatasync per block",
        format!("{:.0} msgs/s", synced.rate),
        format!(
            "p50 {} p99 {}; {:.0}% of the fsync rate; labagent 1 connection = {:.2} of this",
            ms(synced.p50),
            ms(synced.p99),
            100.0 * synced.rate / fs_rate,
            one.rate / synced.rate
        ),
    ));

    match start_python() {
        Some(py) => {
            let runs = [
                (1, ONE_CONN, "1 connection", &one),
                (8, PER_CONN_8, "8 connections", &eight),
            ];
            for (round, (conns, per, label, ours)) in runs.into_iter().enumerate() {
                let p = drive(py.addr, conns, per, round);
                rows.push(Row::new(
                    format!("python-hl7 asyncio server (no storage), {label}"),
                    format!("{:.0} msgs/s", p.rate),
                    format!(
                        "p50 {} p99 {}; labagent/python = {:.2}",
                        ms(p.p50),
                        ms(p.p99),
                        ours.rate / p.rate
                    ),
                ));
            }
        }
        None => rows.push(Row::new(
            "python-hl7 baseline",
            "n/a",
            "python3 with the hl7 package not available (pip install hl7)",
        )),
    }
    rows
}
