//! labagent-tests: helpers for end-to-end tests of the real `labagent` binary.
//!
//! The binary lives in another package, so cargo's `CARGO_BIN_EXE_*` does not reach it;
//! the README's test command builds every binary first and we find it next to our own
//! test executable (`target/<profile>/deps/..`).

pub mod config;
pub mod fhir_server;
pub mod fleet;
pub mod http;
pub mod mosquitto;
pub mod process;
/// The pty helper is product code (`labagent simulate --pty-link`); tests use the same file.
#[path = "../../agent/src/simulate/pty.rs"]
pub mod pty;
pub mod strace;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tokio runtime like the agent's (multi-thread, 2 workers: the cores of the target
/// machines), for tests and benchmarks that run agent parts in process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Path of the `labagent` binary built for the same profile as the running test.
pub fn labagent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LABAGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in target/<profile>/deps, the bench binary in target/<profile>.
    let dir = exe.parent().expect("executable has a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let bin = profile_dir.join("labagent");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p labagent`), as tests/run.sh does",
        bin.display()
    );
    bin
}

/// Path of a file in the repository, from the root.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A `Command` for the labagent binary with a clean environment for the variables it
/// reads, so a developer's shell cannot change a test's outcome.
pub fn labagent() -> Command {
    let mut c = Command::new(labagent_bin());
    for var in [
        "LABAGENT_CONFIG",
        "LABAGENT_CLIENT_SECRET",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "RUST_LOG",
        // A proxy in the developer's or CI's environment must not route loopback tests.
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        c.env_remove(var);
    }
    c
}

/// Output as text, for readable assertion messages.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the command to completion.
pub fn run(cmd: &mut Command) -> Run {
    cmd.output().expect("spawn labagent").into()
}
