//! `labagent run` as a service (issue 8): systemd's notify protocol through a datagram
//! socket (RELOADING=1 with MONOTONIC_USEC on SIGHUP), SIGHUP reload (add, remove, refuse
//! a broken file), SIGTERM during ingestion (nothing acknowledged lost), `labagent status
//! --json`, `labagent monitor`, the metrics endpoint (checked by `promtool check
//! metrics`), the store's `sled/conf` synced at open, and `labagent demo` as a process.
//!
//! Every wait is on an event: a datagram, a log line, a port answering.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::config::{self, free_port};
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

const T: Duration = Duration::from_secs(30);

fn channel(name: &str, port: u16) -> String {
    config::listen_channel(name, "astm", port)
}

fn write_config(dir: &Path, up: &Upstream, extra_agent: &str, channels: &str) -> PathBuf {
    config::write(dir, "svc", &up.url("/ingest"), extra_agent, channels)
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "H|\\^&|||SVC^1|||||LIS||P|1\rP|1||S{i}\rO|1|S{i}||^^^GLU\rR|1|^^^GLU|{i}.5|mmol/L||N||F\rL|1|N\r"
    )
    .into_bytes()
}

fn send(port: u16, msgs: &[Vec<u8>]) -> Vec<labagent::simulate::Sent> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    AstmInstrument::new(None).send_all(&mut s, msgs).unwrap()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig)
        .unwrap();
}

/// Receives notify datagrams until one contains every one of `parts`.
fn wait_datagram(rx: &UnixDatagram, parts: &[&str], seen: &mut Vec<String>) -> String {
    rx.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = rx
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notify datagram with {parts:?} ({e}); got {seen:?}"));
        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(d.clone());
        if parts.iter().all(|p| d.contains(p)) {
            return d;
        }
    }
}

/// `labagent run` with one channel as systemd starts it with `WatchdogSec`: a notify
/// socket (returned) and WATCHDOG_USEC; systemd sets WATCHDOG_PID to the main pid, and
/// `exec` keeps the shell's pid.
fn start_under_watchdog(dir: &Path, up: &Upstream, usec: &str) -> (AgentProcess, UnixDatagram) {
    let cfg = write_config(dir, up, "", &channel("chem", free_port()));
    let sock = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"")
        .arg(labagent_tests::labagent_bin())
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", usec)
        .env("RUST_LOG", "labagent=debug")
        .stdout(Stdio::null());
    (AgentProcess::spawn(cmd), rx)
}

/// CLOCK_MONOTONIC in microseconds (the clock of MONOTONIC_USEC=).
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

#[test]
fn systemd_notify_ready_watchdog_status_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let (mut agent, rx) = start_under_watchdog(dir.path(), &up, "400000");
    let mut seen = Vec::new();
    let ready = wait_datagram(&rx, &["READY=1"], &mut seen);
    assert!(
        ready.contains("STATUS=1 channels (1 open), backlog 0, uplink"),
        "{ready:?}"
    );
    // Pings at half of WATCHDOG_USEC: two of them arrive.
    wait_datagram(&rx, &["WATCHDOG=1"], &mut seen);
    wait_datagram(&rx, &["WATCHDOG=1"], &mut seen);
    // A reload: RELOADING=1 with the monotonic time (sd_notify(3)), then READY=1 again.
    let before = monotonic_usec();
    signal(agent.pid(), rustix::process::Signal::Hup);
    let reloading = wait_datagram(&rx, &["RELOADING=1"], &mut seen);
    let after = monotonic_usec();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} not between {before} and {after}"
    );
    wait_datagram(&rx, &["READY=1"], &mut seen);
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
    wait_datagram(&rx, &["STOPPING=1"], &mut seen);
}

