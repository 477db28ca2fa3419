//! ASTM over a virtual serial line: the real `labagent run` on the slave of a pty (through
//! a by-id style symlink), the simulator's E1381 instrument on the master, paced at 9600
//! and at 115200 baud (10 bits per byte), uploading to a loopback HTTP upstream.
//!
//! Figures: payload (message text) throughput as a fraction of line rate, next to the
//! protocol's own ceiling (frame envelopes, ENQ/EOT, and the ACK turnarounds a real
//! half-duplex line adds), and the time from a frame's last byte to its ACK — which
//! includes the store's sync — next to the raw fdatasync latency measured in the same run.
//!
//! The agent binary is the optimised one next to this bench binary: build it first with
//! `cargo build --profile bench -p labagent` (or set `LABAGENT_BIN`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use labagent::simulate::wire::{PtyWire, Wire};
use labagent::simulate::AstmInstrument;
use labagent_hal::astm::{ACK, LF};
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::Upstream;

use crate::table::{percentile, Row};

const T: Duration = Duration::from_secs(60);

/// The shape of the records sent.
#[derive(Clone, Copy)]
enum Shape {
    /// A typical chemistry result message: H, P, O, 12 R records of ~80 bytes, L — one
    /// short record per frame, as analyzers send them.
    Typical,
    /// The same with every R record carrying a comment that fills its frame (~230 bytes):
    /// the best case for the frame envelope.
    Long,
}

fn message(i: usize, shape: Shape) -> Vec<u8> {
    let mut m = format!(
        "H|\\^&|||Bench-Analyzer^1.0^SN-0042|||||LIS||P|1|20261130120000\rP|1||PID-{i:06}||^^||||U\rO|1|S{i:06}||^^^CHEM7|R|20261130115500|||||N||||SERUM\r"
    );
    for r in 0..12 {
        let note = match shape {
            Shape::Typical => String::new(),
            Shape::Long => "x".repeat(150),
        };
        m.push_str(&format!(
            "R|{}|^^^TEST{r:02}^^1|{}.{r}|mmol/L|3.5 to 5.1|N||F||OP01||20261130120000|BA1{note}\r",
            r + 1,
            i % 90 + 10,
        ));
    }
    m.push_str("L|1|N\r");
    m.into_bytes()
}

/// Bytes the instrument puts on the line for one message in its own transmission: ENQ,
/// one frame per ≤ 240-byte piece of each record (7 bytes of envelope each), EOT; and the
/// number of replies (ACKs) it waits for.
fn wire_cost(text: &[u8]) -> (usize, usize) {
    let mut bytes = 2; // ENQ, EOT
    let mut frames = 0;
    for rec in text.split_inclusive(|&b| b == b'\r') {
        let n = rec.len().div_ceil(240);
        frames += n;
        bytes += rec.len() + 7 * n;
    }
    (bytes, frames + 1) // + the ACK to ENQ
}

/// The instrument's wire, timing each write that ends in `sent` (the pacer writes in
/// chunks; the one ending a frame carries its last byte) to the next read holding `reply`.
pub(crate) struct Timed<'a> {
    pub inner: &'a mut PtyWire,
    pub sent: u8,
    pub reply: u8,
    pub at: Option<Instant>,
    pub latencies: Vec<Duration>,
}

impl<'a> Timed<'a> {
    pub fn new(inner: &'a mut PtyWire, sent: u8, reply: u8) -> Self {
        Timed {
            inner,
            sent,
            reply,
            at: None,
            latencies: Vec::new(),
        }
    }
}

impl Wire for Timed<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        if bytes.last() == Some(&self.sent) {
            self.at = Some(Instant::now());
        }
        Ok(())
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let n = self.inner.read_timeout(buf, timeout)?;
        if n > 0 && buf[..n].contains(&self.reply) {
            if let Some(t) = self.at.take() {
                self.latencies.push(t.elapsed());
            }
        }
        Ok(n)
    }
}

/// `labagent run` (the bench binary's sibling) on `cfg`, info logs, stdout dropped.
pub(crate) fn start_agent(cfg: &Path) -> AgentProcess {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "labagent=info,warn")
        .env("NO_COLOR", "1")
        .env_remove("LABAGENT_CONFIG")
        .stdout(Stdio::null());
    AgentProcess::spawn(cmd)
}

fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LABAGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.with_file_name("labagent");
    if !bin.is_file() {
        eprintln!(
            "{} not found: build it first with `cargo build --profile bench -p labagent`",
            bin.display()
        );
        std::process::exit(2);
    }
    bin
}

