//! End-to-end benchmarks of the real agent: `cargo run --profile bench -p labagent-tests
//! --bin bench -- [SECTION...]` prints one table per section (all sections without
//! arguments). Figures go to docs/PERFORMANCE.md with the command that produced them;
//! compare ratios within one run, not absolute numbers across runs.
//!
//! Each section lives in `tests/src/bench/<name>.rs` and exposes `run() -> Vec<Row>`.

mod astm;
mod fhir;
mod fsync;
mod hl7;
mod ingest;
mod mqtt;
mod query;
mod service;
mod sys;
mod table;
mod uplink;

use table::Row;

type Section = (&'static str, &'static str, fn() -> Vec<Row>);

/// (name, what it measures, runner)
const SECTIONS: &[Section] = &[
    (
        "fsync",
        "the disk's own append + fdatasync rate",
        fsync::run,
    ),
    (
        "service",
        "start to READY (empty, large backlog), idle CPU and RSS",
        service::run,
    ),
    (
        "hl7",
        "MLLP ingest, store (fsync) then ACK, 1 KiB messages",
        hl7::run,
    ),
    (
        "ingest",
        "the real agent under 8 MLLP connections: CPU, threads, syncs (and syscalls) per message",
        ingest::run,
    ),
    (
        "astm",
        "ASTM over a paced pty: payload vs line rate, frame end to ACK",
        astm::run,
    ),
    (
        "query",
        "host queries at 9600 baud: EOT to the answer's first byte, from the order cache",
        query::run,
    ),
    (
        "mqtt",
        "draining the store to a local mosquitto at QoS 1",
        mqtt::run,
    ),
    (
        "uplink",
        "drain a stored backlog over HTTP: raw and json batches, peak RSS",
        uplink::run,
    ),
    (
        "fhir",
        "drain a stored ASTM backlog as FHIR transaction Bundles next to raw",
        fhir::run,
    ),
];

fn main() {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    if wanted.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: bench [--syscalls] [SECTION...]; --syscalls: count the agent's system calls under strace -c -f (ingest); sections:");
        for (name, what, _) in SECTIONS {
            println!("  {name:<10} {what}");
        }
        return;
    }
    if let Some(i) = wanted.iter().position(|a| a == "--syscalls") {
        wanted.remove(i);
        ingest::SYSCALLS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    for w in &wanted {
        if !SECTIONS.iter().any(|(n, _, _)| n == w) {
            eprintln!("unknown section {w:?}; try --help");
            std::process::exit(2);
        }
    }
    for (name, what, run) in SECTIONS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        println!("## {name}: {what}\n");
        table::print(&run());
        println!();
    }
}
