//! Raw delimited framing (being built).
