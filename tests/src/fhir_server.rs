//! A small FHIR R4 test server on loopback (plain HTTP, keep-alive) that takes
//! transaction Bundles at its base URL the way a real server does:
//!
//! * each entry is a create (`request.method = POST`, `request.url` = the type); with
//!   `ifNoneExist` (`identifier=system|value`) an entry whose identifier is already
//!   stored creates nothing and answers `200 OK` with the existing resource's location;
//!   otherwise `201 Created` with a new id;
//! * `urn:uuid:` references between entries are resolved to `Type/id` (of the new or the
//!   existing resource) before a resource is stored;
//! * the answer is a `transaction-response` Bundle with one entry per entry sent.
//!
//! Faults for tests: [`FhirServer::lose_responses`] processes the next transactions and
//! closes the connection without an answer (a response lost on the way back);
//! [`FhirServer::refuse_code`] answers `422` with an OperationOutcome, storing nothing,
//! for a Bundle with an Observation of that code (a transaction is all or nothing);
//! [`FhirServer::script`] answers the next requests with a status and no processing.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BASE: &str = "/fhir/R4";

#[derive(Default)]
struct State {
    /// Stored resources by type, in creation order.
    resources: HashMap<String, Vec<Value>>,
    /// (type, "system|value") → id.
    by_identifier: HashMap<(String, String), String>,
    next_id: u64,
    transactions: u64,
    creates: u64,
    lose: usize,
    refuse_code: Option<String>,
    script: VecDeque<u16>,
    /// Content types seen, in order.
    content_types: Vec<String>,
    auth: Vec<Option<String>>,
}

/// The server; its threads end with the process.
pub struct FhirServer {
    addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl FhirServer {
    pub fn start() -> FhirServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(s, &st));
            }
        });
        FhirServer { addr, state }
    }

    /// The FHIR base URL (`http://127.0.0.1:PORT/fhir/R4`).
    pub fn base(&self) -> String {
        format!("http://{}{BASE}", self.addr)
    }

    pub fn lose_responses(&self, n: usize) {
        self.state.0.lock().unwrap().lose = n;
    }

    pub fn refuse_code(&self, code: &str) {
        self.state.0.lock().unwrap().refuse_code = Some(code.to_string());
    }

    pub fn script(&self, status: u16, n: usize) {
        let mut s = self.state.0.lock().unwrap();
        s.script.extend(std::iter::repeat(status).take(n));
    }

    /// Stored resources of `kind`.
    pub fn resources(&self, kind: &str) -> Vec<Value> {
        self.state
            .0
            .lock()
            .unwrap()
            .resources
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.state
            .0
            .lock()
            .unwrap()
            .resources
            .get(kind)
            .map_or(0, Vec::len)
    }

    /// Transactions processed (including those whose answer was lost).
    pub fn transactions(&self) -> u64 {
        self.state.0.lock().unwrap().transactions
    }

    /// Resources created in all.
    pub fn creates(&self) -> u64 {
        self.state.0.lock().unwrap().creates
    }

    pub fn content_types(&self) -> Vec<String> {
        self.state.0.lock().unwrap().content_types.clone()
    }

    /// The Authorization header of every request.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.0.lock().unwrap().auth.clone()
    }

    /// Waits until `n` resources of `kind` are stored, or panics after `timeout`.
    pub fn wait_count(&self, kind: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        loop {
            let have = s.resources.get(kind).map_or(0, Vec::len);
            if have >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "fhir server: {have} {kind} after {timeout:?}, waiting for {n}"
            );
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }
}

fn outcome(text: &str, expression: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
        "details": {"text": text}, "expression": [expression]}]})
}

/// Replaces every `"reference": "urn:uuid:..."` found in `ids`.
fn resolve(v: &mut Value, ids: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("reference") {
                if let Some(t) = ids.get(r.as_str()) {
                    *r = t.clone();
                }
            }
            for (_, x) in m.iter_mut() {
                resolve(x, ids);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| resolve(x, ids)),
        _ => {}
    }
}

