//! Interop with a real OAuth 2.0 authorization server (issue 6): `oidc-provider` from npm
//! (`tests/oidc/server.js`, installed by tests/run.sh) on loopback with one
//! client-credentials client. The real `labagent run` gets its token there (token endpoint
//! from the provider's discovery document), and the ingest upstream below accepts a
//! message only when the provider's introspection endpoint says the bearer token is
//! active, was issued to our client, for the ingest resource, with the ingest scope.
//!
//! One token is requested for the whole test, across a restart of the agent (the token is
//! kept in the store), and neither the secret nor the token appears in the agent's log.
//! Every wait is on an event: a log line, a port answering, a request received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use labagent::simulate::AstmInstrument;
use labagent_tests::process::AgentProcess;

const T: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "labagent-chem-1";
const SECRET: &str = "oidc-interop-secret-7f3a9c";
const SCOPE: &str = "ingest";
/// The resource the provider issues tokens for (server.js).
const RESOURCE: &str = "urn:labagent:ingest";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.0 exchange (the server closes the connection after it): (status, body).
fn http(url: &str, form: Option<&str>, basic: Option<(&str, &str)>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("plain http on loopback");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n",
        if form.is_some() { "POST" } else { "GET" },
        if path.is_empty() { "/" } else { path }
    );
    if let Some((user, pass)) = basic {
        // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
        let cred = format!("{}:{}", form_encode(user), form_encode(pass));
        req += &format!("Authorization: Basic {}\r\n", base64(cred.as_bytes()));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req += &format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// `node tests/oidc/server.js`, ended by its pid when dropped.
struct Provider {
    proc: AgentProcess,
    base: String,
}

impl Provider {
    fn start() -> Provider {
        let script = labagent_tests::repo_path("tests/oidc/server.js");
        assert!(
            labagent_tests::repo_path("tests/oidc/node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (tests/run.sh does)"
        );
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .arg(port.to_string())
            .arg(CLIENT_ID)
            .arg(SECRET)
            .arg(SCOPE)
            .stdout(Stdio::null());
        let proc = AgentProcess::spawn(cmd);
        proc.wait_line(0, &[&format!("listening {port}")], T);
        Provider {
            proc,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// How many access tokens the provider has granted.
    fn tokens_issued(&self) -> usize {
        self.lines("token issued").len()
    }

    /// Provider log lines starting with `prefix`.
    fn lines(&self, prefix: &str) -> Vec<String> {
        self.proc
            .log()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    /// Token endpoint URL and introspection endpoint URL, from the discovery document.
    fn discover(&self) -> (String, String) {
        let (status, body) = http(
            &format!("{}/.well-known/openid-configuration", self.base),
            None,
            None,
        );
        assert_eq!(status, 200, "{body}");
        let disco = json(&body);
        assert_eq!(disco["issuer"], self.base.as_str());
        assert!(
            disco["grant_types_supported"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x == "client_credentials")),
            "{disco}"
        );
        (
            disco["token_endpoint"].as_str().unwrap().to_string(),
            disco["introspection_endpoint"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }
}

#[derive(Clone, Debug)]
struct Post {
    status: u16,
    token: String,
    key: String,
    body: String,
}

type Shared = Arc<(Mutex<Vec<Post>>, Condvar)>;

/// A plain-HTTP ingest endpoint (keep-alive) that verifies every bearer token at the
/// provider's introspection endpoint, with the client's own credentials.
struct Ingest {
    addr: SocketAddr,
    posts: Shared,
}

fn token_is_valid(introspection: &str, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let (status, body) = http(
        introspection,
        Some(&format!("token={}", form_encode(token))),
        Some((CLIENT_ID, SECRET)),
    );
    assert_eq!(status, 200, "introspection: {body}");
    let v = json(&body);
    v["active"] == true
        && v["client_id"] == CLIENT_ID
        && v["aud"] == RESOURCE
        && v["scope"]
            .as_str()
            .is_some_and(|s| s.split(' ').any(|x| x == SCOPE))
}

impl Ingest {
    fn start(introspection: String) -> Ingest {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let posts: Shared = Arc::default();
        let p = posts.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (p, url) = (p.clone(), introspection.clone());
                std::thread::spawn(move || serve(s, &url, &p));
            }
        });
        Ingest { addr, posts }
    }

    fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    fn accepted(&self) -> Vec<Post> {
        let posts = self.posts.0.lock().unwrap();
        posts.iter().filter(|p| p.status == 200).cloned().collect()
    }

    /// Waits for `n` distinct accepted messages.
    fn wait_accepted(&self, n: usize) -> Vec<Post> {
        let deadline = Instant::now() + T;
        let (m, cv) = &*self.posts;
        let mut posts = m.lock().unwrap();
        loop {
            // One per Idempotency-Key, first occurrence: a message answered 200 just as the
            // agent was stopped, before it recorded the delivery, is sent again after the
            // restart with the same key and bytes — what the upload contract allows.
            let mut ok: Vec<Post> = Vec::new();
            for p in posts.iter().filter(|p| p.status == 200) {
                match ok.iter().find(|q| q.key == p.key) {
                    Some(q) => assert_eq!(q.body, p.body, "one key, two bodies"),
                    None => ok.push(p.clone()),
                }
            }
            if ok.len() >= n {
                return ok;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "ingest: {} of {n} messages accepted; all posts: {:?}",
                ok.len(),
                posts.iter().map(|p| p.status).collect::<Vec<_>>()
            );
            posts = cv.wait_timeout(posts, left).unwrap().0;
        }
    }
}

fn serve(s: TcpStream, introspection: &str, posts: &Shared) {
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let http10 = line.trim_end().ends_with("HTTP/1.0");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let len = header("content-length").parse().unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let auth = header("authorization");
        let token = match auth.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim().to_string(),
            _ => String::new(),
        };
        let status = if token_is_valid(introspection, &token) {
            200
        } else {
            401
        };
        {
            let (m, cv) = &**posts;
            m.lock().unwrap().push(Post {
                status,
                token,
                key: header("idempotency-key"),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            cv.notify_all();
        }
        let extra = if status == 401 {
            "www-authenticate: Bearer error=\"invalid_token\"\r\n"
        } else {
            ""
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\n{extra}content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        if w.write_all(reply.as_bytes()).is_err() || http10 {
            return;
        }
    }
}

fn write_config(
    dir: &Path,
    ingest: &Ingest,
    token_url: &str,
    client_auth: &str,
    port: u16,
) -> PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"oidc\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n\
             [uplink]\nkind = \"http\"\nurl = \"{}\"\nallow_plain_http = true\nformat = \"raw\"\n\
             [uplink.auth]\nmethod = \"client_credentials\"\ntoken_url = \"{token_url}\"\n\
             client_id = \"{CLIENT_ID}\"\nscope = \"{SCOPE}\"\nstrict_scope = true\n\
             client_auth = \"{client_auth}\"\n\
             [[channel]]\nname = \"chem\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("state").display(),
            dir.join("status.sock").display(),
            ingest.url(),
        ),
    )
    .unwrap();
    cfg
}

fn start_agent(cfg: &Path) -> AgentProcess {
    let mut cmd = labagent_tests::labagent();
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .env("LABAGENT_CLIENT_SECRET", SECRET)
        // Debug included: the log searched for secrets is the most verbose one.
        .env("RUST_LOG", "labagent=debug,warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null());
    let agent = AgentProcess::spawn(cmd);
    agent.wait_line(0, &["agent running"], T);
    agent
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "H|\\^&|||OIDC^1|||||LIS||P|1\rP|1||OIDC{i:03}\rO|1|OIDC{i:03}||^^^GLU\rR|1|^^^GLU|{i}.5|mmol/L||N||F\rL|1|N\r"
    )
    .into_bytes()
}

fn send(port: u16, range: std::ops::Range<usize>) {
    let msgs: Vec<Vec<u8>> = range.map(message).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    for sent in AstmInstrument::new(None).send_all(&mut s, &msgs).unwrap() {
        assert!(
            sent.delivered,
            "instrument not acknowledged: {}",
            sent.detail
        );
    }
}

#[test]
fn token_from_oidc_provider_is_accepted_reused_across_restart_and_never_logged() {
    let provider = Provider::start();

    // Endpoints from the discovery document, as an operator would find them.
    let (token_url, introspection) = provider.discover();

    let ingest = Ingest::start(introspection);
    // The ingest endpoint really checks: a made-up token and no token are refused.
    let (forged, _) = http(&ingest.url(), Some("x"), None);
    assert_eq!(forged, 401);
    {
        let mut s = TcpStream::connect(ingest.addr).unwrap();
        s.write_all(
            b"POST /ingest HTTP/1.0\r\nAuthorization: Bearer made-up-token\r\ncontent-length: 1\r\n\r\nx",
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    }
    assert_eq!(ingest.accepted().len(), 0);
    assert_eq!(provider.tokens_issued(), 0);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &ingest, &token_url, "basic", port);

    // First run: 5 messages, one token.
    let mut agent = start_agent(&cfg);
    send(port, 0..5);
    let ok = ingest.wait_accepted(5);
    agent.wait_line(0, &["new access token"], T);
    assert_eq!(provider.tokens_issued(), 1, "{}", provider.proc.log());
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
    let mut logs = agent.log();

    // Second run inside the token's lifetime: the saved token is used, no new request.
    let mut agent = start_agent(&cfg);
    send(port, 5..8);
    let ok2 = ingest.wait_accepted(8);
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
    logs += &agent.log();
    assert_eq!(
        provider.tokens_issued(),
        1,
        "a token was requested again after the restart; provider log:\n{}",
        provider.proc.log()
    );
    assert!(!agent.log().contains("new access token"), "{}", agent.log());
    assert_eq!(
        provider.lines("token request"),
        ["token request auth=basic"]
    );

    // Every message exactly once, in order, each with its id as the Idempotency-Key, all
    // with the one token the provider issued.
    assert_eq!(ok.len(), 5);
    assert_eq!(ok2.len(), 8, "duplicates or extras: {ok2:?}");
    for (i, p) in ok2.iter().enumerate() {
        assert!(
            p.body.contains(&format!("OIDC{i:03}")),
            "#{i}: {:?}",
            p.body
        );
        assert!(!p.key.is_empty(), "#{i} without Idempotency-Key");
    }
    let token = &ok2[0].token;
    assert!(ok2.iter().all(|p| &p.token == token));
    // No message was refused on the way: the agent never sent a bad token.
    assert!(
        ingest
            .posts
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|p| p.status == 200 || p.token.is_empty() || p.token == "made-up-token"),
        "the agent sent a token the provider did not accept"
    );

    assert!(!logs.contains(SECRET), "client secret in the agent's log");
    assert!(
        !logs.contains(token.as_str()),
        "access token in the agent's log"
    );
    assert!(!provider.proc.log().contains(SECRET) && !provider.proc.log().contains(token.as_str()));
}

#[test]
fn client_secret_post_is_accepted_by_the_provider() {
    let provider = Provider::start();
    let (token_url, introspection) = provider.discover();
    let ingest = Ingest::start(introspection);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &ingest, &token_url, "post", port);
    let mut agent = start_agent(&cfg);
    send(port, 0..3);
    let ok = ingest.wait_accepted(3);
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
    assert_eq!(ok.len(), 3);
    assert_eq!(provider.tokens_issued(), 1, "{}", provider.proc.log());
    // The secret went in the form, not in an Authorization header.
    assert_eq!(provider.lines("token request"), ["token request auth=post"]);
    let log = agent.log();
    assert!(!log.contains(SECRET) && !log.contains(ok[0].token.as_str()));
}
