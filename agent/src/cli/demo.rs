//! `labagent demo`: the whole pipeline on this machine, no setup, no root.
//!
//! A pseudo-terminal pair stands in for the RS-232 cable: a simulated chemistry analyzer
//! on one end sends the bundled ASTM samples, paced like a real line, honouring ACK/NAK;
//! the agent opens the other end exactly as it opens `/dev/ttyUSB0`. A simulated
//! hematology analyzer sends the bundled HL7 v2 samples over MLLP on loopback TCP. The agent stores each message
//! durably before it acknowledges it, then uploads it to an embedded local upstream that
//! issues an OAuth2 token (client credentials) and accepts messages the way a Medplum Bot
//! `$execute` endpoint does. The state lives in a temporary directory removed at the end.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::exit;
use labagent::service::Agent;
use labagent::simulate::upstream::{DemoUpstream, INGEST_PATH, TOKEN_PATH};
use labagent::simulate::{
    astm_messages, hl7_messages, send_hl7, AstmInstrument, Pacer, PtyWire, ASTM_SAMPLES,
    HL7_SAMPLES,
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Line speed of the simulated analyzer (bytes are paced at 10 bits each).
    #[arg(long, default_value_t = 19_200)]
    pub baud: u32,
    /// Give up if not every message is delivered within this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Keep the temporary state directory (to look at it with other commands).
    #[arg(long)]
    pub keep: bool,
}

const CLIENT_ID: &str = "labagent-demo";
const SECRET: &str = "demo-secret-not-for-production";

pub fn run(args: &DemoArgs) -> u8 {
    // The agent's own log lines stay quiet (errors only) unless asked for with RUST_LOG.
    super::logging::init(labagent_config::LogLevel::Error);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labagent demo: cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    let dir = match tempfile::Builder::new().prefix("labagent-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("labagent demo: cannot create a temporary directory: {e}");
            return exit::FAILURE;
        }
    };
    let code = rt.block_on(demo(args, dir.path()));
    if args.keep {
        let kept = dir.keep();
        println!("state kept in {}", kept.display());
    }
    code
}

fn config_text(dir: &Path, device: &Path, hl7_port: u16, base: &str, baud: u32) -> String {
    format!(
        r#"[agent]
id = "demo"
state_dir = "{state}"
status_socket = "{sock}"

[uplink]
kind = "http"
url = "{base}{INGEST_PATH}"
allow_plain_http = true          # loopback demo only; real upstreams use https
timeout = "10s"

[uplink.auth]
method = "client_credentials"
token_url = "{base}{TOKEN_PATH}"
client_id = "{CLIENT_ID}"
scope = "system/Bot.x"

[[channel]]
name = "chemistry"
protocol = "astm"
serial = "{device}"
baud = {baud}

[[channel]]
name = "hematology"
protocol = "hl7"
listen = "127.0.0.1:{hl7_port}"
"#,
        state = dir.join("state").display(),
        sock = dir.join("status.sock").display(),
        device = device.display(),
    )
}

