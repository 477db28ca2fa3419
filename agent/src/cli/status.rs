//! `labagent status` and `labagent monitor`: clients of the running agent's status socket.

use std::path::Path;

use clap::Args;

use super::exit;
use labagent::service::{control, status::AgentStatus};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON (for scripts and monitoring).
    #[arg(long)]
    pub json: bool,
    /// The status socket (default: `[agent] status_socket` of the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The channel to watch.
    pub channel: String,
    /// The status socket (default: `[agent] status_socket` of the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

/// The socket from `--socket`, else from the config file.
fn socket(config: &Path, given: &Option<std::path::PathBuf>) -> Result<std::path::PathBuf, u8> {
    if let Some(s) = given {
        return Ok(s.clone());
    }
    // Only the socket is needed.
    super::load_without_secret(config)
        .map(|l| l.config.agent.status_socket)
        .inspect_err(|_| {
            eprintln!("labagent: pass --socket PATH to reach an agent without reading its config")
        })
}

fn unreachable(path: &Path, e: &std::io::Error) -> u8 {
    eprintln!(
        "labagent: cannot reach the agent at {}: {e}\n  is it running (systemctl status labagent)? \
         are you in its group (the socket is owner/group only)?",
        path.display()
    );
    exit::FAILURE
}

pub fn status(config: &Path, args: &StatusArgs) -> u8 {
    let path = match socket(config, &args.socket) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let text = match control::request(&path, "status") {
        Ok(t) => t,
        Err(e) => return unreachable(&path, &e),
    };
    if args.json {
        print!("{text}");
        return exit::OK;
    }
    match serde_json::from_str::<AgentStatus>(&text) {
        Ok(st) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            print!("{}", st.render(now));
            exit::OK
        }
        Err(e) => {
            eprintln!("labagent: unexpected answer from the agent ({e}): {text}");
            exit::FAILURE
        }
    }
}

pub fn monitor(config: &Path, args: &MonitorArgs) -> u8 {
    let path = match socket(config, &args.socket) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    match control::monitor(&path, &args.channel, &mut out) {
        Ok(()) => exit::OK,
        // The agent answered, but has no such channel (the name came from the command line).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.exists() => {
            eprintln!("labagent: {e}");
            exit::USAGE
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => unreachable(&path, &e),
    }
}
