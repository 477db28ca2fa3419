//! The CLI as a process: exit codes (one per kind of failure, 2 only for the config
//! file), `check-config` output and the secret of a systemd unit, `--help` on every
//! command, the man pages, `--version`, `status` without a secret.

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
        "2   the configuration file is missing or invalid",
        "64  bad command line",
        "72  no trusted root certificates",
        "check-config",
        "ports",
        "run",
        "/etc/labagent/config.toml",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?} in {r:?}");
    }
    // Every command's own --help, and `queue list --state` names its values.
    for args in [
        vec!["run"],
        vec!["check-config"],
        vec!["status"],
        vec!["monitor"],
        vec!["queue", "list"],
        vec!["queue", "show"],
        vec!["queue", "retry"],
        vec!["queue", "purge"],
        vec!["queue", "export"],
        vec!["demo"],
        vec!["simulate"],
    ] {
        let r = run(labagent().args(&args).arg("--help"));
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
    }
    let r = run(labagent().args(["queue", "list", "--help"]));
    for needle in [
        "--channel <NAME>",
        "--limit <N>",
        "pending",
        "delivered",
        "rejected",
        "incomplete",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?} in {r:?}");
    }
    let r = run(labagent().args(["queue", "retry", "--help"]));
    assert!(r.stdout.contains("The message id"), "{r:?}");
}

/// 2 is the configuration file only: a wrong command line is EX_USAGE (64), so systemd's
/// RestartPreventExitStatus=2 says exactly "fix the config".
#[test]
fn bad_command_line_exits_64() {
    let r = run(labagent().arg("no-such-command"));
    assert_eq!(r.code, Some(64), "{r:?}");
    let r = run(labagent().args(["queue", "list", "--state", "lost"]));
    assert_eq!(r.code, Some(64), "{r:?}");
    assert!(
        r.stderr.contains("pending"),
        "the valid values are named: {r:?}"
    );
}

#[test]
fn man_writes_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(labagent().arg("man").arg("--out").arg(dir.path()));
    assert_eq!(r.code, Some(0), "{r:?}");
    for page in ["labagent.1", "labagent-run.1", "labagent-queue-retry.1"] {
        let text = fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
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

/// A config for `run` with everything in `dir`; `uplink` replaces the [uplink] tables.
fn run_config(dir: &std::path::Path, uplink: &str, agent_extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[agent]\nid = \"exit-codes\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n{agent_extra}\n\
             {uplink}\n[[channel]]\nname = \"c\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{}\"\n",
            dir.join("state").display(),
            dir.join("status.sock").display(),
            labagent_tests::config::free_port()
        ),
    )
}

const PLAIN_UPLINK: &str = "[uplink]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n\
    allow_plain_http = true\n[uplink.auth]\nmethod = \"none\"\n";

/// `labagent run` that is expected to fail at start: (exit code, stderr).
fn run_fails(cfg: &std::path::Path, env: &[(&str, &std::path::Path)]) -> labagent_tests::Run {
    let mut cmd = labagent();
    cmd.args(["run", "--config"]).arg(cfg).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// No system CA store is an environment problem, not a configuration one: EX_OSFILE (72),
/// which systemd restarts (and ca-certificates, a dependency of the package, fixes); and a
/// plain-http site does not need a CA store at all.
#[test]
fn no_ca_store_is_72_and_only_matters_for_https() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-roots.pem");
    fs::write(&empty, "").unwrap();
    let empty_dir = dir.path().join("no-roots.d");
    fs::create_dir(&empty_dir).unwrap();
    let no_roots = [
        ("SSL_CERT_FILE", empty.as_path()),
        ("SSL_CERT_DIR", empty_dir.as_path()),
    ];
    let https = "[uplink]\nkind = \"http\"\nurl = \"https://127.0.0.1:9/x\"\n\
                 [uplink.auth]\nmethod = \"none\"\n";
    let cfg = run_config(dir.path(), https, "");
    let r = run_fails(&cfg, &no_roots);
    assert_eq!(r.code, Some(72), "{r:?}");
    assert!(r.stderr.contains("ca-certificates"), "{r:?}");
    // Said once, not twice.
    assert_eq!(
        r.stderr.matches("no trusted root certificates").count(),
        1,
        "{r:?}"
    );

    // The same environment with a plain-http uplink starts (and is stopped by us).
    let cfg = run_config(dir.path(), PLAIN_UPLINK, "");
    let mut cmd = labagent();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "labagent=info")
        .env("NO_COLOR", "1")
        .envs(no_roots)
        .stdout(std::process::Stdio::null());
    let mut agent = labagent_tests::process::AgentProcess::spawn(cmd);
    agent.wait_line(0, &["agent running"], std::time::Duration::from_secs(30));
    let st = agent.terminate(std::time::Duration::from_secs(30));
    assert!(st.success(), "{}", agent.log());
}

