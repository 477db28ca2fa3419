//! Name resolution for the HTTP uplink: cached, on one long-lived thread, within the
//! request's timeout.
//!
//! ureq's default resolver looks the host up before every request — a pooled, kept-alive
//! connection included — and, when a timeout is set (ours always is), spawns a thread to
//! do it: hundreds of threads a minute under load (docs/perf/ingest.md). This one:
//!
//! - never resolves an IP literal (`http://127.0.0.1:8080`, `https://[::1]/`);
//! - keeps a host's addresses for [`TTL`], so a busy uplink looks a name up a few times a
//!   minute at most;
//! - resolves on one thread (`resolver`, started at the first name that needs it and kept),
//!   and waits for the answer no longer than the request's remaining timeout; a lookup that
//!   outlives it fails the request with a timeout and finishes in the background (its
//!   answer still fills the cache).
//!
//! Failures are not cached: the next request asks again (DNS may be back).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ureq::config::{Config, IpFamily};
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a host's addresses are reused.
pub const TTL: Duration = Duration::from_secs(30);

type Answer = io::Result<Vec<SocketAddr>>;

struct Job {
    host_port: String,
    reply: mpsc::SyncSender<Answer>,
}

#[derive(Default)]
struct Shared {
    cache: Mutex<HashMap<String, (Vec<SocketAddr>, Instant)>>,
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

/// The uplink's resolver; clones share the cache and the thread.
#[derive(Clone, Default)]
pub struct CachingResolver {
    shared: Arc<Shared>,
}

impl fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingResolver").finish()
    }
}

/// Host and port of `uri` (the port from the scheme when absent); `None` for a URI ureq
/// could not use either.
fn host_port(uri: &Uri) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        "socks4" | "socks4a" | "socks5" | "socks5h" => Some(1080),
        _ => None,
    })?;
    Some((authority.host().to_string(), port))
}

fn keep(family: IpFamily, a: &SocketAddr) -> bool {
    match family {
        IpFamily::Ipv4Only => a.is_ipv4(),
        IpFamily::Ipv6Only => a.is_ipv6(),
        _ => true,
    }
}

impl CachingResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The resolver thread's queue, starting the thread on first use.
    fn jobs(&self) -> io::Result<mpsc::Sender<Job>> {
        if let Some(tx) = self.shared.jobs.get() {
            return Ok(tx.lock().unwrap_or_else(|e| e.into_inner()).clone());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                for job in rx {
                    let answer = job
                        .host_port
                        .to_socket_addrs()
                        .map(|i| i.collect::<Vec<_>>());
                    if let (Ok(addrs), Some(shared)) = (&answer, shared.upgrade()) {
                        shared
                            .cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(job.host_port.clone(), (addrs.clone(), Instant::now()));
                    }
                    let _ = job.reply.try_send(answer);
                }
            })?;
        // Another request may have started one meanwhile: keep the first, this one's
        // thread ends with its queue.
        let slot = self.shared.jobs.get_or_init(|| Mutex::new(tx));
        Ok(slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Addresses of `host:port`: an IP literal as it is, else cached or looked up within
    /// `within` (`None`: no limit).
    pub fn lookup(&self, host: &str, port: u16, within: Option<Duration>) -> Answer {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = format!("{host}:{port}");
        if let Some((addrs, at)) = self
            .shared
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs()?
            .send(Job {
                host_port: key,
                reply,
            })
            .map_err(|_| io::Error::other("the resolver thread is gone"))?;
        match within {
            Some(d) => answer.recv_timeout(d).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => {
                    io::Error::new(io::ErrorKind::TimedOut, "name lookup timed out")
                }
                mpsc::RecvTimeoutError::Disconnected => io::Error::other("resolver gone"),
            })?,
            None => answer
                .recv()
                .map_err(|_| io::Error::other("resolver gone"))?,
        }
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (host, port) = host_port(uri).ok_or_else(|| ureq::Error::BadUri(uri.to_string()))?;
        let within = (!timeout.after.is_not_happening()).then(|| *timeout.after);
        let addrs = self
            .lookup(&host, port, within)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => ureq::Error::Timeout(timeout.reason),
                _ => ureq::Error::Io(e),
            })?;
        let mut out = self.empty();
        for a in addrs
            .iter()
            .filter(|a| keep(config.ip_family(), a))
            .take(16)
        {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    #[test]
    fn literals_are_never_looked_up_and_names_are_cached_on_one_thread() {
        let r = CachingResolver::new();
        let a = r
            .lookup("127.0.0.1", 8080, Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(a, ["127.0.0.1:8080".parse().unwrap()]);
        let a = r.lookup("[::1]", 443, None).unwrap();
        assert_eq!(a, ["[::1]:443".parse().unwrap()]);
        assert!(r.shared.jobs.get().is_none(), "no thread for literals");
        let first = r
            .lookup("localhost", 80, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(first.iter().all(|a| a.ip().is_loopback()), "{first:?}");
        let before = threads_named("resolver");
        for _ in 0..50 {
            assert_eq!(
                r.lookup("localhost", 80, Some(Duration::from_secs(10)))
                    .unwrap(),
                first
            );
        }
        assert_eq!(
            threads_named("resolver"),
            before,
            "cached: no new thread, no lookup"
        );
        assert!(r
            .lookup("no-such-host.invalid", 80, Some(Duration::from_secs(10)))
            .is_err());
        // Different port, same host: looked up on the same thread.
        assert!(r
            .lookup("localhost", 81, Some(Duration::from_secs(10)))
            .is_ok());
        assert!(threads_named("resolver") <= before.max(1));
    }

    #[test]
    fn host_and_port_from_uris() {
        let u: Uri = "https://example.org/x".parse().unwrap();
        assert_eq!(host_port(&u), Some(("example.org".into(), 443)));
        let u: Uri = "http://[::1]:8080/x".parse().unwrap();
        assert_eq!(host_port(&u), Some(("[::1]".into(), 8080)));
    }
}
