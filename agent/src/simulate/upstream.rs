//! A local upstream for `labagent demo`: an OAuth2 token endpoint (client credentials,
//! `client_secret_basic`) and an ingest endpoint shaped like a Medplum Bot `$execute`,
//! over plain HTTP/1.1 on loopback. It checks what a real server would check — the
//! client's credentials, the bearer token, the `Idempotency-Key` — and counts what
//! arrives, so the demo can show messages end to end. Not a general HTTP server.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const INGEST_PATH: &str = "/fhir/R4/Bot/demo/$execute";

/// What arrived at the ingest endpoint.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub idempotency_key: String,
    pub content_type: String,
    pub bytes: usize,
    /// A repeat of a key seen before (answered 200, counted once).
    pub repeat: bool,
}

#[derive(Default)]
struct State {
    tokens_issued: u64,
    token: Option<String>,
    keys: HashSet<String>,
    arrivals: Vec<Arrival>,
    refused: u64,
}

/// The running upstream.
#[derive(Clone)]
pub struct DemoUpstream {
    addr: SocketAddr,
    client_id: String,
    secret: String,
    state: Arc<Mutex<State>>,
    /// Signalled on every arrival.
    pub arrived: Arc<Notify>,
}

impl DemoUpstream {
    /// Listens on `127.0.0.1:0` and serves in the background.
    pub async fn start(client_id: &str, secret: &str) -> io::Result<DemoUpstream> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let up = DemoUpstream {
            addr: l.local_addr()?,
            client_id: client_id.to_string(),
            secret: secret.to_string(),
            state: Arc::default(),
            arrived: Arc::new(Notify::new()),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let u = u.clone();
                tokio::spawn(async move {
                    let _ = u.serve(s).await;
                });
            }
        });
        Ok(up)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Distinct messages received (by `Idempotency-Key`).
    pub fn distinct(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.lock().arrivals.clone()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    /// Requests refused for bad credentials or token.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    async fn serve(&self, mut s: TcpStream) -> io::Result<()> {
        let mut buf = Vec::with_capacity(8192);
        loop {
            // Head.
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                if buf.len() > 64 * 1024 {
                    return Err(io::Error::other("request head too large"));
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or("");
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = header(&headers, "content-length").parse().unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            let (status, json) = self.route(&method, &path, &headers, &body);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            );
            s.write_all(reply.as_bytes()).await?;
        }
    }

    fn route(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (&'static str, String) {
        let header = |k: &str| header(headers, k);
        if method != "POST" {
            return ("405 Method Not Allowed", "{}".into());
        }
        if path == TOKEN_PATH {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", self.client_id, self.secret))
            );
            let form = String::from_utf8_lossy(body);
            if header("authorization") != expected
                || !form.contains("grant_type=client_credentials")
            {
                self.lock().refused += 1;
                return ("401 Unauthorized", r#"{"error":"invalid_client"}"#.into());
            }
            let mut st = self.lock();
            st.tokens_issued += 1;
            let seed = format!(
                "{}{:?}{}",
                std::process::id(),
                std::time::SystemTime::now(),
                st.tokens_issued
            );
            let token = crate::text::hex(&sha2::Sha256::digest(seed.as_bytes()));
            st.token = Some(token.clone());
            return (
                "200 OK",
                format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600,"scope":"system/Bot.x"}}"#
                ),
            );
        }
        if path == INGEST_PATH {
            let mut st = self.lock();
            let ok = st
                .token
                .as_ref()
                .is_some_and(|t| header("authorization") == format!("Bearer {t}"));
            if !ok {
                st.refused += 1;
                return (
                    "401 Unauthorized",
                    r#"{"resourceType":"OperationOutcome"}"#.into(),
                );
            }
            let key = header("idempotency-key").to_string();
            let repeat = !st.keys.insert(key.clone());
            st.arrivals.push(Arrival {
                idempotency_key: key,
                content_type: header("content-type").to_string(),
                bytes: body.len(),
                repeat,
            });
            drop(st);
            self.arrived.notify_waiters();
            return ("200 OK", r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#.into());
        }
        ("404 Not Found", "{}".into())
    }
}

/// A request header by lower-case name ("" when absent).
fn header<'a>(headers: &'a [(String, String)], k: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}
