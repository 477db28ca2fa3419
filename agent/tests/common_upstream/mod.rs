//! A test upstream: an OAuth2 token endpoint and an ingest endpoint on 127.0.0.1, over TLS
//! from a CA made at test time, with scripted faults.
//!
//! Reusable by any test: `mod common_upstream;` then [`Upstream::start`]. Hand-written
//! HTTP/1.1 (keep-alive, Content-Length bodies) over `rustls::StreamOwned`, one thread
//! per connection, so the only extra dev-dependency is `rcgen`.
//!
//! Routes: `POST /token` (client credentials; client_secret_basic or _post),
//! `POST /ingest` (Bearer token issued here, or Basic when allowed), `POST /query` and
//! `GET /orders?...` (authorized the same way; scripted answers, else 204),
//! `POST /redirect` (302 to `/elsewhere`), anything else 404. Every request is recorded.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use labagent::uplink::{
    AuthSettings, ClientAuth, MemoryQueue, MemoryTokenCache, Outgoing, Protocol, QueueError,
    Secret, Uplink, UplinkSettings, VirtualClock,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const CLIENT_ID: &str = "lab agent/1";
pub const CLIENT_SECRET: &str = "s3cr3t:with%odd&chars-7f1c2e";

/// A CA made at test time, and files for it in a temp dir.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "labagent test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        TestCa {
            dir,
            ca_file,
            ca_cert,
            ca_key,
        }
    }

    /// A leaf certificate (server or client) signed by this CA: (chain DER, key DER, cert PEM, key PEM).
    pub fn leaf(
        &self,
        names: &[&str],
    ) -> (
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let der = cert.der().clone();
        let kder = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (der, kder, cert.pem(), key.serialize_pem())
    }

    /// Client cert + key files for mutual TLS.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        let (_, _, cert, key) = self.leaf(&["labagent-client"]);
        let c = self.dir.path().join("client.pem");
        let k = self.dir.path().join("client.key");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A scripted answer to the next request on a route, instead of the normal one.