/// Each start-up failure its own code, each said once.
#[test]
fn start_failures_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // The state directory under a regular file: it cannot be created (EX_CANTCREAT).
    fs::write(dir.path().join("state"), "a file").unwrap();
    let cfg = run_config(dir.path(), PLAIN_UPLINK, "");
    let r = run_fails(&cfg, &[]);
    assert_eq!(r.code, Some(73), "{r:?}");
    assert_eq!(
        r.stderr
            .matches("cannot create the state directory")
            .count(),
        1,
        "{r:?}"
    );
    fs::remove_file(dir.path().join("state")).unwrap();

    // The metrics port is taken (EX_OSERR).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = run_config(dir.path(), PLAIN_UPLINK, &format!("metrics = \"{addr}\""));
    let r = run_fails(&cfg, &[]);
    assert_eq!(r.code, Some(71), "{r:?}");
    assert_eq!(
        r.stderr.matches("cannot listen for metrics").count(),
        1,
        "{r:?}"
    );

    // A broken config file is 2, and only that is 2.
    fs::write(&cfg, "[agent]\nid = \"x\"\nbogus = 1\n").unwrap();
    let r = run_fails(&cfg, &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

/// A config whose secret only the service will have (LoadCredential=): `basic` auth,
/// no secret source.
fn config_without_secret(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(
        dir,
        &MINIMAL
            .replace(
                "state_dir = \"/var/lib/labagent\"",
                &format!(
                    "state_dir = \"{}\"\nstatus_socket = \"{}\"",
                    dir.join("state").display(),
                    dir.join("status.sock").display()
                ),
            )
            .replace(
                "method = \"none\"",
                "method = \"basic\"\nclient_id = \"lab\"",
            ),
    )
}

/// `status` and `queue` need no secret: under LoadCredential= it exists only inside the
/// service.
#[test]
fn status_and_queue_need_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_without_secret(dir.path());
    let r = run(labagent().args(["status", "--config"]).arg(&cfg));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot reach the agent"), "{r:?}");
    assert!(!r.stderr.contains("client secret"), "{r:?}");
    let r = run(labagent().args(["queue", "list", "--config"]).arg(&cfg));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("(no messages)"), "{r:?}");
    // `run` does need it.
    let r = run(labagent().args(["run", "--config"]).arg(&cfg));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("needs a client secret"), "{r:?}");
}

/// `check-config` outside the service: the unit's LoadCredential=client_secret:… says
/// where the secret will come from; a missing credential file or no such line is an error
/// that says so.
#[test]
fn check_config_reads_the_units_credential() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_without_secret(dir.path());
    let secret = dir.path().join("credstore-secret");
    let unit = dir.path().join("labagent.service");
    fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=x\n[Service]\nExecStart=/usr/bin/labagent run\n\
             LoadCredential=client_secret:{}\n",
            secret.display()
        ),
    )
    .unwrap();
    let check = || {
        run(labagent()
            .args(["check-config", "--config"])
            .arg(&cfg)
            .arg("--unit")
            .arg(&unit))
    };

    // Configured, but the file is missing: an error naming it.
    let r = check();
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("needs a client secret"), "{r:?}");
    assert!(r.stderr.contains(&secret.display().to_string()), "{r:?}");

    // There: valid, and the effective settings say where the secret will come from.
    fs::write(&secret, "s3cr3t-from-credstore\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let r = check();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "# client_secret: [from systemd credential client_secret, which {} loads from {} (LoadCredential=)]",
            unit.display(),
            secret.display()
        )),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains("s3cr3t") && !r.stderr.contains("s3cr3t"),
        "{r:?}"
    );

    // A unit without the line: the usual error, and why the unit does not help.
    fs::write(&unit, "[Service]\nExecStart=/usr/bin/labagent run\n").unwrap();
    let r = check();
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("has no LoadCredential=client_secret"),
        "{r:?}"
    );
}
