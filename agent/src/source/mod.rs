//! IO drivers binding hal sessions to real ports (being built).
