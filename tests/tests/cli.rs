//! The CLI as a process: exit codes, `check-config` output, `--help`, `--version`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use labagent_tests::{labagent, repo_path, run};

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    fs::write(&p, text).unwrap();
    p
}

const MINIMAL: &str = r#"
[agent]
id = "chem-lab-1"
state_dir = "/var/lib/labagent"

[uplink]
kind = "http"
url = "https://ingest.example.org/messages"

[uplink.auth]
method = "none"

[[channel]]
name = "cobas-e411"
protocol = "astm"
listen = "127.0.0.1:15000"
"#;

#[test]
fn version_prints_the_crate_version() {
    let r = run(labagent().arg("--version"));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{r:?}");
}

#[test]
fn help_documents_the_exit_codes_and_commands() {
    let r = run(labagent().arg("--help"));
    assert_eq!(r.code, Some(0), "{r:?}");
    for needle in [
        "Exit codes:",
        "2   configuration error",
        "check-config",
        "ports",
        "run",
        "/etc/labagent/config.toml",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?} in {r:?}");
    }
}

#[test]
fn bad_command_line_exits_2() {
    let r = run(labagent().arg("no-such-command"));
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let r = run(labagent()
        .args(["check-config", "--config"])
        .arg(repo_path("cross/config.toml"))
        .env("LABAGENT_CLIENT_SECRET", "not-a-real-secret-7f3a"));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("[agent]"), "{r:?}");
    assert!(
        !r.stdout.contains("not-a-real-secret-7f3a")
            && !r.stderr.contains("not-a-real-secret-7f3a"),
        "the secret must never be printed: {r:?}"
    );
}

#[test]
fn check_config_prints_defaults_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), MINIMAL);
    let r = run(labagent().arg("check-config").arg("--config").arg(&cfg));
    assert_eq!(r.code, Some(0), "{r:?}");
    // Defaults from CONFIG.md that the file did not set.
    for needle in [
        "when_full = \"refuse\"",
        "keep_delivered",
        "receive_timeout",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?}: {r:?}");
    }
}

#[test]
fn check_config_on_a_typo_names_file_line_column_and_the_closest_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("listen = ", "baud_rate = 9600\nlisten = ");
    let cfg = write_config(dir.path(), &text);
    let r = run(labagent().arg("check-config").arg("--config").arg(&cfg));
    assert_eq!(r.code, Some(2), "{r:?}");
    let line = text
        .lines()
        .position(|l| l.starts_with("baud_rate"))
        .unwrap()
        + 1;
    let prefix = format!("{}:{line}:1: ", cfg.display());
    assert!(r.stderr.contains(&prefix), "expected {prefix:?} in {r:?}");
    assert!(r.stderr.contains("did you mean \"baud\"?"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn check_config_on_a_missing_file_exits_2() {
    let r = run(labagent().args(["check-config", "--config", "/nonexistent/labagent.toml"]));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("/nonexistent/labagent.toml"), "{r:?}");
}

#[test]
fn check_config_refuses_a_world_readable_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client_secret");
    fs::write(&secret, "s3cr3t-value").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let text = MINIMAL.replace(
        "method = \"none\"",
        &format!(
            "method = \"basic\"\nclient_id = \"lab\"\nclient_secret_file = \"{}\"",
            secret.display()
        ),
    );
    let cfg = write_config(dir.path(), &text);
    let r = run(labagent().arg("check-config").arg("--config").arg(&cfg));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("client_secret_file"), "{r:?}");
    assert!(!r.stderr.contains("s3cr3t-value"), "{r:?}");

    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(labagent().arg("check-config").arg("--config").arg(&cfg));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains("s3cr3t-value"), "{r:?}");
    assert!(
        r.stdout.contains(&secret.display().to_string()),
        "source shown: {r:?}"
    );
}

#[test]
fn ports_runs_on_any_host() {
    let r = run(labagent().arg("ports"));
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn status_monitor_and_queue_without_a_running_agent_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    for args in [vec!["status"], vec!["monitor", "chem"]] {
        let r = run(labagent().args(&args).arg("--socket").arg(&sock));
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("cannot reach the agent") && r.stderr.contains("is it running"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // A stale socket file (the agent was killed): the same clear answer, not a hang.
    std::os::unix::net::UnixListener::bind(&sock)
        .map(drop)
        .unwrap();
    let r = run(labagent().args(["status", "--socket"]).arg(&sock));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach the agent"), "{}", r.stderr);
}
