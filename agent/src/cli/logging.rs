//! Log output: plain lines without timestamps when stderr goes to journald (it adds its
//! own), human-friendly with timestamps on a terminal. `RUST_LOG` overrides `agent.log`.
//! Patient data is only ever logged at debug/trace (see the drivers).

use labagent_config::LogLevel;
use tracing_subscriber::EnvFilter;

pub fn init(level: LogLevel) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("labagent={level},warn")));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let r = if journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = r {
        eprintln!("labagent: logging not initialised: {e}");
    }
}
