//! The command line: parsed by clap, then each command runs against the validated config.

pub mod credential;
pub mod demo;
pub mod logging;
pub mod man;
pub mod map;
pub mod ports;
pub mod queue;
pub mod remote;
pub mod simulate;
pub mod status;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

/// Exit codes, one per kind of failure (`labagent::exit`), documented in `--help` and the
/// man page so a systemd unit can act on them (`RestartPreventExitStatus=2 64 65`).
pub use labagent::exit;

#[derive(Debug, Parser)]
#[command(
    name = "labagent",
    version,
    about = "Reads laboratory analyzers (ASTM, HL7, raw) over serial or TCP, stores every \
             message durably before acknowledging it, and uploads it upstream.",
    after_help = exit::help()
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
    CheckConfig(CheckConfigArgs),
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
    /// Sign a remote command: reads the command (JSON) on stdin, prints it with "sig"
    /// (Ed25519 over its canonical form; see docs/FLEET.md).
    Sign(remote::SignArgs),
    /// Fleet management on this box: `remote reset` brings back the local config file.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Write the manual pages (labagent.1, labagent-<command>.1) into a directory; the
    /// Debian package is built with them.
    #[command(hide = true)]
    Man(man::ManArgs),
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The systemd unit whose LoadCredential=client_secret:… provides the client secret
    /// when no other source is present (default: labagent.service and its drop-ins, as
    /// systemd finds them).
    #[arg(long, value_name = "PATH")]
    pub unit: Option<PathBuf>,
}

/// The config for a command that talks to the store or the running agent: no client
/// secret needed (under LoadCredential= the secret exists only inside the service). On an
/// error it is printed, and the exit code returned.
pub fn load_without_secret(config: &Path) -> Result<labagent_config::Loaded, u8> {
    let opts = labagent_config::LoadOptions::default().secret_optional();
    labagent_config::load_with(config, &opts).map_err(|e| {
        eprintln!("{e}");
        exit::CONFIG
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command, subcommand and option says what it is for (`--help`, the man page).
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "labagent", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_cover_every_command() {
        let d = tempfile::tempdir().unwrap();
        let files = man::write_pages(d.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "labagent.1",
            "labagent-run.1",
            "labagent-queue.1",
            "labagent-status.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("man")),
            "hidden command: {names:?}"
        );
        let main = std::fs::read_to_string(d.path().join("labagent.1")).unwrap();
        for want in [
            ".TH labagent 1",
            "EXIT STATUS",
            "\\fB72\\fR",
            "check\\-config",
            "LoadCredential=",
        ] {
            assert!(
                main.contains(want),
                "{want:?} missing from labagent.1:\n{main}"
            );
        }
    }
}
