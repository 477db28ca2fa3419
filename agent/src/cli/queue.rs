//! `labagent queue …`: the store, through the running agent (status socket) or, when no
//! agent runs, opened directly.

use std::path::Path;

use clap::{Args, Subcommand};

use super::exit;
use labagent::service::queue::{execute, QueueRequest};
use labagent::store::State;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List messages (oldest first).
    List(ListArgs),
    /// Show one message: its details and its bytes, control bytes named.
    Show { id: String },
    /// Queue a message for upload again (after fixing what made the upstream refuse it),
    /// or every rejected or incomplete message.
    Retry(RetryArgs),
    /// Remove every delivered message now (they would go after `keep_delivered`).
    Purge {
        /// Required: only delivered messages are ever purged.
        #[arg(long, required = true)]
        delivered: bool,
    },
    /// Write messages as JSON lines to stdout.
    Export {
        /// Only messages received at or after this Unix time (seconds).
        #[arg(long, value_name = "UNIX_SECONDS", default_value_t = 0)]
        since: u64,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub channel: Option<String>,
    /// pending | delivered | rejected | incomplete
    #[arg(long, value_parser = parse_state)]
    pub state: Option<State>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetryArgs {
    pub id: Option<String>,
    #[arg(long)]
    pub rejected: bool,
    #[arg(long)]
    pub incomplete: bool,
}

fn parse_state(s: &str) -> Result<State, String> {
    match s {
        "pending" => Ok(State::Pending),
        "delivered" => Ok(State::Delivered),
        "rejected" => Ok(State::Rejected),
        "incomplete" => Ok(State::Incomplete),
        _ => Err("one of: pending, delivered, rejected, incomplete".into()),
    }
}

fn request(cmd: &QueueCommand) -> QueueRequest {
    match cmd {
        QueueCommand::List(a) => QueueRequest::List {
            channel: a.channel.clone(),
            state: a.state,
            limit: a.limit,
        },
        QueueCommand::Show { id } => QueueRequest::Show { id: id.clone() },
        QueueCommand::Retry(a) => match (&a.id, a.rejected) {
            (Some(id), _) => QueueRequest::Retry { id: id.clone() },
            (None, true) => QueueRequest::RetryAll {
                state: State::Rejected,
            },
            (None, false) => QueueRequest::RetryAll {
                state: State::Incomplete,
            },
        },
        QueueCommand::Purge { .. } => QueueRequest::PurgeDelivered,
        QueueCommand::Export { since } => QueueRequest::Export { since_unix: *since },
    }
}

pub fn run(config: &Path, cmd: &QueueCommand) -> u8 {
    let loaded = match labagent_config::load(config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let cfg = loaded.config;
    let req = request(cmd);
    let json = serde_json::to_string(&req).unwrap_or_default();
    match labagent::service::control::request(&cfg.agent.status_socket, &format!("queue {json}")) {
        Ok(reply) => {
            if let Some(text) = reply.strip_prefix("OK\n") {
                print!("{text}");
                exit::OK
            } else {
                eprintln!(
                    "labagent queue: {}",
                    reply.trim_end().trim_start_matches("ERR ")
                );
                exit::FAILURE
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // No agent: open the store ourselves (sled allows one process at a time).
            let store = match labagent::service::open_store(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "labagent queue: no agent answers on {} and {e}",
                        cfg.agent.status_socket.display()
                    );
                    return exit::STORE;
                }
            };
            match execute(&store, &req) {
                Ok(text) => {
                    print!("{text}");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("labagent queue: {e}");
                    exit::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!(
                "labagent queue: cannot reach the agent at {}: {e}",
                cfg.agent.status_socket.display()
            );
            exit::FAILURE
        }
    }
}