/// Processes a transaction: (status, body).
fn transaction(st: &mut State, body: &[u8]) -> (u16, Value) {
    let Ok(b) = serde_json::from_slice::<Value>(body) else {
        return (400, outcome("body is not JSON", "Bundle"));
    };
    if b["resourceType"] != "Bundle" || b["type"] != "transaction" {
        return (400, outcome("expected a transaction Bundle", "Bundle.type"));
    }
    let entries = b["entry"].as_array().cloned().unwrap_or_default();
    if let Some(code) = st.refuse_code.clone() {
        for e in &entries {
            let r = &e["resource"];
            if r["resourceType"] == "Observation"
                && r["code"]["coding"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["code"] == code.as_str()))
            {
                return (
                    422,
                    outcome(
                        &format!("Observation code {code} is not allowed here (test server)"),
                        "Observation.code",
                    ),
                );
            }
        }
    }
    // First pass: which entries exist already (conditional create), ids for the rest.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut plan = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e["request"]["url"].as_str().unwrap_or("").to_string();
        if e["request"]["method"] != "POST"
            || kind.is_empty()
            || e["resource"]["resourceType"] != kind.as_str()
        {
            return (
                400,
                outcome(
                    &format!("entry {i}: expected POST of a {kind}"),
                    "Bundle.entry.request",
                ),
            );
        }
        let existing = e["request"]["ifNoneExist"].as_str().and_then(|q| {
            let ident = q.strip_prefix("identifier=")?;
            st.by_identifier
                .get(&(kind.clone(), ident.to_string()))
                .cloned()
        });
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => {
                st.next_id += 1;
                (st.next_id.to_string(), true)
            }
        };
        if let Some(u) = e["fullUrl"].as_str() {
            ids.insert(u.to_string(), format!("{kind}/{id}"));
        }
        plan.push((kind, id, created));
    }
    let mut out = Vec::new();
    for (e, (kind, id, created)) in entries.iter().zip(plan) {
        if created {
            let mut r = e["resource"].clone();
            resolve(&mut r, &ids);
            r["id"] = json!(id);
            if let Some(idents) = r["identifier"].as_array() {
                for ident in idents {
                    let key = format!(
                        "{}|{}",
                        ident["system"].as_str().unwrap_or(""),
                        ident["value"].as_str().unwrap_or("")
                    );
                    st.by_identifier.insert((kind.clone(), key), id.clone());
                }
            }
            st.resources.entry(kind.clone()).or_default().push(r);
            st.creates += 1;
        }
        out.push(json!({"response": {
            "status": if created { "201 Created" } else { "200 OK" },
            "location": format!("{kind}/{id}/_history/1")
        }}));
    }
    (
        200,
        json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out}),
    )
}

fn serve(s: TcpStream, st: &Arc<(Mutex<State>, Condvar)>) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while let Some(req) = crate::http::read_request(&mut r) {
        let (method, path, body) = (req.method.clone(), req.path.clone(), req.body.clone());
        let header = |n: &str| req.header(n);
        let (m, cv) = &**st;
        let (status, reply, lose) = {
            let mut s = m.lock().unwrap();
            s.content_types
                .push(header("content-type").unwrap_or_default());
            s.auth.push(header("authorization"));
            if let Some(code) = s.script.pop_front() {
                (code, outcome("scripted", "Bundle"), false)
            } else if method != "POST" || path.trim_end_matches('/') != BASE {
                (
                    404,
                    outcome(&format!("no route {method} {path}"), "Bundle"),
                    false,
                )
            } else {
                s.transactions += 1;
                let (status, reply) = transaction(&mut s, &body);
                let lose = s.lose > 0;
                if lose {
                    s.lose -= 1;
                }
                (status, reply, lose)
            }
        };
        cv.notify_all();
        if lose {
            // Processed, but the answer never arrives.
            let _ = w.shutdown(std::net::Shutdown::Both);
            return;
        }
        let text = reply.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
