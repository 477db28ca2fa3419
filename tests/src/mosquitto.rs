//! A real mosquitto broker on loopback for the MQTT tests and the benchmark, and a test
//! client (rumqttc's blocking `Client`) that records what arrives.
//!
//! The broker runs from a generated config file on a free port, is waited for until its
//! port accepts connections, and is ended by its pid when the guard drops. As root,
//! mosquitto 2 drops privileges to `mosquitto` unless told `user root`; the config says so
//! when the tests run as root, so it can read the generated files.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, Packet, QoS};
use rustix::process::{kill_process, Pid, Signal};

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether mosquitto is installed (tests/run.sh installs it).
pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run tests/run.sh (it installs the Debian package)");
}

/// A running mosquitto.
pub struct Broker {
    child: Option<Child>,
    conf: PathBuf,
    /// The listener ports, in config order (the first one is `port()`).
    pub ports: Vec<u16>,
    log: PathBuf,
}

impl Broker {
    /// A broker whose config is `body` (listeners and all) with `{port}` … placeholders
    /// already filled; `ports` are the listener ports to wait for.
    pub fn start_with(dir: &Path, body: &str, ports: Vec<u16>) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let mut text = String::new();
        if rustix::process::geteuid().is_root() {
            text.push_str("user root\n");
        }
        text.push_str(&format!("log_dest file {}\nlog_type all\n", log.display()));
        text.push_str(body);
        std::fs::write(&conf, text).unwrap();
        let mut b = Broker {
            child: None,
            conf,
            ports,
            log,
        };
        b.restart();
        b
    }

    /// Anonymous plain broker on one loopback port; `extra` config lines are appended.
    pub fn plain(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        Self::start_with(
            dir,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}"),
            vec![port],
        )
    }

    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts (again) with the same config and waits until every port accepts.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &self.ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(st) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("mosquitto exited ({st}):\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto port {port} did not open:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn signal(&mut self, sig: Signal) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(pid, sig);
            }
            let _ = c.wait();
        }
    }

    /// SIGKILL: no chance to save anything.
    pub fn kill(&mut self) {
        self.signal(Signal::Kill);
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    pub fn terminate(&mut self) {
        self.signal(Signal::Term);
    }

    /// Reloads the config files (password file, ACL) without dropping clients.
    pub fn reload(&self) {
        if let Some(pid) = self.pid().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, Signal::Hup);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the broker's log has a line containing every part (after `from` bytes).
    pub fn wait_log(&self, from: usize, parts: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log
                .get(from..)
                .unwrap_or("")
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no broker log line with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_len(&self) -> usize {
        self.log().len()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a mosquitto password file with `users` (via `mosquitto_passwd -b`).
pub fn password_file(path: &Path, users: &[(&str, &str)]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, "").unwrap();
    for (u, p) in users {
        let st = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .arg(u)
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(st.success(), "mosquitto_passwd failed");
    }
}

/// One message received by a [`TestClient`].
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
}

#[derive(Default)]
struct Seen {
    msgs: Vec<Received>,
    subacks: u64,
    connacks: u64,
}

/// A test-side MQTT client: subscribes to `filter` at QoS 1 (again after every reconnect)
/// and records every message; can publish.
pub struct TestClient {
    client: Client,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestClient {
    /// Connects with a persistent session `id` (optionally `user`/`pass`) on `port`.
    pub fn connect(port: u16, id: &str, login: Option<(&str, &str)>, filter: &str) -> TestClient {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 << 20, 64 << 20);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        let (client, mut conn) = Client::new(o, 1000);
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let s = seen.clone();
        let c = client.clone();
        let filter = filter.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let mut g = s.0.lock().unwrap();
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        g.connacks += 1;
                        let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => g.subacks += 1,
                    Ok(Event::Incoming(Incoming::Publish(p))) => g.msgs.push(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    }),
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => {
                        drop(g);
                        // Broker away (tests kill it on purpose): try again shortly.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
                s.1.notify_all();
            }
        });
        let me = TestClient {
            client,
            seen,
            stop,
            thread: Some(thread),
        };
        me.wait_subscribed(1, Duration::from_secs(20));
        me
    }

    /// Waits until `n` SUBACKs have arrived since the client started.
    pub fn wait_subscribed(&self, n: u64, timeout: Duration) {
        self.wait(timeout, "subscription", |s| s.subacks >= n);
    }

    pub fn subacks(&self) -> u64 {
        self.seen.0.lock().unwrap().subacks
    }

    fn wait(&self, timeout: Duration, what: &str, f: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut g = self.seen.0.lock().unwrap();
        while !f(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what} ({} messages so far)",
                g.msgs.len()
            );
            g = self.seen.1.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits until the messages received satisfy `f`; returns them.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        self.wait(timeout, what, |s| f(&s.msgs));
        self.messages()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.seen.0.lock().unwrap().msgs.clone()
    }

    /// QoS 1 publish.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
