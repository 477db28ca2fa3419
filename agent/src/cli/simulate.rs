//! `labagent simulate`: play an instrument on a serial port, a virtual serial port (pty),
//! or a TCP connection. Prints one line per message; exit 0 when every message was
//! acknowledged.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use labagent::simulate::wire::{PtyWire, SerialWire, Wire};
use labagent::simulate::{self, AstmInstrument, Faults, Pacer, Sent};

use super::exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Astm,
    Hl7,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The protocol the instrument speaks.
    #[arg(long, value_enum, default_value = "astm")]
    pub protocol: Proto,
    /// A serial port to send on (the agent listens on the other end of the cable).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["connect", "pty_link"])]
    pub serial: Option<PathBuf>,
    /// Create a virtual serial port (a pty) reachable at PATH (a symlink) and play the
    /// instrument on it; point a channel's `serial` at PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    pub pty_link: Option<PathBuf>,
    /// Connect to the agent's TCP `listen` address (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// Line speed: bytes are paced at BAUD/10 per second, like a UART (also on a pty).
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Do not pace: send as fast as the line takes bytes.
    #[arg(long)]
    pub no_pacing: bool,
    /// Send the files this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// After sending, listen this many seconds for orders from the agent and print them.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait_orders: u64,
    /// How long to wait for the agent to open the port or accept the connection.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub open_timeout: u64,
    /// ASTM: fill each frame with up to 240 text bytes across record boundaries (several
    /// records per frame, records split anywhere, ETX only on a message's last frame), as
    /// some instruments do. Default: each record starts a frame and ends in an ETX frame.
    #[arg(long)]
    pub pack_records: bool,
    /// ASTM: send frame N of the run (counted from 1 over all messages; a retransmission
    /// is not a new frame) once with a corrupted byte. The receiver must answer NAK; the
    /// frame then goes again unchanged. A line reports the answer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub corrupt_frame: Option<u64>,
    /// ASTM: send frame N of the run twice: after its ACK the same bytes again, as when an
    /// ACK is lost. The receiver must ACK the copy and drop it. A line reports the answer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub duplicate_frame: Option<u64>,
    /// ASTM: give up an ENQ that gets no answer within SECS (EOT) and send another, with no
    /// limit on attempts, until the receiver answers (one that is still starting, such as
    /// firmware under QEMU). Default: LIS1-A's 15 s reply timer, then 10 s between at most
    /// 6 ENQs per message.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..15))]
    pub enq_timeout: Option<u64>,
    /// Ask the host which tests to run for these specimens (comma separated) instead of
    /// sending files, and print its answer: ASTM a Q record (its ids as Q-3 repeats),
    /// HL7 a QBP^Q11 (IHE LAW; QPD-3). Exit 0 when an answer came, "no information"
    /// included.
    #[arg(long, value_name = "ID[,ID...]", conflicts_with_all = ["files", "repeat", "wait_orders"])]
    pub query: Option<String>,
    /// How long to wait for the answer to --query.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub query_wait: u64,
    /// Files of records (ASTM: H…L, one record per line; HL7: segments, a message per
    /// MSH). None: the bundled samples.
    pub files: Vec<PathBuf>,
}

fn load(args: &SimulateArgs) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if args.files.is_empty() {
        let samples = match args.protocol {
            Proto::Astm => simulate::ASTM_SAMPLES,
            Proto::Hl7 => simulate::HL7_SAMPLES,
        };
        files.extend(samples.iter().map(|(n, b)| (n.to_string(), b.to_vec())));
    } else {
        for f in &args.files {
            let b = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            files.push((f.display().to_string(), b));
        }
    }
    let mut out = Vec::new();
    for _ in 0..args.repeat.max(1) {
        for (name, bytes) in &files {
            let msgs = match args.protocol {
                Proto::Astm => simulate::astm_messages(bytes),
                Proto::Hl7 => simulate::hl7_messages(bytes),
            };
            if msgs.is_empty() {
                return Err(format!("{name}: no messages found"));
            }
            out.extend(msgs.into_iter().map(|m| (name.clone(), m)));
        }
    }
    Ok(out)
}

/// The instrument's line, or the exit code after saying why it cannot be had.
fn open_wire(args: &SimulateArgs) -> Result<Box<dyn Wire>, u8> {
    connect(args).map_err(|e| {
        eprintln!("labagent simulate: {e}");
        exit::FAILURE
    })
}

