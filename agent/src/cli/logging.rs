//! Log output on stderr, in the form its reader needs:
//!
//! - **journald** (`JOURNAL_STREAM` names the device and inode of fd 2, as systemd sets it
//!   for a service whose stderr is the journal): plain lines without timestamps (journald
//!   adds its own), every line prefixed with its syslog priority `<N>` (sd-daemon(3)), so
//!   `journalctl -p err -u labagent` finds the errors — every line of a multi-line message
//!   too, and the lines printed before logging starts ([`print`]). A `JOURNAL_STREAM`
//!   inherited by a process whose stderr goes elsewhere (`labagent run 2> file` from a
//!   service's shell) does not match, and is ignored;
//! - **a terminal**: timestamps and colour (`NO_COLOR` turns colour off);
//! - **anything else** (a pipe, a file): timestamps, no colour escapes.
//!
//! `RUST_LOG` overrides `[agent] log` with directives such as `labagent=debug,warn`
//! (`tracing_subscriber::filter::Targets`: targets and levels, no span filters).
//! Patient data is only ever logged at debug/trace (see the drivers).

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use labagent_config::LogLevel;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Where stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Terminal,
    Plain,
}

/// Whether `journal_stream` (`JOURNAL_STREAM`, `DEV:INODE` in decimal) names the file
/// whose device and inode are `dev` and `ino`.
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Where stderr goes, found once per process.
pub fn sink() -> Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    *SINK.get_or_init(|| {
        let stderr = std::io::stderr();
        if let Some(js) = std::env::var_os("JOURNAL_STREAM") {
            if let Ok(st) = rustix::fs::fstat(&stderr) {
                if journal_stream_matches(&js.to_string_lossy(), st.st_dev, st.st_ino) {
                    return Sink::Journal;
                }
            }
        }
        if stderr.is_terminal() {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    })
}

/// The syslog priority journald files a line of this level under.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `text` with `<N>` before every line (a trailing newline ends the last line).
pub fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        out.push('<');
        out.push(char::from(b'0' + priority.min(7)));
        out.push('>');
        out.push_str(line);
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Prints `text` (one or more lines) on stderr at `level`: what is printed before
/// logging starts or outside it (configuration errors, warnings).
pub fn print(level: Level, text: &str) {
    let out = match sink() {
        Sink::Journal => prefix_lines(priority(level), text),
        _ if text.ends_with('\n') => text.to_string(),
        _ => format!("{text}\n"),
    };
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

static LOGGING: AtomicBool = AtomicBool::new(false);

/// A fatal error, said once: through the log when it runs, else on stderr.
pub fn fatal(text: &str) {
    if LOGGING.load(Ordering::Relaxed) {
        tracing::error!("{text}");
    } else {
        print(Level::ERROR, &format!("labagent: {text}"));
    }
}

/// One event's bytes, written to stderr with their priority when the event is done.
pub struct JournalLine {
    priority: u8,
    buf: Vec<u8>,
}

impl Write for JournalLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for JournalLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let _ = std::io::stderr()
            .lock()
            .write_all(prefix_lines(self.priority, &text).as_bytes());
    }
}

/// Makes a [`JournalLine`] per event, with the event's priority.
pub struct JournalWriter;

impl<'a> MakeWriter<'a> for JournalWriter {
    type Writer = JournalLine;
    fn make_writer(&'a self) -> JournalLine {
        JournalLine {
            priority: 6,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> JournalLine {
        JournalLine {
            priority: priority(*meta.level()),
            buf: Vec::new(),
        }
    }
}

/// The filter: `RUST_LOG` if set (and valid), else `labagent=<level>,warn`.
pub fn filter(level: LogLevel, rust_log: Option<&str>) -> (Targets, Option<String>) {
    let default =
        || Targets::from_str(&format!("labagent={level},warn")).unwrap_or_else(|_| Targets::new());
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => (default(), None),
        Some(v) => match Targets::from_str(v) {
            Ok(t) => (t, None),
            Err(e) => (default(), Some(format!("RUST_LOG={v:?} ignored: {e}"))),
        },
    }
}

/// Whether colour escapes may be written: a terminal, and `NO_COLOR` unset or empty.
pub fn colour(sink: Sink, no_color: Option<&std::ffi::OsStr>) -> bool {
    sink == Sink::Terminal && no_color.map_or(true, |v| v.is_empty())
}

/// The `logs` command's ring: at most `info`, whatever the configured level.
fn ring<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use labagent::remote::logring;
    logring::RingLayer.with_filter(logring::filter())
}

pub fn init(level: LogLevel) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (targets, bad) = filter(level, rust_log.as_deref());
    let sink = sink();
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let r = match sink {
        Sink::Journal => tracing_subscriber::registry()
            .with(ring())
            .with(
                fmt.without_time()
                    .with_ansi(false)
                    .with_writer(JournalWriter)
                    .with_filter(targets),
            )
            .try_init(),
        Sink::Terminal | Sink::Plain => tracing_subscriber::registry()
            .with(ring())
            .with(
                fmt.with_ansi(colour(sink, std::env::var_os("NO_COLOR").as_deref()))
                    .with_writer(std::io::stderr)
                    .with_filter(targets),
            )
            .try_init(),
    };
    match r {
        Ok(()) => LOGGING.store(true, Ordering::Relaxed),
        Err(e) => print(
            Level::WARN,
            &format!("labagent: logging not initialised: {e}"),
        ),
    }
    if let Some(w) = bad {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_priority() {
        assert_eq!(prefix_lines(3, "one\n"), "<3>one\n");
        assert_eq!(prefix_lines(4, "a\nb\nc"), "<4>a\n<4>b\n<4>c\n");
        assert_eq!(
            prefix_lines(3, "f:1:1: bad key\nf:2:1: bad value\n"),
            "<3>f:1:1: bad key\n<3>f:2:1: bad value\n"
        );
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }

    #[test]
    fn journal_stream_must_name_fd_2() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches("8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("garbage", 8, 12345));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(Sink::Terminal, None));
        assert!(colour(Sink::Terminal, Some(OsStr::new(""))));
        assert!(!colour(Sink::Terminal, Some(OsStr::new("1"))));
        assert!(!colour(Sink::Plain, None));
        assert!(!colour(Sink::Journal, None));
    }

    #[test]
    fn rust_log_keeps_working_without_env_filter() {
        let (t, bad) = filter(LogLevel::Info, Some("labagent=debug,warn"));
        assert!(bad.is_none());
        assert!(t.would_enable("labagent::uplink::run", &Level::DEBUG));
        assert!(!t.would_enable("rumqttc", &Level::INFO));
        assert!(t.would_enable("rumqttc", &Level::WARN));
        let (t, bad) = filter(LogLevel::Info, None);
        assert!(bad.is_none());
        assert!(t.would_enable("labagent", &Level::INFO));
        assert!(!t.would_enable("labagent", &Level::DEBUG));
        let (t, bad) = filter(LogLevel::Warn, Some("labagent=lots"));
        assert!(bad.unwrap().contains("ignored"));
        assert!(t.would_enable("labagent", &Level::WARN));
        assert!(!t.would_enable("labagent", &Level::INFO));
    }
}
