//! Durable store (being built).