fn write_config(dir: &Path, up: &Upstream, link: &Path, baud: u32) -> PathBuf {
    labagent_tests::config::write(
        dir,
        "bench",
        &up.url("/ingest"),
        "",
        &labagent_tests::config::serial_channel("chem", "astm", link, baud),
    )
}

struct Run {
    messages: usize,
    payload: usize,
    elapsed: Duration,
    /// Payload / instrument's wire bytes: the ceiling on a pty (ACKs cost no line time).
    ceiling_pty: f64,
    /// The same with one byte time per ACK, as on a real half-duplex line.
    ceiling_line: f64,
    latencies: Vec<Duration>,
}

fn run_at(baud: u32, shape: Shape, line_seconds: f64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start();
    let link = dir.path().join("usb-Bench_Analyzer-if00-port0");
    let cfg = write_config(dir.path(), &up, &link, baud);
    let mut pty = PtyWire::create(Some(&link)).expect("pty");
    let mut agent = start_agent(&cfg);
    pty.wait_open(T).expect("the agent opens the port");

    // Enough messages for about `line_seconds` of line time.
    let bytes_per_s = baud as f64 / 10.0;
    let one = wire_cost(&message(0, shape)).0 as f64;
    let n = ((line_seconds * bytes_per_s / one).ceil() as usize).max(3);
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| message(i, shape)).collect();
    let payload: usize = msgs.iter().map(Vec::len).sum();
    let (wire, acks) = msgs
        .iter()
        .map(|m| wire_cost(m))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));

    let mut timed = Timed::new(&mut pty, LF, ACK);
    let mut inst = AstmInstrument::new(Some(baud));
    let t0 = Instant::now();
    let sent = inst.send_all(&mut timed, &msgs).expect("send");
    let elapsed = t0.elapsed();
    let latencies = std::mem::take(&mut timed.latencies);
    assert!(
        sent.iter().all(|s| s.delivered),
        "every message delivered: {:?}",
        sent.iter().find(|s| !s.delivered)
    );
    up.wait_for(T, "every message upstream", |r| {
        r.iter().filter(|r| (200..300).contains(&r.status)).count() >= n
    });
    let st = agent.terminate(T);
    assert!(st.success(), "agent exit: {st:?}\n{}", agent.log());

    let mut latencies = latencies;
    latencies.sort();
    Run {
        messages: n,
        payload,
        elapsed,
        ceiling_pty: payload as f64 / wire as f64,
        ceiling_line: payload as f64 / (wire + acks) as f64,
        latencies,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn run() -> Vec<Row> {
    let mut rows = Vec::new();
    let runs = [
        (9600u32, Shape::Typical, "typical records", 15.0),
        (9600, Shape::Long, "long records", 12.0),
        (115_200, Shape::Typical, "typical records", 15.0),
    ];
    for (baud, shape, label, secs) in runs {
        // The disk's own latency right before this run (it drifts with the machine's load).
        let (_, fs50, fs99) = crate::fsync::measure(300);
        let r = run_at(baud, shape, secs);
        let line = baud as f64 / 10.0;
        let got = r.payload as f64 / r.elapsed.as_secs_f64();
        let frac = got / line;
        let name = format!("{baud} baud, {label}");
        rows.push(Row::new(
            format!("{name}: payload throughput"),
            format!("{:.1}% of line rate", frac * 100.0),
            format!(
                "{got:.0} B/s of {line:.0} B/s; {} messages, {} B of record text in {:.1} s",
                r.messages,
                r.payload,
                r.elapsed.as_secs_f64()
            ),
        ));
        rows.push(Row::new(
            format!("{name}: protocol ceiling"),
            format!("{:.1}%", r.ceiling_pty * 100.0),
            format!(
                "text / instrument wire bytes (ENQ, 7-byte frame envelopes, EOT); {:.1}% with one byte time per ACK on a real line; measured = {:.1}% of the ceiling",
                r.ceiling_line * 100.0,
                frac / r.ceiling_pty * 100.0
            ),
        ));
        let mean = r.latencies.iter().sum::<Duration>() / r.latencies.len().max(1) as u32;
        rows.push(Row::new(
            format!("{name}: frame end → ACK p50 / p99"),
            format!(
                "{} / {}",
                ms(percentile(&r.latencies, 50.0)),
                ms(percentile(&r.latencies, 99.0))
            ),
            format!(
                "mean {}; {} frames; includes the store's sync",
                ms(mean),
                r.latencies.len()
            ),
        ));
        rows.push(Row::new(
            format!("{name}: fdatasync p50 / p99 before it"),
            format!("{} / {}", ms(fs50), ms(fs99)),
            "1 KiB append + fdatasync, 300 rounds, same file system",
        ));
    }
    rows
}
