//! labagent library: drivers, store, uplinks. The binary in `main.rs` is the CLI.
pub mod store;