#[derive(Debug, Clone)]
pub enum Fault {
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection without an answer.
    Reset,
    /// Never answer (until the upstream is dropped).
    Hang,
    /// 200 whose body trickles out slower than the client's timeout.
    SlowBody { pieces: usize, delay: Duration },
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            headers: vec![],
            body: String::new(),
        }
    }
    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Fault::Status {
            status,
            headers: vec![(name.into(), value.into())],
            body: String::new(),
        }
    }
    pub fn json(status: u16, body: &str) -> Self {
        Fault::Status {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub conn: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// See [`State::on_request`].
pub type OnRequest = Arc<dyn Fn(&Request) + Send + Sync>;

/// The upstream's behaviour and record; change it through [`Upstream::state`].
pub struct State {
    pub requests: Vec<Request>,
    pub ingest_faults: VecDeque<Fault>,
    pub token_faults: VecDeque<Fault>,
    /// Ingest answers 400 to any body containing this.
    pub reject_marker: Option<String>,
    pub valid_tokens: HashSet<String>,
    pub tokens_issued: u64,
    pub expires_in: u64,
    /// `scope` in token responses (None: omitted).
    pub grant_scope: Option<String>,
    pub accept_basic: bool,
    /// Bodies (raw) or envelopes (json) accepted with 2xx, in order: (idempotency key, text).
    pub accepted: Vec<(String, String)>,
    /// Where `/redirect` points (this server's `/elsewhere` by default).
    pub redirect_location: String,
    /// Keep `requests` and `accepted` (off for benchmarks: counters only).
    pub record: bool,
    /// 2xx answers given by `/ingest` (messages, counting each envelope).
    pub accepted_count: u64,
    /// Answers to `POST /query` (host queries), in order; none left: 204. Authorized
    /// like `/ingest` (a scripted answer is given before the check, like ingest faults).
    pub query_answers: VecDeque<Fault>,
    /// Answers to `GET /orders?...` (the order feed), in order; none left: 204.
    pub orders_pages: VecDeque<Fault>,
    /// Called with each request as it arrives (under the state lock: must not lock it),
    /// e.g. to move a virtual clock as if the server held the request.
    pub on_request: Option<OnRequest>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    hang: (Mutex<bool>, Condvar),
    conns: AtomicU64,
}

pub struct Upstream {
    pub port: u16,
    pub ca: TestCa,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Starts on 127.0.0.1 with a server certificate from a new test CA.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// `require_client_cert`: mutual TLS, client certificates from the same CA.
    pub fn start_with(require_client_cert: bool) -> Self {
        let ca = TestCa::new();
        let (cert, key, _, _) = ca.leaf(&["127.0.0.1", "localhost"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(vec![cert], key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: vec![],
                ingest_faults: VecDeque::new(),
                token_faults: VecDeque::new(),
                reject_marker: None,
                valid_tokens: HashSet::new(),
                tokens_issued: 0,
                expires_in: 3600,
                grant_scope: None,
                accept_basic: false,
                accepted: vec![],
                redirect_location: format!("https://127.0.0.1:{port}/elsewhere"),
                record: true,
                accepted_count: 0,
                query_answers: VecDeque::new(),
                orders_pages: VecDeque::new(),
                on_request: None,
            }),
            stop: AtomicBool::new(false),
            hang: (Mutex::new(false), Condvar::new()),
            conns: AtomicU64::new(0),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let conn = sh.conns.fetch_add(1, Ordering::SeqCst);
                let sh = sh.clone();
                let config = config.clone();
                std::thread::spawn(move || serve(sh, config, sock, conn));
            }
        });
        Upstream { port, ca, shared }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Uplink settings pointing at `/ingest`, trusting the test CA, with a short timeout.
    pub fn settings(&self) -> UplinkSettings {
        let mut s = UplinkSettings::new(self.url("/ingest"), "chem-lab-1");
        s.ca_file = Some(self.ca.ca_file.clone());
        s.timeout = Duration::from_secs(5);
        s
    }

    /// Client credentials against `/token` with the test client.
    pub fn auth(&self) -> AuthSettings {
        let mut a = AuthSettings::client_credentials(
            self.url("/token"),
            CLIENT_ID,
            Secret::new(CLIENT_SECRET),
        );
        a.client_auth = ClientAuth::Basic;
        a
    }

    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca.ca_file
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        *self.shared.hang.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.hang.1.notify_all();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// An uplink on a virtual clock, sharing `queue` and `cache` (a "restart" is another call).
pub fn uplink(
    settings: UplinkSettings,
    auth: AuthSettings,
    queue: &MemoryQueue,
    cache: &MemoryTokenCache,
    clock: &Arc<VirtualClock>,
) -> Uplink {
    Uplink::new(
        settings,
        auth,
        Arc::new(queue.clone()),
        Arc::new(cache.clone()),
        clock.clone(),
    )
    .unwrap()
}

/// A virtual clock at the test epoch allowing `budget` waits.
pub fn clock(budget: usize) -> Arc<VirtualClock> {
    VirtualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_877_987),
        budget,
    )
}

/// Captured tracing output (every level) of whatever runs inside [`capture_logs`].
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

/// A message for tests.
pub fn msg(channel: &str, n: usize, protocol: Protocol) -> Outgoing {
    Outgoing {
        id: format!("{channel}-{n:06}"),
        channel: channel.into(),
        protocol,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_877_987_123 + n as u64),
        clock_synced: Some(true),
        text: format!("H|\\^&|||analyzer\rR|{n}|^^^GLU|5.{n}|mmol/L\rL|1|N\r"),
        meta: serde_json::json!({ "n": n }),
    }
}

