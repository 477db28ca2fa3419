//! The `process_*` metrics every Prometheus client library exports, read from
//! `/proc/self` (which the unit's `ProcSubset=pid` keeps visible).
//!
//! `process_start_time_seconds` is the agent's own start (taken as it starts, within
//! milliseconds of exec): the kernel's start time is in ticks since boot, and the boot
//! time is in `/proc/stat`, which `ProcSubset=pid` hides.

use std::fmt::Write;

/// One reading; `None` where `/proc` did not answer (the sample is then left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Reads this process's figures.
pub fn read() -> ProcessStats {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let mut p = stat.as_deref().map(parse_stat).unwrap_or_default();
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    p.max_fds = limit.current;
    p
}

/// `/proc/self/stat` (proc(5)): utime (14), stime (15), vsize (23), rss (24). The command
/// name (2) may hold spaces and parentheses: fields are counted after its last `)`.
fn parse_stat(text: &str) -> ProcessStats {
    let Some((_, rest)) = text.rsplit_once(')') else {
        return ProcessStats::default();
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    ProcessStats {
        cpu_seconds: match (field(14), field(15)) {
            (Some(u), Some(s)) if ticks > 0.0 => Some((u + s) as f64 / ticks),
            _ => None,
        },
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|p| p * page),
        open_fds: None,
        max_fds: None,
    }
}

impl ProcessStats {
    /// The `process_*` families, `start_unix` the start time in Unix seconds.
    pub fn render(&self, o: &mut String, start_unix: f64) {
        let mut one = |name: &str, kind: &str, help: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(o, "# HELP process_{name} {help}");
                let _ = writeln!(o, "# TYPE process_{name} {kind}");
                let _ = writeln!(o, "process_{name} {v}");
            }
        };
        one(
            "cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        one(
            "open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        one(
            "max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v.to_string()),
        );
        one(
            "virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.map(|v| v.to_string()),
        );
        one(
            "resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|v| v.to_string()),
        );
        one(
            "start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            Some(format!("{start_unix:.3}")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_odd_command_name() {
        // pid (comm) state ppid ... utime=14 stime=15 ... vsize=23 rss=24
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[14 - 3] = "250".into();
        fields[15 - 3] = "50".into();
        fields[23 - 3] = "123456789".into();
        fields[24 - 3] = "1000".into();
        let text = format!("4242 (a) b (c)) {}", fields.join(" "));
        let p = parse_stat(&text);
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(p.cpu_seconds, Some(300.0 / ticks));
        assert_eq!(p.virtual_bytes, Some(123_456_789));
        assert_eq!(
            p.resident_bytes,
            Some(1000 * rustix::param::page_size() as u64)
        );
        assert_eq!(parse_stat("garbage"), ProcessStats::default());
    }

    #[test]
    fn reads_this_process() {
        let p = read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3, "{p:?}");
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap());
        let mut o = String::new();
        p.render(&mut o, 1_795_877_987.5);
        assert!(
            o.contains("process_start_time_seconds 1795877987.500\n"),
            "{o}"
        );
        assert!(
            o.contains("# TYPE process_cpu_seconds_total counter"),
            "{o}"
        );
    }
}
