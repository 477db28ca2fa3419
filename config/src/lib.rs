//! The config.toml contract (being built).
