//! labagent library: IO drivers, the durable store, uplinks. The binary in `main.rs` is the
//! CLI on top of it.
pub mod backoff;
pub mod calendar;
pub mod channel;
pub mod clock;
pub mod exit;
pub mod fhir;
pub mod ingest;
pub mod loglimit;
pub mod meta;
pub mod mqtt;
pub mod orders;
pub mod query;
pub mod remote;
pub mod service;
pub mod simulate;
pub mod source;
pub mod store;
pub mod text;
pub mod uplink;