/// A store that stops answering correctly starves the watchdog (systemd then restarts the
/// agent), and feeding resumes once the store answers again. The store is broken from
/// outside by removing its log directory: its size (part of every status snapshot) can no
/// longer be read.
#[test]
fn a_broken_store_starves_the_watchdog_until_it_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    // A ping every 100 ms.
    let (mut agent, rx) = start_under_watchdog(dir.path(), &up, "200000");
    let mut seen = Vec::new();
    wait_datagram(&rx, &["READY=1"], &mut seen);
    wait_datagram(&rx, &["WATCHDOG=1"], &mut seen);

    let wal = dir.path().join("state").join("store").join("wal");
    let m = agent.mark();
    std::fs::remove_dir_all(&wal).unwrap();
    agent.wait_line(m, &["unhealthy: not feeding the watchdog", "store"], T);
    // Pings of the healthy ticks before it were sent before that line was logged: drop
    // them. From the first unhealthy tick on, ten tick periods without a ping.
    let mut buf = [0u8; 4096];
    rx.set_nonblocking(true).unwrap();
    while rx.recv(&mut buf).is_ok() {}
    rx.set_nonblocking(false).unwrap();
    let mut fed = Vec::new();
    let quiet_until = std::time::Instant::now() + Duration::from_millis(1000);
    loop {
        let left = quiet_until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        rx.set_read_timeout(Some(left)).unwrap();
        match rx.recv(&mut buf) {
            Ok(n) => {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                if d.contains("WATCHDOG=1") {
                    fed.push(d);
                }
            }
            Err(_) => break,
        }
    }
    assert!(
        fed.is_empty(),
        "watchdog fed while the store was broken: {fed:?}"
    );

    std::fs::create_dir(&wal).unwrap();
    rx.set_read_timeout(Some(T)).unwrap();
    wait_datagram(&rx, &["WATCHDOG=1"], &mut seen);
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
}

#[test]
fn watchdog_pid_of_another_process_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let cfg = write_config(dir.path(), &up, "", &channel("chem", free_port()));
    let sock = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let mut cmd = labagent_tests::labagent();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::null());
    let mut agent = AgentProcess::spawn(cmd);
    let mut seen = Vec::new();
    wait_datagram(&rx, &["READY=1"], &mut seen);
    let st = agent.terminate(T);
    assert!(st.success());
    wait_datagram(&rx, &["STOPPING=1"], &mut seen);
    assert!(
        !seen.iter().any(|d| d.contains("WATCHDOG=1")),
        "fed a watchdog that belongs to pid 1: {seen:?}"
    );
}

#[test]
fn sighup_adds_and_removes_channels_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let (pa, pb) = (free_port(), free_port());
    let cfg = write_config(dir.path(), &up, "", &channel("a", pa));
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    assert!(send(pa, &[message(1)])[0].delivered);

    // Add b.
    let m = agent.mark();
    write_config(dir.path(), &up, "", &(channel("a", pa) + &channel("b", pb)));
    signal(agent.pid(), rustix::process::Signal::Hup);
    agent.wait_line(m, &["configuration reloaded", "added=1", "removed=0"], T);
    assert!(send(pb, &[message(2)])[0].delivered);

    // Remove a: its port closes, b keeps running.
    let m = agent.mark();
    write_config(dir.path(), &up, "", &channel("b", pb));
    signal(agent.pid(), rustix::process::Signal::Hup);
    agent.wait_line(m, &["configuration reloaded", "added=0", "removed=1"], T);
    assert!(
        TcpStream::connect(("127.0.0.1", pa)).is_err(),
        "removed channel still listening"
    );
    assert!(send(pb, &[message(3)])[0].delivered);

    // A broken file is refused; the running config stays.
    let m = agent.mark();
    std::fs::write(&cfg, "[agent]\nid = \"svc\"\nbogus_key = 1\n").unwrap();
    signal(agent.pid(), rustix::process::Signal::Hup);
    agent.wait_line(m, &["configuration not reloaded", "bogus_key"], T);
    assert!(send(pb, &[message(4)])[0].delivered);

    up.wait_for(T, "4 messages upstream", |r| r.len() >= 4);
    let st = agent.terminate(T);
    assert!(st.success(), "{}", agent.log());
}

