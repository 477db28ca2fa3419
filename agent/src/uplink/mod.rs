//! Uplinks (being built).