fn connect(args: &SimulateArgs) -> Result<Box<dyn Wire>, String> {
    let timeout = Duration::from_secs(args.open_timeout);
    if let Some(link) = &args.pty_link {
        let w = PtyWire::create(Some(link)).map_err(|e| format!("cannot create a pty: {e}"))?;
        eprintln!(
            "virtual serial port ready at {} ({}); waiting for the agent to open it",
            link.display(),
            w.pty().slave_path().display()
        );
        w.wait_open(timeout)
            .map_err(|e| format!("the agent did not open {}: {e}", link.display()))?;
        eprintln!("port opened by the agent");
        return Ok(Box::new(w));
    }
    if let Some(path) = &args.serial {
        return Ok(Box::new(
            SerialWire::open(path, args.baud).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(addr) = &args.connect {
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Box::new(s));
                }
                Err(e) if Instant::now() >= deadline => return Err(format!("{addr}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Err("say where the instrument is: --pty-link PATH, --serial PATH or --connect HOST:PORT".into())
}

fn line(i: usize, n: usize, name: &str, s: &Sent) -> String {
    format!(
        "message {}/{} ({name}, {} bytes): {} in {:.2} s",
        i + 1,
        n,
        s.bytes,
        s.detail,
        s.elapsed.as_secs_f64()
    )
}

pub fn run(args: &SimulateArgs) -> u8 {
    let astm_only = [
        ("--pack-records", args.pack_records),
        ("--corrupt-frame", args.corrupt_frame.is_some()),
        ("--duplicate-frame", args.duplicate_frame.is_some()),
        ("--enq-timeout", args.enq_timeout.is_some()),
    ];
    if let Some((flag, _)) = astm_only
        .iter()
        .find(|(_, set)| *set && args.protocol != Proto::Astm)
    {
        eprintln!("labagent simulate: {flag} is for --protocol astm only");
        return exit::CONFIG;
    }
    if let Some(ids) = &args.query {
        return query(args, ids);
    }
    let messages = match load(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("labagent simulate: {e}");
            return exit::CONFIG;
        }
    };
    let mut wire = match open_wire(args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let baud = (!args.no_pacing).then_some(args.baud);
    let names: Vec<String> = messages.iter().map(|(n, _)| n.clone()).collect();
    let bodies: Vec<Vec<u8>> = messages.into_iter().map(|(_, m)| m).collect();
    let n = bodies.len();
    let start = Instant::now();
    let mut i = 0;
    let result = match args.protocol {
        Proto::Astm => {
            let mut inst = AstmInstrument::new(baud);
            inst.on_sent = Some(Box::new(move |s: &Sent| {
                println!("{}", line(i, n, &names[i], s));
                i += 1;
            }));
            inst.sender.pack_records = args.pack_records;
            inst.faults = Faults {
                corrupt_frame: args.corrupt_frame,
                duplicate_frame: args.duplicate_frame,
                enq_timeout: args.enq_timeout.map(Duration::from_secs),
            };
            inst.on_note = Some(Box::new(|note: &str| println!("{note}")));
            let r = inst.send_all(&mut *wire, &bodies);
            if r.is_ok() && args.wait_orders > 0 {
                let deadline = Instant::now() + Duration::from_secs(args.wait_orders);
                match inst.receive(&mut *wire, usize::MAX, deadline) {
                    Ok(_) => {
                        for m in &inst.received.messages {
                            println!("order received ({} bytes):", m.len());
                            for rec in m.split(|&b| b == b'\r').filter(|r| !r.is_empty()) {
                                println!("  {}", String::from_utf8_lossy(rec));
                            }
                        }
                    }
                    Err(e) => eprintln!("labagent simulate: {e}"),
                }
            }
            r
        }
        Proto::Hl7 => {
            let mut pacer = Pacer::new(baud);
            simulate::send_hl7(
                &mut *wire,
                &mut pacer,
                &bodies,
                Duration::from_secs(30),
                |s| {
                    println!("{}", line(i, n, &names[i], s));
                    i += 1;
                },
            )
        }
    };
    match result {
        Ok(sent) => {
            let ok = sent.iter().filter(|s| s.delivered).count();
            let bytes: usize = sent.iter().map(|s| s.bytes).sum();
            println!(
                "{ok} of {} messages acknowledged, {bytes} bytes in {:.2} s",
                sent.len(),
                start.elapsed().as_secs_f64()
            );
            if ok == sent.len() {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
        Err(e) => {
            eprintln!("labagent simulate: line error: {e}");
            exit::FAILURE
        }
    }
}

/// `--query`: one host query, its answer printed.
fn query(args: &SimulateArgs, ids: &str) -> u8 {
    let ids: Vec<&str> = ids
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if ids.is_empty() {
        eprintln!("labagent simulate: --query needs at least one specimen id");
        return exit::CONFIG;
    }
    let mut wire = match open_wire(args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let baud = (!args.no_pacing).then_some(args.baud);
    let wait = Duration::from_secs(args.query_wait);
    let r = match args.protocol {
        Proto::Astm => {
            let mut inst = AstmInstrument::new(baud);
            let q = simulate::astm_query(&ids);
            match inst.send_all(&mut *wire, &[q]) {
                Ok(s) if s.iter().all(|s| s.delivered) => {
                    let t0 = Instant::now();
                    inst.receive(&mut *wire, 1, t0 + wait).map(|_| {
                        let answers = inst.received.messages.clone();
                        (answers, t0.elapsed())
                    })
                }
                Ok(_) => Err(std::io::Error::other("the query was not acknowledged")),
                Err(e) => Err(e),
            }
        }
        Proto::Hl7 => {
            let mut pacer = Pacer::new(baud);
            simulate::hl7_query(&mut *wire, &mut pacer, &ids, wait)
        }
    };
    match r {
        Ok((answers, _)) if answers.is_empty() => {
            eprintln!("labagent simulate: no answer within {} s", wait.as_secs());
            exit::FAILURE
        }
        Ok((answers, took)) => {
            println!("answer in {} ms after the query:", took.as_millis());
            for m in &answers {
                for rec in m.split(|&b| b == b'\r').filter(|r| !r.is_empty()) {
                    println!("  {}", String::from_utf8_lossy(rec));
                }
            }
            if simulate::nothing_known(&answers) {
                println!("the host knows nothing for these specimens");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("labagent simulate: line error: {e}");
            exit::FAILURE
        }
    }
}