#[test]
fn sigterm_during_ingestion_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // A dead upstream: everything stays in the store, where we count it.
    let port = free_port();
    let cfg = config::write(
        dir.path(),
        "svc",
        &config::dead_url(),
        "",
        &channel("chem", port),
    );
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    let msgs: Vec<Vec<u8>> = (0..400).map(message).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        let mut inst = AstmInstrument::new(None);
        inst.on_sent = Some(Box::new(move |x| {
            let _ = tx.send(x.delivered);
        }));
        // Ends with a line error when the agent goes away: expected.
        let _ = inst.send_all(&mut s, &msgs);
    });
    // SIGTERM once some messages went through, mid-stream.
    let mut fates = Vec::new();
    for _ in 0..20 {
        fates.push(rx.recv_timeout(T).expect("messages flow"));
    }
    let st = agent.terminate(T);
    assert!(st.success(), "{st:?}\n{}", agent.log());
    sender.join().unwrap();
    fates.extend(rx.try_iter());
    let acked: Vec<usize> = fates
        .iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .map(|(i, _)| i)
        .collect();
    assert!(
        acked.len() >= 20 && acked.len() < 400,
        "{} acked",
        acked.len()
    );

    let store = labagent::store::Store::open(
        dir.path().join("state").join("store"),
        labagent::store::StoreOptions::default(),
    )
    .unwrap();
    let kept = store.next_pending("chem", 1000).unwrap();
    let texts: Vec<Vec<u8>> = kept.iter().map(|m| m.bytes.clone()).collect();
    for i in &acked {
        assert!(
            texts.iter().any(|t| t == &message(*i)),
            "message {i} was acknowledged but is not in the store"
        );
    }
}

