//! The command line: parsed by clap, then each command runs against the validated config.

pub mod demo;
pub mod logging;
pub mod map;
pub mod ports;
pub mod queue;
pub mod simulate;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes, documented in `--help` so a systemd unit can act on them
/// (`RestartPreventExitStatus=2` stops restart loops on a broken config).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A runtime failure (IO error, a component that died).
    pub const FAILURE: u8 = 1;
    /// The configuration file is missing or invalid, or the command line is wrong.
    pub const CONFIG: u8 = 2;
    /// The state directory or store cannot be opened (permissions, format version, disk).
    pub const STORE: u8 = 3;
    /// The command or feature is not built into this version.
    pub const UNAVAILABLE: u8 = 69;
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   runtime failure (IO error, a component that died)
  2   configuration error (file missing or invalid) or bad command line
  3   the state directory or store cannot be opened
  69  the command is not built into this version yet";

#[derive(Debug, Parser)]
#[command(
    name = "labagent",
    version,
    about = "Reads laboratory analyzers (ASTM, HL7, raw) over serial or TCP, stores every \
             message durably before acknowledging it, and uploads it upstream.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/etc/labagent/config.toml",
        env = "LABAGENT_CONFIG"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (as the systemd service does).
    Run,
    /// Validate the configuration and print the effective settings (defaults filled in,
    /// secrets shown only by where they come from).
    CheckConfig,
    /// List the serial ports of this host, with USB vendor, product and serial number.
    Ports,
    /// Play an instrument (ASTM or HL7 sender) on a serial port, a virtual serial port or
    /// TCP, to test a cable and a config.
    Simulate(simulate::SimulateArgs),
    /// Show what the running agent is doing: ports, last messages, backlog, uplink, auth
    /// (asks the agent over its status socket).
    Status(status::StatusArgs),
    /// Look into the store and act on it: list, show, retry, purge, export. Goes through
    /// the running agent; opens the store itself only when no agent runs.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Show the live wire traffic of one channel, both directions, control bytes named
    /// (the serial sniffer for the bench). Ctrl-C ends it.
    Monitor(status::MonitorArgs),
    /// Run the whole pipeline on this machine with no setup: a simulated analyzer on a
    /// virtual serial line, the agent, and a local upstream with a token endpoint.
    Demo(demo::DemoArgs),
    /// Print the FHIR transaction Bundle a message file would become on a channel (to
    /// check a code map before using format = "fhir"). Nothing is stored or sent.
    Map(map::MapArgs),
}
