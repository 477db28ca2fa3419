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
    Show {
        /// The message id, as `queue list` prints it (e.g. 1a2b3c4d-000000000042).
        id: String,
    },
    /// Queue a message for upload again (after fixing what made the upstream refuse it),
    /// or every rejected or incomplete message.
    Retry(RetryArgs),
    /// Remove every delivered message now (they would go after `keep_delivered`).
    Purge {
        /// Required: only delivered messages are ever purged.
        #[arg(long, required = true)]
        delivered: bool,
    },
    /// List the order cache: orders kept for the instruments (oldest first), with their
    /// state, specimen ids and outcome.
    Orders(OrdersArgs),
    /// Write messages as JSON lines to stdout.
    Export {
        /// Only messages received at or after this Unix time (seconds).
        #[arg(long, value_name = "UNIX_SECONDS", default_value_t = 0)]
        since: u64,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the messages of this channel (its `name` in the config).
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// Only messages in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// At most this many messages, oldest first.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// Only the orders of this channel (its `name` in the config).
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// Only orders for this specimen id (as a host query would name it).
    #[arg(long, value_name = "ID")]
    pub specimen: Option<String>,
    /// At most this many orders, oldest first.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

/// A message's state, as `--state` takes it (`--help` lists the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Waiting for upload.
    Pending,
    /// Confirmed upstream; kept for `keep_delivered`.
    Delivered,
    /// Refused by the upstream (400, 409, 413, 415, 422) or not a valid message.
    Rejected,
    /// A transmission that never ended (kept, not uploaded until retried).
    Incomplete,
}

impl From<StateArg> for State {
    fn from(s: StateArg) -> State {
        match s {
            StateArg::Pending => State::Pending,
            StateArg::Delivered => State::Delivered,
            StateArg::Rejected => State::Rejected,
            StateArg::Incomplete => State::Incomplete,
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetryArgs {
    /// The message id to queue again, as `queue list` prints it.
    pub id: Option<String>,
    /// Queue every rejected message again.
    #[arg(long)]
    pub rejected: bool,
    /// Queue every incomplete message again (upload what was received).
    #[arg(long)]
    pub incomplete: bool,
}

fn request(cmd: &QueueCommand) -> QueueRequest {
    match cmd {
        QueueCommand::List(a) => QueueRequest::List {
            channel: a.channel.clone(),
            state: a.state.map(State::from),
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
        QueueCommand::Orders(a) => QueueRequest::Orders {
            channel: a.channel.clone(),
            specimen: a.specimen.clone(),
            limit: a.limit,
        },
    }
}

pub fn run(config: &Path, cmd: &QueueCommand) -> u8 {
    // The store and the socket are all it needs.
    let loaded = match super::load_without_secret(config) {
        Ok(l) => l,
        Err(code) => return code,
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
                    return exit::of_run_error(&e);
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
