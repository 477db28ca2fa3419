//! Fleet management (docs/FLEET.md): commands from the server over MQTT or an HTTPS feed,
//! checked, signed, audited; results back; a pushed config on trial with rollback.
//!
//! The pieces, each with one job:
//!
//! - [`command`]: the shape of a command and every check before it runs (id, agent,
//!   `not_after`, signature, `allow`);
//! - [`sign`]: the canonical form and Ed25519 signatures (`ring`);
//! - [`logring`]: the in-memory log the `logs` command reads (at most `info`);
//! - [`files`]: pushed configs and the trial marker in `state_dir/remote/`;
//! - [`feed`]: the HTTPS command feed and the result sender (threads of their own);
//! - [`port`]: what those transports need from the command side.
//!
//! Running commands, trials and start-up restore belong to the service
//! (`service::remote`); MQTT presence, commands and results to the MQTT session
//! (`mqtt::session::remote`); the records to the store (`store::remote`).

pub mod command;
pub mod feed;
pub mod files;
pub mod logring;
pub mod port;
pub mod sign;
