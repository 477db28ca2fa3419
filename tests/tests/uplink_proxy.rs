//! The HTTPS uplink behind a corporate proxy: `HTTPS_PROXY` (or `HTTP_PROXY`/`ALL_PROXY`)
//! sends uploads through it, `NO_PROXY` lets listed hosts bypass it. The real binary, a
//! small forwarding proxy on loopback (CONNECT tunnels and absolute-form requests) that
//! records what it was asked for, and the loopback upstream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(30);

/// A forwarding proxy; `seen` holds the first line of every request it got.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Proxy {
    fn start() -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let seen = s2.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(line.clone());
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let first = head[0].trim_end().to_string();
                    seen.lock().unwrap().push(first.clone());
                    let mut parts = first.split_whitespace();
                    let method = parts.next().unwrap_or("");
                    let target = parts.next().unwrap_or("");
                    let mut client = c;
                    if method == "CONNECT" {
                        let Ok(up) = TcpStream::connect(target) else {
                            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                            return;
                        };
                        client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .unwrap();
                        pipe(up.try_clone().unwrap(), client.try_clone().unwrap());
                        // Bytes the reader already buffered belong to the tunnel.
                        let mut up_w = up;
                        let buffered = r.buffer().to_vec();
                        let _ = up_w.write_all(&buffered);
                        pipe(client, up_w);
                    } else {
                        // Absolute form: `POST http://host:port/path HTTP/1.1`.
                        let hostport = target
                            .trim_start_matches("http://")
                            .split('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let Ok(mut up) = TcpStream::connect(&hostport) else {
                            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                            return;
                        };
                        up.write_all(head.concat().as_bytes()).unwrap();
                        let buffered = r.buffer().to_vec();
                        up.write_all(&buffered).unwrap();
                        pipe(up.try_clone().unwrap(), client.try_clone().unwrap());
                        // The rest of this connection goes the same way.
                        let mut raw = r.into_inner();
                        let mut buf = [0u8; 8192];
                        while let Ok(n) = raw.read(&mut buf) {
                            if n == 0 || up.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn config(dir: &Path, up: &Upstream, port: u16) -> std::path::PathBuf {
    labagent_tests::config::write(
        dir,
        "proxy",
        &up.url("/ingest"),
        "",
        &labagent_tests::config::listen_channel("chem", "astm", port),
    )
}

fn run(no_proxy: Option<&str>) -> (Proxy, Upstream, String) {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let proxy = Proxy::start();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(dir.path(), &up, port);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let mut cmd = labagent_tests::labagent();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "labagent=debug,warn")
        .env("HTTPS_PROXY", &url)
        .env("HTTP_PROXY", &url)
        .stdout(Stdio::null());
    if let Some(n) = no_proxy {
        cmd.env("NO_PROXY", n);
    }
    let mut agent = AgentProcess::spawn(cmd);
    agent.wait_line(0, &["agent running"], T);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let msg = b"H|\\^&|||PROXY^1\rP|1||S1\rR|1|^^^K|4.1|mmol/L\rL|1|N\r".to_vec();
    let sent = AstmInstrument::new(None).send_all(&mut s, &[msg]).unwrap();
    assert!(sent[0].delivered);
    up.wait_for(T, "the message upstream", |r| r.len() == 1);
    let st = agent.terminate(T);
    assert!(st.success());
    let log = agent.log();
    (proxy, up, log)
}

#[test]
fn uploads_go_through_the_proxy_from_the_environment() {
    let (proxy, up, log) = run(None);
    let seen = proxy.seen();
    let target = up.url("").trim_start_matches("http://").to_string();
    assert!(
        seen.iter().any(|l| l.contains(&target)),
        "the proxy was not asked for {target}: {seen:?}"
    );
    assert!(
        log.contains("uplink uses a proxy from the environment"),
        "{log}"
    );
}

#[test]
fn no_proxy_hosts_bypass_it() {
    let (proxy, _up, _log) = run(Some("127.0.0.1"));
    assert!(
        proxy.seen().is_empty(),
        "NO_PROXY host went through the proxy: {:?}",
        proxy.seen()
    );
}