async fn demo(args: &DemoArgs, dir: &Path) -> u8 {
    let start = Instant::now();
    let upstream = match DemoUpstream::start(CLIENT_ID, SECRET).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("labagent demo: cannot start the local upstream: {e}");
            return exit::FAILURE;
        }
    };
    let wire = match PtyWire::create(Some(&dir.join("ttyDEMO"))) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("labagent demo: cannot create a virtual serial line (pty): {e}");
            return exit::FAILURE;
        }
    };
    let device = wire.device_path();
    let hl7_port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => {
            eprintln!("labagent demo: no free loopback port: {e}");
            return exit::FAILURE;
        }
    };
    let text = config_text(dir, &device, hl7_port, &upstream.base_url(), args.baud);
    let cfg_path = dir.join("config.toml");
    let _ = std::fs::write(&cfg_path, &text);
    let opts = labagent_config::LoadOptions::with_env([("LABAGENT_CLIENT_SECRET", SECRET)]);
    let config = match labagent_config::load_str(&text, &cfg_path, &opts) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("labagent demo: built-in configuration rejected (a bug): {e}");
            return exit::FAILURE;
        }
    };

    let messages: Vec<(String, Vec<u8>)> = ASTM_SAMPLES
        .iter()
        .flat_map(|(name, text)| {
            astm_messages(text)
                .into_iter()
                .map(move |m| (name.to_string(), m))
        })
        .collect();
    let hl7: Vec<(String, Vec<u8>)> = HL7_SAMPLES
        .iter()
        .flat_map(|(name, text)| {
            hl7_messages(text)
                .into_iter()
                .map(move |m| (name.to_string(), m))
        })
        .collect();
    let total = messages.len() + hl7.len();
    let astm_bytes: usize = messages.iter().map(|(_, m)| m.len()).sum();
    let hl7_bytes: usize = hl7.iter().map(|(_, m)| m.len()).sum();

    println!("labagent demo — the whole pipeline on this machine, nothing to set up\n");
    println!(
        "  analyzer  chemistry: {} ASTM messages ({astm_bytes} bytes) on a virtual serial port",
        messages.len()
    );
    println!(
        "            {} at {} baud (a pty pair), full E1381 link protocol",
        device.display(),
        args.baud
    );
    println!(
        "  analyzer  hematology: {} HL7 v2 messages ({hl7_bytes} bytes, one in ISO-8859-1) over MLLP to 127.0.0.1:{hl7_port}",
        hl7.len()
    );
    println!(
        "  agent     stores each message durably before it ACKs, in {}",
        dir.join("state").display()
    );
    println!(
        "  upstream  {} — OAuth2 token endpoint + Medplum-style Bot $execute",
        upstream.base_url()
    );
    println!(
        "  config    {} (what a technician would write)\n",
        cfg_path.display()
    );

    let agent = match Agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("labagent demo: the agent did not start: {e}");
            return exit::FAILURE;
        }
    };
    let registry = agent.registry();

    // The analyzer: blocking, on its own thread, like an instrument on its own wire.
    let sent_ok = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let finished_hl7 = Arc::new(AtomicBool::new(false));
    let end = Arc::new(AtomicBool::new(false));
    let (s_ok, fin, end2) = (sent_ok.clone(), finished.clone(), end.clone());
    let baud = args.baud;
    let analyzer = std::thread::spawn(move || {
        let mut wire = wire;
        if let Err(e) = wire.wait_open(Duration::from_secs(30)) {
            println!("  analyzer: the agent never opened the line: {e}");
            fin.store(true, Ordering::SeqCst);
            return;
        }
        let mut inst = AstmInstrument::new(Some(baud));
        let names: Vec<String> = messages.iter().map(|(n, _)| n.clone()).collect();
        let bodies: Vec<Vec<u8>> = messages.into_iter().map(|(_, m)| m).collect();
        let mut i = 0usize;
        let n = bodies.len();
        let ok = s_ok.clone();
        inst.on_sent = Some(Box::new(move |s| {
            i += 1;
            if s.delivered {
                ok.fetch_add(1, Ordering::SeqCst);
                println!(
                    "  analyzer → agent   message {i}/{n} ({}, {} bytes) acknowledged after {:.0} ms on the line",
                    names[i - 1],
                    s.bytes,
                    s.elapsed.as_secs_f64() * 1e3
                );
            } else {
                println!(
                    "  analyzer → agent   message {i}/{n} NOT acknowledged: {}",
                    s.detail
                );
            }
        }));
        if let Err(e) = inst.send_all(&mut wire, &bodies) {
            println!("  analyzer: line error: {e}");
        }
        fin.store(true, Ordering::SeqCst);
        // Keep the line open until the demo ends (closing it would look like an unplug).
        while !end2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    let (h_ok, h_fin) = (sent_ok.clone(), finished_hl7.clone());
    let hl7_analyzer = std::thread::spawn(move || {
        let mut tcp = match std::net::TcpStream::connect(("127.0.0.1", hl7_port)) {
            Ok(s) => s,
            Err(e) => {
                println!("  hematology: cannot connect to the agent: {e}");
                h_fin.store(true, Ordering::SeqCst);
                return;
            }
        };
        let names: Vec<String> = hl7.iter().map(|(n, _)| n.clone()).collect();
        let bodies: Vec<Vec<u8>> = hl7.into_iter().map(|(_, m)| m).collect();
        let n = bodies.len();
        let mut i = 0usize;
        let r = send_hl7(
            &mut tcp,
            &mut Pacer::new(None),
            &bodies,
            Duration::from_secs(30),
            |s| {
                i += 1;
                if s.delivered {
                    h_ok.fetch_add(1, Ordering::SeqCst);
                    println!(
                        "  hematology → agent HL7 message {i}/{n} ({}, {} bytes) answered {} after {:.0} ms",
                        names[i - 1],
                        s.bytes,
                        s.detail,
                        s.elapsed.as_secs_f64() * 1e3
                    );
                } else {
                    println!(
                        "  hematology → agent HL7 message {i}/{n} NOT accepted: {}",
                        s.detail
                    );
                }
            },
        );
        if let Err(e) = r {
            println!("  hematology: line error: {e}");
        }
        h_fin.store(true, Ordering::SeqCst);
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut last = (usize::MAX, u64::MAX, usize::MAX);
    let mut interrupted = false;
    let mut timed_out = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let reg = registry.clone();
        let snap = tokio::task::spawn_blocking(move || reg.snapshot())
            .await
            .ok();
        let stored = snap.as_ref().map_or(0, |s| {
            s.channels.iter().map(|c| c.counters.stored).sum::<u64>()
        });
        let backlog = snap.as_ref().map_or(0, |s| s.store.backlog);
        let delivered = upstream.distinct();
        let acked = sent_ok.load(Ordering::SeqCst);
        if (acked, stored, delivered) != last {
            println!(
                "  progress           acknowledged {acked}/{total} · stored {stored} · delivered upstream {delivered}"
            );
            last = (acked, stored, delivered);
        }
        let done = finished.load(Ordering::SeqCst)
            && finished_hl7.load(Ordering::SeqCst)
            && backlog == 0
            && delivered as u64 >= stored
            && acked == stored as usize;
        if done {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => { interrupted = true; break; }
            _ = tokio::time::sleep_until(deadline) => { timed_out = true; break; }
            _ = upstream.arrived.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let snap = {
        let reg = registry.clone();
        tokio::task::spawn_blocking(move || reg.snapshot())
            .await
            .ok()
    };
    agent.stop().await;
    end.store(true, Ordering::SeqCst);
    let _ = analyzer.join();
    let _ = hl7_analyzer.join();

    let acked = sent_ok.load(Ordering::SeqCst);
    let delivered = upstream.distinct();
    let repeats = upstream.arrivals().iter().filter(|a| a.repeat).count();
    println!();
    if interrupted {
        println!("stopped by Ctrl-C after {:.1} s: nothing acknowledged is lost — it stays in the store until delivered.", start.elapsed().as_secs_f64());
        return exit::OK;
    }
    let backlog = snap.as_ref().map_or(0, |s| s.store.backlog);
    println!("summary after {:.1} s:", start.elapsed().as_secs_f64());
    println!("  the analyzers sent {total} messages ({acked} accepted); every ACK was sent only after the message was on disk");
    println!(
        "  the upstream received {delivered} distinct messages ({repeats} retransmissions recognised by Idempotency-Key), using {} OAuth2 token request(s)",
        upstream.tokens_issued()
    );
    println!("  left in the store, undelivered: {backlog}");
    if timed_out || acked != total || delivered != total || backlog != 0 {
        println!("\nthe demo did NOT complete within {} s; see the lines above (RUST_LOG=labagent=debug shows more)", args.timeout);
        return exit::FAILURE;
    }
    println!("\nEvery message went analyzer → durable store → ACK → upstream, exactly once.");
    println!("Next: write /etc/labagent/config.toml for your analyzer (see cross/config.toml),");
    println!("check it with `labagent check-config`, find its port with `labagent ports`,");
    println!("and watch the line with `labagent monitor CHANNEL` once `labagent run` is up.");
    exit::OK
}
