//! The in-memory log ring the `logs` command reads: the last [`CAPACITY`] lines at `info`
//! and above, whatever `agent.log` says — so never `debug`, where patient data may appear,
//! and never a secret (no log line carries one at any level).
//!
//! It is a `tracing` layer with its own filter (`labagent` at `info`, everything else at
//! `warn`), installed next to the output layer by `labagent run`'s logging set-up.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept (the `logs` command's upper bound for `args.lines`).
pub const CAPACITY: usize = 1000;

/// The ring.
#[derive(Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
}

impl LogRing {
    pub fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == CAPACITY {
            l.pop_front();
        }
        l.push_back(line);
    }

    /// The last `n` lines (at most [`CAPACITY`]), oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(l.len());
        l.iter().skip(l.len() - n).cloned().collect()
    }
}

/// The process's ring.
pub fn global() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(LogRing::default)
}

/// The filter of the ring: at most `info` for labagent, `warn` for its libraries.
pub fn filter() -> Targets {
    Targets::new()
        .with_target("labagent", Level::INFO)
        .with_default(Level::WARN)
}

/// A layer writing into [`global`]; add it with [`filter`].
pub struct RingLayer;

struct Fields(String, String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.1, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Belt and braces: the filter already stops debug and trace.
        if *meta.level() > Level::INFO {
            return;
        }
        let mut f = Fields(String::new(), String::new());
        event.record(&mut f);
        global().push(format!(
            "{} {:>5} {}{}",
            crate::calendar::rfc3339(std::time::SystemTime::now()),
            meta.level(),
            f.0,
            f.1
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_only() {
        let r = LogRing::default();
        for i in 0..CAPACITY + 5 {
            r.push(format!("l{i}"));
        }
        let last = r.last(3);
        assert_eq!(last, vec!["l1002", "l1003", "l1004"]);
        assert_eq!(r.last(5000).len(), CAPACITY);
    }

    #[test]
    fn records_info_not_debug() {
        use tracing_subscriber::prelude::*;
        let sub = tracing_subscriber::registry().with(RingLayer.with_filter(filter()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(n = 1, "ring-test visible");
            tracing::debug!("ring-test hidden");
        });
        let all = global().last(CAPACITY).join("\n");
        assert!(all.contains("ring-test visible n=1"), "{all}");
        assert!(!all.contains("ring-test hidden"), "{all}");
    }
}
