//! Fleet management over HTTP(S), the real binary against a local upstream that serves a
//! command feed (`GET /commands?after=N&wait=25s`, a short long poll) and takes uploads
//! and command results (`POST /upload`, `X-Labagent-Kind: command-result`), with HTTP
//! Basic: a ping answered, a pushed config confirmed by a poll after the apply (a channel
//! added, uploads go on), a push with refused credentials rolled back, the cursor kept
//! across a restart (nothing runs twice).

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use labagent_tests::fleet::command;
use labagent_tests::mosquitto::free_port;
use labagent_tests::process::AgentProcess;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
/// `Basic base64("box:good")`.
const GOOD: &str = "Basic Ym94Omdvb2Q=";

#[derive(Default)]
struct State {
    commands: Vec<Value>,
    results: Vec<Value>,
    uploads: Vec<String>,
    polls: Vec<String>,
    refused: u64,
}

struct Server {
    addr: SocketAddr,
    st: Arc<(Mutex<State>, Condvar)>,
}

impl Server {
    fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let st: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s2 = st.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let st = s2.clone();
                std::thread::spawn(move || serve(c, st));
            }
        });
        Server { addr, st }
    }

    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.addr)
    }

    fn push(&self, cmd: Value) {
        self.st.0.lock().unwrap().commands.push(cmd);
        self.st.1.notify_all();
    }

    fn wait<R>(&self, what: &str, f: impl Fn(&State) -> Option<R>) -> R {
        let deadline = Instant::now() + T;
        let mut g = self.st.0.lock().unwrap();
        loop {
            if let Some(r) = f(&g) {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            g = self.st.1.wait_timeout(g, left).unwrap().0;
        }
    }

    fn result(&self, id: &str) -> Value {
        self.wait(&format!("result of {id}"), |s| {
            s.results.iter().find(|r| r["id"] == id).cloned()
        })
    }

    fn call(&self, cmd: Value) -> Value {
        let id = cmd["id"].as_str().unwrap().to_string();
        self.push(cmd);
        self.result(&id)
    }

    fn uploaded(&self, text: &str) {
        self.wait(&format!("upload {text}"), |s| {
            s.uploads.iter().any(|u| u == text).then_some(())
        })
    }
}

fn serve(s: TcpStream, st: Arc<(Mutex<State>, Condvar)>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while let Some(req) = labagent_tests::http::read_request(&mut r) {
        let (method, path, body) = (req.method.clone(), req.path.clone(), req.body.clone());
        let header = |n: &str| req.header(n);
        let (m, cv) = &*st;
        let (status, reply) = if header("authorization").as_deref() != Some(GOOD) {
            m.lock().unwrap().refused += 1;
            (401, String::new())
        } else if method == "GET" && path.starts_with("/commands") {
            let after: usize = path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("after="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut g = m.lock().unwrap();
            g.polls.push(path.clone());
            cv.notify_all();
            // A short long poll: up to 300 ms for something new.
            let deadline = Instant::now() + Duration::from_millis(300);
            while g.commands.len() <= after && Instant::now() < deadline {
                g = cv.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
            }
            if g.commands.len() > after {
                let page =
                    json!({"commands": g.commands[after..], "next": g.commands.len().to_string()});
                (200, page.to_string())
            } else {
                (204, String::new())
            }
        } else if method == "POST" {
            let mut g = m.lock().unwrap();
            if header("x-labagent-kind").as_deref() == Some("command-result") {
                assert_eq!(header("content-type").as_deref(), Some("application/json"));
                g.results.push(serde_json::from_slice(&body).unwrap());
            } else {
                g.uploads.push(String::from_utf8_lossy(&body).into_owned());
            }
            (200, String::new())
        } else {
            (404, String::new())
        };
        cv.notify_all();
        let out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn config_text(dir: &Path, srv: &Server, secret: &Path, channels: &str) -> String {
    format!(
        r#"[agent]
id = "e2e"
state_dir = "{state}"
status_socket = "{sock}"
[uplink]
kind = "http"
url = "{upload}"
allow_plain_http = true
timeout = "5s"
[uplink.auth]
method = "basic"
client_id = "box"
client_secret_file = "{secret}"
[remote]
enabled = true
allow = ["ping", "config"]
commands_url = "{commands}"
rollback_after = "4s"
{channels}"#,
        state = dir.join("state").display(),
        sock = dir.join("status.sock").display(),
        upload = srv.url("/upload"),
        commands = srv.url("/commands"),
        secret = secret.display(),
    )
}

fn raw_listen(name: &str, port: u16) -> String {
    format!(
        "[[channel]]\nname = \"{name}\"\nprotocol = \"raw\"\nlisten = \"127.0.0.1:{port}\"\n\
         [channel.raw]\nstart = [0x02]\nend = [0x03]\n"
    )
}

fn send_raw(port: u16, text: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("\x02{text}\x03").as_bytes()).unwrap();
}

#[test]
fn commands_and_a_pushed_config_over_the_https_feed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start();
    let good = secret(dir.path(), "secret", "good");
    let bad = secret(dir.path(), "secret.bad", "wrong");
    let (p1, p2) = (free_port(), free_port());
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        config_text(dir.path(), &srv, &good, &raw_listen("a", p1)),
    )
    .unwrap();
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["feed started", "feed=commands"], T);

    let r = srv.call(command("h1", "e2e", "ping", json!({})));
    assert_eq!(r["ok"], true, "{r}");
    let r = srv.call(command("h2", "e2e", "status", json!({})));
    assert!(r["error"].as_str().unwrap().contains("not allowed"), "{r}");

    // A push that adds a channel: confirmed by a poll that starts after the apply.
    let two = format!("{}{}", raw_listen("a", p1), raw_listen("b", p2));
    let r = srv.call(command(
        "h-add",
        "e2e",
        "config",
        json!({"text": config_text(dir.path(), &srv, &good, &two)}),
    ));
    assert_eq!(r["result"]["outcome"], "applied", "{r}");
    send_raw(p2, "via b");
    srv.uploaded("via b");

    // Refused credentials: no poll succeeds, rolled back; the result arrives with the
    // restored (good) credentials and uploads go on.
    let refused_before = srv.st.0.lock().unwrap().refused;
    let r = srv.call(command(
        "h-bad",
        "e2e",
        "config",
        json!({"text": config_text(dir.path(), &srv, &bad, &two)}),
    ));
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with("rolled-back") && e.contains("no command poll"),
        "{e}"
    );
    assert!(srv.st.0.lock().unwrap().refused > refused_before);
    send_raw(p1, "via a");
    srv.uploaded("via a");

    // The cursor survives a restart: the next poll asks after the last page, nothing runs
    // again.
    agent.kill();
    let n = srv.st.0.lock().unwrap().commands.len();
    let polls_before = srv.st.0.lock().unwrap().polls.len();
    let agent = AgentProcess::start(&cfg);
    let first = srv.wait("a poll after the restart", |s| {
        s.polls.get(polls_before).cloned()
    });
    assert!(first.contains(&format!("after={n}")), "{first}");
    let r = srv.call(command("h3", "e2e", "ping", json!({})));
    assert_eq!(r["ok"], true, "{r}");
    let log = agent.log();
    assert!(!log.contains("id=\"h1\""), "h1 ran again:\n{log}");
}
