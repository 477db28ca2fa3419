//! `labagent sign` and `labagent remote reset` (fleet management, docs/FLEET.md).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::exit;
use labagent::remote::files::Files;
use labagent::service::control;

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519 -out
    /// remote.key`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Take this box back from a pushed config: remove state_dir/remote/config.toml (and
    /// its .previous) and have the running agent reload, so the local file is in force.
    Reset,
}

/// Reads a command (JSON) on stdin, prints it signed, compact, on one line.
pub fn sign(args: &SignArgs) -> u8 {
    let text = match std::fs::read_to_string(&args.key) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("labagent: cannot read {}: {e}", args.key.display());
            return exit::NO_INPUT;
        }
    };
    let key = match labagent::remote::sign::load_private_pem(&text) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("labagent: {}: {e}", args.key.display());
            return exit::DATA;
        }
    };
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("labagent: cannot read the command on stdin: {e}");
        return exit::NO_INPUT;
    }
    let cmd: serde_json::Value = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("labagent: the command on stdin is not JSON: {e}");
            return exit::DATA;
        }
    };
    for k in ["id", "agent", "command", "not_after"] {
        if cmd.get(k).is_none() {
            eprintln!("labagent: the command has no \"{k}\" (it is part of what is signed)");
            return exit::DATA;
        }
    }
    match labagent::remote::sign::sign(&key, &cmd) {
        Ok(v) => {
            println!("{v}");
            exit::OK
        }
        Err(e) => {
            eprintln!("labagent: {e}");
            exit::DATA
        }
    }
}

pub fn run(config: &Path, cmd: &RemoteCommand) -> u8 {
    match cmd {
        RemoteCommand::Reset => reset(config),
    }
}

fn reset(config: &Path) -> u8 {
    let loaded = match super::load_without_secret(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let files = Files::new(&loaded.config.agent.state_dir);
    let by = files.pushed_by();
    match files.reset() {
        Ok(true) => println!(
            "removed the pushed config {}{}; {} is in force again",
            files.pushed().display(),
            by.map(|b| format!(" (pushed by command {b})"))
                .unwrap_or_default(),
            config.display()
        ),
        Ok(false) => println!("no pushed config: {} is already in force", config.display()),
        Err(e) => {
            eprintln!(
                "labagent: cannot remove the pushed config in {}: {e} (run as the service's user or root)",
                files.pushed().display()
            );
            return exit::CANT_CREATE;
        }
    }
    let sock = &loaded.config.agent.status_socket;
    match control::request(sock, "reload") {
        Ok(reply) if reply.starts_with("OK") => {
            println!("the running agent is reloading");
            exit::OK
        }
        Ok(reply) => {
            eprintln!("labagent: the agent answered: {}", reply.trim());
            exit::FAILURE
        }
        Err(_) => {
            println!(
                "no agent answers on {}: the local file is used at the next start",
                sock.display()
            );
            exit::OK
        }
    }
}