fn status_json(cfg: &Path) -> serde_json::Value {
    let out = labagent_tests::labagent()
        .args(["status", "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_monitor_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    let port = free_port();
    let mport = free_port();
    let cfg = write_config(
        dir.path(),
        &up,
        &format!("metrics = \"127.0.0.1:{mport}\""),
        &channel("chem", port),
    );
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);

    // monitor, before the traffic.
    let mut mon = labagent_tests::labagent()
        .args(["monitor", "chem", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(mon.id());
    let mut lines = BufReader::new(mon.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "OK monitoring chem");

    assert!(send(port, &[message(7)])[0].delivered);
    up.wait_for(T, "the message upstream", |r| !r.is_empty());

    // The exchange as a technician sees it: ENQ, ACK, the frame, ACK, EOT.
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.ends_with("<- <EOT>")) {
        got.push(lines.next().expect("monitor line").unwrap());
    }
    assert!(got[0].ends_with("<- <ENQ>"), "{got:?}");
    assert!(got[1].ends_with("-> <ACK>"), "{got:?}");
    let frame = got.iter().find(|l| l.contains("<STX>")).expect("a frame");
    assert!(
        frame.contains("<- <STX>1H|\\^&|||SVC^1|||||LIS||P|1<CR><ETX>"),
        "{frame}"
    );
    assert!(frame.ends_with("<CR><LF>"), "{frame}");
    assert!(
        got.iter().any(|l| l.contains("<- <STX>2P|1||S7<CR><ETX>")),
        "{got:?}"
    );
    assert!(
        got[0].as_bytes()[2] == b':' && got[0].as_bytes()[8] == b'.',
        "timestamp HH:MM:SS.mmm: {got:?}"
    );
    drop(guard);
    let _ = mon.wait();

    // An unknown channel is an error with the list of channels.
    let out = labagent_tests::labagent()
        .args(["monitor", "nope", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("channels: chem"));

    // status --json
    let v = status_json(&cfg);
    assert_eq!(v["agent"], "svc");
    let ch = &v["channels"][0];
    assert_eq!(ch["name"], "chem");
    assert_eq!(ch["protocol"], "astm");
    assert_eq!(ch["port"], "listening");
    assert_eq!(ch["counters"]["stored"], 1);
    assert!(ch["counters"]["last_message_ms"].as_u64().unwrap() > 0);
    assert_eq!(v["uplink"]["kind"], "http");
    assert_eq!(v["uplink"]["auth_mode"], "none");
    assert_eq!(v["uplink"]["delivered"], 1);
    assert_eq!(v["store"]["backlog"], 0);
    // This machine's kernel answers adjtimex: known (null only where it cannot be read).
    assert!(v["clock_synchronized"].is_boolean(), "{v}");
    // The human form.
    let out = labagent_tests::labagent()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("chem (astm, listen 127.0.0.1:"), "{text}");
    assert!(text.contains("delivered 1"), "{text}");

    // metrics
    let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("labagent_channel_stored_total{channel=\"chem\",protocol=\"astm\"}"),
        1.0
    );
    assert_eq!(
        value("labagent_channel_acknowledged_total{channel=\"chem\",protocol=\"astm\"}"),
        1.0
    );
    assert_eq!(
        value("labagent_uplink_delivered_total{uplink=\"http\"}"),
        1.0
    );
    assert_eq!(value("labagent_store_backlog"), 0.0);
    assert!(value("labagent_store_syncs_total") >= 1.0);
    // One upload: one latency sample, in the +Inf bucket and (cumulative) in all above it.
    assert_eq!(
        value("labagent_uplink_latency_seconds_count{uplink=\"http\"}"),
        1.0
    );
    assert_eq!(
        value("labagent_uplink_latency_seconds_bucket{uplink=\"http\",le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(
        value("labagent_uplink_latency_seconds_bucket{uplink=\"http\",le=\"5\"}"),
        1.0
    );
    // The buckets reach the configured timeout (the default 30 s).
    assert_eq!(
        value("labagent_uplink_latency_seconds_bucket{uplink=\"http\",le=\"30\"}"),
        1.0
    );
    // No state in the labels of a measurement: up is 1/0, the state is a state set.
    assert_eq!(value("labagent_uplink_up{uplink=\"http\"}"), 1.0);
    assert_eq!(
        value("labagent_uplink_state{uplink=\"http\",state=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("labagent_uplink_state{uplink=\"http\",state=\"backing_off\"}"),
        0.0
    );
    assert_eq!(
        value("labagent_channel_port_up{channel=\"chem\",protocol=\"astm\"}"),
        1.0
    );
    assert_eq!(
        value(
            "labagent_channel_port_state{channel=\"chem\",protocol=\"astm\",state=\"listening\"}"
        ),
        1.0
    );
    assert!(
        !body.lines().any(
            |l| l.starts_with("labagent_channel_port_up{") && l.contains("state=")
                || l.starts_with("labagent_uplink_up{") && l.contains("state=")
        ),
        "{body}"
    );
    assert_eq!(
        value(&format!(
            "labagent_build_info{{version=\"{}\",target=\"",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 300.0 && started <= now,
        "{started} vs {now}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
    ] {
        assert!(value(name) > 0.0, "{name}");
    }
    // Prometheus' own linter is silent on the exposition.
    promtool_check(body);
    assert_eq!(
        value("labagent_uplink_token_requests_total{uplink=\"http\"}"),
        0.0,
        "auth none asks no token"
    );
    assert_eq!(
        value("labagent_channel_connections_opened_total{channel=\"chem\",protocol=\"astm\"}"),
        1.0,
        "one instrument connection"
    );
    // Every sample line is `name{labels} number` or `name number`; every family typed.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample {l:?}");
        let name = l.split(['{', ' ']).next().unwrap();
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|x| name.strip_suffix(x))
            .any(|base| body.contains(&format!("# TYPE {base} histogram")));
        assert!(
            histogram || body.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    let st = agent.terminate(T);
    assert!(st.success());
    assert!(
        !dir.path().join("status.sock").exists(),
        "status socket left behind"
    );
}

/// `promtool check metrics` (Debian's prometheus package, installed by tests/run.sh) prints
/// nothing and exits 0.
fn promtool_check(body: &str) {
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; tests/run.sh does this)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics: {:?}\n{text}\n--- exposition ---\n{body}",
        out.status
    );
}

/// sled writes `sled/conf` without an fsync (found empty after a power cut): the store
/// syncs it once after opening. Seen in the syscalls of a real start under strace.
#[test]
fn the_store_syncs_sled_conf_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::write(
        dir.path(),
        "conf",
        &config::dead_url(),
        "",
        &channel("chem", free_port()),
    );
    let trace = dir.path().join("trace");
    let mut cmd = std::process::Command::new(labagent_tests::strace::STRACE);
    // -ff: one file per thread, so no call is split by another thread's.
    cmd.args(["-ff", "-e", "trace=openat,fsync,fdatasync,close", "-o"])
        .arg(&trace)
        .arg(labagent_tests::labagent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "labagent=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null());
    let mut agent = AgentProcess::spawn_wrapped(cmd);
    agent.wait_line(0, &["agent running"], T);
    let st = agent.terminate(T);
    assert!(st.success(), "{}", agent.log());
    let mut text = String::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("trace.")
        {
            text.push_str(&std::fs::read_to_string(&p).unwrap());
            text.push_str("--- next thread\n");
        }
    }
    // Per thread: fds open on sled/conf (`openat(..., ".../sled/conf", ...) = FD`), and
    // whether an fsync of one of them succeeded before it was closed.
    let mut open: Vec<String> = Vec::new();
    let mut synced = false;
    for rest in text.lines() {
        if rest.starts_with("--- next thread") {
            open.clear();
        } else if rest.starts_with("openat(") && rest.contains("/sled/conf\"") {
            if let Some(fd) = rest.rsplit("= ").next().filter(|fd| !fd.starts_with('-')) {
                open.push(fd.trim().to_string());
            }
        } else if let Some(fd) = rest
            .strip_prefix("fsync(")
            .or_else(|| rest.strip_prefix("fdatasync("))
            .and_then(|r| r.split(')').next())
        {
            if open.iter().any(|o| o == fd) && rest.ends_with("= 0") {
                synced = true;
            }
        } else if let Some(fd) = rest
            .strip_prefix("close(")
            .and_then(|r| r.split(')').next())
        {
            open.retain(|o| o != fd);
        }
    }
    assert!(synced, "no fsync of sled/conf:\n{text}");
}

struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
        }
    }
}

