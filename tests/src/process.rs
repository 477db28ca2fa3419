//! The real `labagent run` as a child process: stderr lines are collected so a test can
//! wait for an event ("port open", "listening"), and the process is ended by its pid
//! when the guard drops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// A running agent.
pub struct AgentProcess {
    child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// Set for a wrapper such as `strace -f labagent …`: signals go to the wrapper's
    /// child (strace detaches on SIGTERM and would leave the agent running).
    wrapped: bool,
}

impl AgentProcess {
    /// `labagent run --config <config>` with `RUST_LOG` set for the events tests wait on.
    pub fn start(config: &Path) -> AgentProcess {
        let mut cmd = crate::labagent();
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "labagent=debug,warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Self::spawn(cmd)
    }

    /// Any command whose stderr is watched.
    pub fn spawn(mut cmd: std::process::Command) -> AgentProcess {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start labagent");
        let err = child.stderr.take().unwrap();
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("LABAGENT_TEST_ECHO").is_some() {
                    eprintln!("agent: {line}");
                }
                l.0.lock().unwrap().push(line);
                l.1.notify_all();
            }
            l.0.lock().unwrap().push("<stderr closed>".into());
            l.1.notify_all();
        });
        AgentProcess {
            child,
            lines,
            wrapped: false,
        }
    }

    /// Like [`spawn`](Self::spawn) for a command that runs the agent as its child
    /// (`strace -f labagent …`): signals are sent to that child by its pid.
    pub fn spawn_wrapped(cmd: std::process::Command) -> AgentProcess {
        let mut p = Self::spawn(cmd);
        p.wrapped = true;
        p
    }

    /// The pids of the wrapper's children, from `/proc/<pid>/task/<pid>/children`.
    fn wrapped_children(&self) -> Vec<i32> {
        let id = self.child.id();
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn log(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    /// Number of stderr lines so far (to wait for a *new* line after this point).
    pub fn mark(&self) -> usize {
        self.lines.0.lock().unwrap().len()
    }

    /// Waits for a stderr line after line `from` containing every one of `parts`.
    pub fn wait_line(&self, from: usize, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines
                .iter()
                .skip(from)
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || lines.last().is_some_and(|l| l == "<stderr closed>") {
                panic!(
                    "no log line with {parts:?} within {timeout:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::Term);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= deadline {
                self.signal(Signal::Kill);
                panic!(
                    "labagent did not stop within {timeout:?} after SIGTERM; log:\n{}",
                    self.log()
                );
            }
            // No exit event to wait on for a child we also read from: poll in short steps.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL now (a crash or power cut, as far as the process can tell).
    pub fn kill(&mut self) {
        self.signal(Signal::Kill);
        let _ = self.child.wait();
    }

    fn signal(&self, s: Signal) {
        let mut pids = vec![self.child.id() as i32];
        if self.wrapped {
            // The agent first; the wrapper itself only on SIGKILL (it exits with the agent).
            pids = self.wrapped_children();
            if s == Signal::Kill {
                pids.push(self.child.id() as i32);
            }
        }
        for pid in pids.into_iter().filter_map(Pid::from_raw) {
            let _ = kill_process(pid, s);
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::Kill);
            let _ = self.child.wait();
        }
    }
}