fn serve(sh: Arc<Shared>, config: Arc<rustls::ServerConfig>, sock: TcpStream, conn: u64) {
    // Without it, Nagle + delayed ACK add 40 ms to answers written in two segments.
    let _ = sock.set_nodelay(true);
    let raw = sock.try_clone().unwrap();
    let Ok(tls) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut stream = BufReader::new(rustls::StreamOwned::new(tls, sock));
    loop {
        let Some(req) = read_request(&mut stream, conn) else {
            return;
        };
        let answer = route(&sh, &req);
        let w = stream.get_mut();
        match answer {
            Answer::Plain(status, headers, body) => {
                if write_response(w, status, &headers, body.as_bytes(), None).is_err() {
                    return;
                }
            }
            Answer::Fault(Fault::Status {
                status,
                headers,
                body,
            }) => {
                if write_response(w, status, &headers, body.as_bytes(), None).is_err() {
                    return;
                }
            }
            Answer::Fault(Fault::Reset) => {
                let _ = raw.shutdown(Shutdown::Both);
                return;
            }
            Answer::Fault(Fault::Hang) => {
                let (m, cv) = &sh.hang;
                let mut done = m.lock().unwrap_or_else(|e| e.into_inner());
                while !*done {
                    done = cv.wait(done).unwrap_or_else(|e| e.into_inner());
                }
                return;
            }
            Answer::Fault(Fault::SlowBody { pieces, delay }) => {
                let body = vec![b'.'; pieces];
                let _ = write_response(w, 200, &[], &body, Some(delay));
                return;
            }
        }
    }
}

enum Answer {
    Plain(u16, Vec<(String, String)>, String),
    Fault(Fault),
}

fn route(sh: &Shared, req: &Request) -> Answer {
    let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
    if st.record {
        st.requests.push(req.clone());
    }
    if let Some(f) = st.on_request.clone() {
        f(req);
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/token") => {
            if let Some(f) = st.token_faults.pop_front() {
                return Answer::Fault(f);
            }
            token(&mut st, req)
        }
        ("POST", "/ingest") => {
            if let Some(f) = st.ingest_faults.pop_front() {
                return Answer::Fault(f);
            }
            ingest(&mut st, req)
        }
        ("POST", "/query") if !authorized(&st, req) => Answer::Plain(401, vec![], String::new()),
        ("POST", "/query") => match st.query_answers.pop_front() {
            Some(f) => Answer::Fault(f),
            None => Answer::Plain(204, vec![], String::new()),
        },
        ("GET", p) if p == "/orders" || p.starts_with("/orders?") => {
            if !authorized(&st, req) {
                return Answer::Plain(401, vec![], String::new());
            }
            match st.orders_pages.pop_front() {
                Some(f) => Answer::Fault(f),
                None => Answer::Plain(204, vec![], String::new()),
            }
        }
        ("POST", "/redirect") => Answer::Plain(
            302,
            vec![("Location".into(), st.redirect_location.clone())],
            String::new(),
        ),
        _ => Answer::Plain(404, vec![], String::new()),
    }
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn token(st: &mut State, req: &Request) -> Answer {
    let form: Vec<(String, String)> = req
        .text()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (id, secret) = match req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
    {
        Some(b64) => {
            let raw =
                String::from_utf8(STANDARD.decode(b64).unwrap_or_default()).unwrap_or_default();
            let (i, s) = raw.split_once(':').unwrap_or(("", ""));
            (form_decode(i), form_decode(s))
        }
        None => (
            field("client_id").unwrap_or_default(),
            field("client_secret").unwrap_or_default(),
        ),
    };
    if field("grant_type").as_deref() != Some("client_credentials") {
        return Answer::Plain(400, vec![], r#"{"error":"unsupported_grant_type"}"#.into());
    }
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return Answer::Plain(401, vec![], r#"{"error":"invalid_client"}"#.into());
    }
    st.tokens_issued += 1;
    let tok = format!(
        "tok-{}-{:08x}",
        st.tokens_issued,
        0x5eed_u32.wrapping_mul(st.tokens_issued as u32 + 7)
    );
    st.valid_tokens.insert(tok.clone());
    let mut body = serde_json::json!({
        "access_token": tok,
        "token_type": if st.tokens_issued % 2 == 0 { "bearer" } else { "Bearer" },
        "expires_in": st.expires_in,
    });
    if let Some(scope) = &st.grant_scope {
        body["scope"] = serde_json::Value::String(scope.clone());
    }
    Answer::Plain(
        200,
        vec![("Content-Type".into(), "application/json".into())],
        body.to_string(),
    )
}

/// A token issued here, or Basic when allowed.
fn authorized(st: &State, req: &Request) -> bool {
    let auth = req.header("authorization").unwrap_or("");
    if let Some(t) = auth.strip_prefix("Bearer ") {
        st.valid_tokens.contains(t)
    } else if let Some(b) = auth.strip_prefix("Basic ") {
        st.accept_basic
            && STANDARD.decode(b).ok() == Some(format!("{CLIENT_ID}:{CLIENT_SECRET}").into_bytes())
    } else {
        false
    }
}

fn ingest(st: &mut State, req: &Request) -> Answer {
    if !authorized(st, req) {
        return Answer::Plain(401, vec![], String::new());
    }
    let text = req.text();
    if st
        .reject_marker
        .as_deref()
        .is_some_and(|m| text.contains(m))
    {
        return Answer::Plain(400, vec![], r#"{"issue":"bad message"}"#.into());
    }
    match req.header("content-type") {
        Some("application/json") => {
            let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
            st.accepted_count += list.len() as u64;
            if st.record {
                for e in list {
                    let id = e["id"].as_str().unwrap_or("").to_string();
                    st.accepted
                        .push((id, e["text"].as_str().unwrap_or("").into()));
                }
            }
        }
        _ => {
            st.accepted_count += 1;
            if st.record {
                let key = req.header("idempotency-key").unwrap_or("").to_string();
                st.accepted.push((key, text));
            }
        }
    }
    Answer::Plain(200, vec![], "{}".into())
}

fn read_request<R: Read>(r: &mut BufReader<R>, conn: u64) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        conn,
        method,
        path,
        headers,
        body,
    })
}

fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    trickle: Option<Duration>,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} Status\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    match trickle {
        None => {
            // One write, one TLS record: the client gets the answer in one segment.
            let mut all = head.into_bytes();
            all.extend_from_slice(body);
            w.write_all(&all)?
        }
        Some(delay) => {
            w.write_all(head.as_bytes())?;
            w.flush()?;
            for b in body {
                std::thread::sleep(delay);
                w.write_all(std::slice::from_ref(b))?;
                w.flush()?;
            }
        }
    }
    w.flush()
}

/// A [`MemoryQueue`](labagent::uplink::MemoryQueue) behind the uplink's `Queue` trait that
/// records what the uplink asks of it (`read MAX: N`, `confirm FIRST..LAST (N)`) and fails
/// the first `fail_reads` reads and `fail_confirms` confirmations, as a broken store would.
/// Clones share everything.
#[derive(Clone, Default)]
pub struct QueueSpy {
    pub inner: MemoryQueue,
    pub calls: Arc<Mutex<Vec<String>>>,
    pub fail_reads: Arc<AtomicUsize>,
    pub fail_confirms: Arc<AtomicUsize>,
}

impl QueueSpy {
    fn fails(n: &AtomicUsize, what: &str) -> Result<(), QueueError> {
        match n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)) {
            Ok(_) => Err(QueueError(format!("store IO error: {what}"))),
            Err(_) => Ok(()),
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl labagent::uplink::Queue for QueueSpy {
    fn channels(&self) -> Result<Vec<String>, QueueError> {
        self.inner.channels()
    }
    fn next_batch(&self, channel: &str, max: usize) -> Result<Vec<Outgoing>, QueueError> {
        Self::fails(&self.fail_reads, "disk on fire")?;
        let b = self.inner.next_batch(channel, max)?;
        self.record(format!("read {max}: {}", b.len()));
        Ok(b)
    }
    fn confirm(&self, ids: &[String]) -> Result<(), QueueError> {
        Self::fails(&self.fail_confirms, "no space")?;
        let (first, last) = (ids.first().unwrap(), ids.last().unwrap());
        self.record(format!("confirm {first}..{last} ({})", ids.len()));
        self.inner.confirm(ids)
    }
    fn reject(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        self.inner.reject(id, reason)
    }
    fn skip(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        self.inner.skip(id, reason)
    }
}
