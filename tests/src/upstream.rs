//! A plain-HTTP upstream on loopback that records every POST, for end-to-end tests: what
//! the agent delivered, with which `Idempotency-Key`. Status codes can be scripted
//! (e.g. 503 while "down").

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// Requests answered 2xx so far (a benchmark waits on the count, not the list).
    accepted: usize,
    /// Statuses to answer next, in order; then 200.
    script: VecDeque<u16>,
    /// Answers to `GET /orders...` (the order feed), in order; then 204.
    pages: VecDeque<Page>,
    /// Set by [`Upstream::release`]: held feed polls and queries answer (204).
    released: bool,
    /// Answers to `POST /query...` (host queries), in order; then 204 (or, with
    /// `answer_queries`, the generated answer).
    queries: VecDeque<Page>,
    /// Answer host queries (POST /query…) with an ASTM order for the first specimen.
    answer_queries: bool,
}

/// An answer of the order feed.
#[derive(Debug, Clone)]
pub enum Page {
    /// 200 with this JSON body.
    Json(String),
    /// Hold the poll until [`Upstream::release`], then 204.
    Hold,
}

/// The server; runs until dropped (its thread exits with the process).
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = l.local_addr().unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(s, st));
            }
        });
        Upstream { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answer the next `n` requests with `status`.
    pub fn script(&self, status: u16, n: usize) {
        let mut s = self.state.0.lock().unwrap();
        s.script.extend(std::iter::repeat(status).take(n));
    }

    /// The next answer of `GET /orders...`.
    pub fn push_page(&self, page: Page) {
        self.state.0.lock().unwrap().pages.push_back(page);
    }

    /// The next answer of `POST /query...` (`Page::Json` carries any body: the answer
    /// text; `Page::Hold` holds the query until released).
    pub fn push_query_answer(&self, page: Page) {
        self.state.0.lock().unwrap().queries.push_back(page);
    }

    /// From now on a POST to a path starting with `/query` is answered 200 with an ASTM
    /// order for the first id in `X-Labagent-Specimens` (H, P, O, L).
    pub fn answer_queries(&self) {
        self.state.0.lock().unwrap().answer_queries = true;
    }

    /// Lets held feed polls and queries answer.
    pub fn release(&self) {
        self.state.0.lock().unwrap().released = true;
        self.state.1.notify_all();
    }

    /// Waits until `pred` holds for all requests so far, or panics after `timeout`.
    pub fn wait_requests(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        loop {
            if pred(&s.requests) {
                return s.requests.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "upstream: timed out waiting for {what}; got {} requests",
                s.requests.len()
            );
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// Waits until `n` requests were answered 2xx (counted, not copied: a benchmark's
    /// tens of thousands of uploads); false after `timeout`.
    pub fn wait_accepted_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        loop {
            let ok = s.accepted;
            if ok >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until `pred` holds for the accepted requests, or panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Request]) -> bool) {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        loop {
            let ok: Vec<Request> = s
                .requests
                .iter()
                .filter(|r| (200..300).contains(&r.status))
                .cloned()
                .collect();
            if pred(&ok) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "upstream: timed out waiting for {what}; got {} accepted requests",
                ok.len()
            );
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }
}

fn serve(s: TcpStream, st: Arc<(Mutex<State>, Condvar)>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while let Some(req) = crate::http::read_request(&mut r) {
        let crate::http::Incoming {
            method,
            path,
            headers,
            body,
        } = req;
        let (m, cv) = &*st;
        let feed = method == "GET" && path.starts_with("/orders");
        let query = method == "POST" && path.starts_with("/query");
        let (status, answer) = {
            let mut s = m.lock().unwrap();
            let (status, page) = if query && s.answer_queries && s.queries.is_empty() {
                let sid = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-labagent-specimens"))
                    .map(|(_, v)| v.split(',').next().unwrap_or("").to_string())
                    .unwrap_or_default();
                let order = format!("H|\\^&|||UPSTREAM\rP|1\rO|1|{sid}||^^^GLU|R\rL|1|N\r");
                (200, Some(Page::Json(order)))
            } else if feed || query {
                let next = if feed {
                    s.pages.pop_front()
                } else {
                    s.queries.pop_front()
                };
                match next {
                    Some(Page::Json(j)) => (200, Some(Page::Json(j))),
                    Some(Page::Hold) => (204, Some(Page::Hold)),
                    None => (204, None),
                }
            } else {
                (s.script.pop_front().unwrap_or(200), None)
            };
            s.accepted += usize::from((200..300).contains(&status));
            s.requests.push(Request {
                method,
                path,
                headers,
                body,
                status,
            });
            (status, page)
        };
        cv.notify_all();
        let body = match answer {
            Some(Page::Json(j)) => j,
            Some(Page::Hold) => {
                let mut s = m.lock().unwrap();
                while !s.released {
                    s = cv.wait(s).unwrap();
                }
                String::new()
            }
            None if feed || query => String::new(),
            None => "{}".to_string(),
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