#[test]
fn the_demo_delivers_every_message() {
    let mut child = labagent_tests::labagent()
        .args(["demo", "--baud", "115200", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}\n{out}");
    assert!(out.contains("exactly once"), "{out}");
    let n = labagent::simulate::ASTM_SAMPLES
        .iter()
        .map(|(_, t)| labagent::simulate::astm_messages(t).len())
        .sum::<usize>()
        + labagent::simulate::HL7_SAMPLES
            .iter()
            .map(|(_, t)| labagent::simulate::hl7_messages(t).len())
            .sum::<usize>();
    assert!(
        out.contains(&format!("the upstream received {n} distinct messages")),
        "{out}"
    );
}

#[test]
fn sighup_rebuilds_the_uplink_when_its_settings_change() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Upstream::start(), Upstream::start());
    let port = free_port();
    let cfg = write_config(dir.path(), &a, "", &channel("chem", port));
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    assert!(send(port, &[message(1)])[0].delivered);
    a.wait_for(T, "the first message at A", |r| r.len() == 1);

    let m = agent.mark();
    write_config(dir.path(), &b, "", &channel("chem", port));
    signal(agent.pid(), rustix::process::Signal::Hup);
    agent.wait_line(
        m,
        &[
            "configuration reloaded",
            "uplink_rebuilt=true",
            "restarted=0",
        ],
        T,
    );
    assert!(send(port, &[message(2)])[0].delivered);
    b.wait_for(T, "the second message at B", |r| r.len() == 1);
    assert_eq!(a.accepted().len(), 1, "A got nothing after the reload");
    let st = agent.terminate(T);
    assert!(st.success(), "{}", agent.log());
}
