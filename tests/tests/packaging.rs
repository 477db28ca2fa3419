//! The Debian package and the systemd unit (cross/, docs/PACKAGING.md).
//!
//! One .deb (amd64) is built from the dev binary the suite already has and inspected with
//! dpkg-deb: file list, owners and modes, the conffile, the unit, the maintainer scripts
//! (`sh -n`, then run against stub commands to show an upgrade never touches the store).
//! The unit must keep its hardening: `systemd-analyze security --offline=true` exposure
//! at most 2.0, every directive of issue 9 present, `systemd-analyze verify` silent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use labagent_tests::{repo_path, Run};

const MAX_EXPOSURE: f64 = 2.0;

fn run(cmd: &mut Command) -> Run {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run::from(out)
}

fn ok(cmd: &mut Command) -> String {
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{cmd:?} failed: {r:?}");
    r.stdout
}

/// The amd64 .deb of the dev build, built once for all tests of this file.
fn deb() -> &'static Path {
    static DEB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DEB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        ok(Command::new(repo_path("cross/deb"))
            .arg("amd64")
            .arg("--bin")
            .arg(labagent_tests::labagent_bin())
            .arg("--out")
            .arg(dir.path())
            .arg("--fast"));
        let deb = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("cross/deb wrote no .deb");
        (dir, deb)
    })
    .1
}

/// `dpkg-deb -c`: path -> (mode string, owner/group).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5]
                .trim_start_matches('.')
                .trim_end_matches('/')
                .to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

#[test]
fn deb_has_the_files_owners_modes_and_conffile() {
    let deb = deb();
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_amd64.deb"),
        "{}",
        deb.display()
    );
    let field = |f: &str| {
        ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "labagent");
    assert_eq!(field("Architecture"), "amd64");
    let depends = field("Depends");
    assert!(
        depends.contains("adduser") && depends.contains("libc6 (>= 2."),
        "{depends}"
    );

    let c = contents(deb);
    let expect = [
        ("/usr/bin/labagent", "-rwxr-xr-x"),
        ("/etc/labagent", "drwxr-xr-x"),
        ("/etc/labagent/config.toml", "-rw-r-----"),
        ("/lib/systemd/system/labagent.service", "-rw-r--r--"),
        (
            "/usr/share/doc/labagent/examples/99-labagent-serial.rules",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/labagent/copyright", "-rw-r--r--"),
        ("/usr/share/doc/labagent/PACKAGING.md", "-rw-r--r--"),
    ];
    for (path, mode) in expect {
        let (m, owner) = c
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the .deb: {c:#?}"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    // Nothing under the state directory: the store is never shipped or replaced.
    assert!(
        !c.keys().any(|p| p.starts_with("/var")),
        "the package ships nothing under /var: {c:#?}"
    );

    let x = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    let read = |p: &str| std::fs::read(x.path().join(p)).unwrap();
    assert_eq!(
        read("etc/labagent/config.toml"),
        std::fs::read(repo_path("cross/config.toml")).unwrap(),
        "the shipped config is cross/config.toml"
    );
    assert_eq!(
        read("lib/systemd/system/labagent.service"),
        std::fs::read(repo_path("cross/labagent.service")).unwrap()
    );
    let rules = String::from_utf8(read(
        "usr/share/doc/labagent/examples/99-labagent-serial.rules",
    ))
    .unwrap();
    assert!(rules.contains("ENV{ID_MM_DEVICE_IGNORE}=\"1\""), "{rules}");
    assert!(rules.contains("SYMLINK+="), "{rules}");
    // The packaged binary is stripped (it was the dev build with debug info).
    let sections = ok(Command::new("readelf")
        .arg("-S")
        .arg(x.path().join("usr/bin/labagent")));
    assert!(!sections.contains(".debug_info"), "binary not stripped");

    let ctl = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(ctl.path()));
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles")).unwrap(),
        "/etc/labagent/config.toml\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = ctl.path().join(s);
        let mode = std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{s}");
        ok(Command::new("sh").arg("-n").arg(&p));
    }
}

/// Runs a maintainer script with PATH holding only stubs that log their arguments (and
/// the few read-only tools the scripts use), so nothing on this machine changes. Returns
/// the logged calls, one per line.
fn run_script(script: &str, args: &[&str], user_exists: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("calls");
    let stub = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    stub("getent", if user_exists { "exit 0" } else { "exit 2" });
    stub(
        "id",
        if user_exists {
            "echo labagent dialout"
        } else {
            "echo labagent"
        },
    );
    stub("dpkg-statoverride", "exit 1");
    for name in ["adduser", "chown", "chmod", "install", "systemctl", "rmdir"] {
        stub(name, "exit 0");
    }
    for tool in ["tr", "grep", "cat"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    let r = run(Command::new("/bin/sh")
        .arg(repo_path(&format!("cross/debian/{script}")))
        .args(args)
        .env_clear()
        .env("PATH", &bin));
    assert_eq!(r.code, Some(0), "{script} {args:?}: {r:?}");
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn maintainer_scripts_create_the_user_once_and_never_touch_the_store_on_upgrade() {
    // First install: the system user in dialout, the config's group and mode.
    let fresh = run_script("postinst", &["configure"], false);
    let has = |calls: &[String], c: &str| calls.iter().any(|l| l == c);
    assert!(
        fresh
            .iter()
            .any(|l| l.starts_with("adduser --system") && l.ends_with(" labagent")),
        "{fresh:?}"
    );
    assert!(has(&fresh, "adduser labagent dialout"), "{fresh:?}");
    assert!(
        has(&fresh, "chown root:labagent /etc/labagent/config.toml"),
        "{fresh:?}"
    );
    assert!(
        has(&fresh, "chmod 0640 /etc/labagent/config.toml"),
        "{fresh:?}"
    );
    if !Path::new("/var/lib/labagent").exists() {
        assert!(
            has(&fresh, "install -d -m 0700 /var/lib/labagent")
                && has(&fresh, "chown labagent:labagent /var/lib/labagent"),
            "{fresh:?}"
        );
    }

    // Upgrade from 0.0.9: the conffile's group is set again (dpkg unpacks a new version
    // root:root), nothing else; above all nothing about /var/lib/labagent.
    let upgrade = run_script("postinst", &["configure", "0.0.9-1"], true);
    assert!(
        has(&upgrade, "chown root:labagent /etc/labagent/config.toml"),
        "{upgrade:?}"
    );
    assert!(
        !upgrade.iter().any(|l| l.starts_with("adduser")),
        "{upgrade:?}"
    );
    for (script, args) in [
        ("prerm", vec!["upgrade", "0.1.0-1"]),
        ("postrm", vec!["upgrade", "0.1.0-1"]),
        ("postinst", vec!["configure", "0.0.9-1"]),
    ] {
        let calls = run_script(script, &args, true);
        assert!(
            !calls.iter().any(|l| l.contains("/var/lib/labagent")),
            "{script} {args:?} touched the store: {calls:?}"
        );
        if script != "postinst" {
            assert!(
                !calls.iter().any(|l| l.starts_with("systemctl")),
                "{script} {args:?} must not stop the agent on upgrade: {calls:?}"
            );
        }
    }
    // Removal stops and disables the service; purge keeps the store.
    let remove = run_script("prerm", &["remove"], true);
    assert!(
        remove
            .iter()
            .any(|l| l.contains("disable labagent.service")),
        "{remove:?}"
    );
    let purge = run_script("postrm", &["purge"], true);
    assert!(
        !purge.iter().any(|l| l.contains("/var/lib/labagent")),
        "{purge:?}"
    );
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_path("cross/labagent.service")).unwrap()
}

#[test]
fn unit_exposure_is_at_most_2() {
    let r = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_path("cross/labagent.service")));
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line: {r:?}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    eprintln!("{line}");
    assert!(
        level <= MAX_EXPOSURE,
        "exposure {level} > {MAX_EXPOSURE}:\n{}",
        r.stdout
    );
}

#[test]
fn unit_keeps_every_hardening_directive() {
    let unit = unit_text();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=labagent",
        "StateDirectoryMode=0700",
        "ConfigurationDirectory=labagent",
        "RuntimeDirectory=labagent",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyS rw",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "SupplementaryGroups=dialout",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "User=labagent",
        "ExecStart=/usr/bin/labagent run --config /etc/labagent/config.toml",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from the unit");
    }
    for prefix in ["WatchdogSec=", "LoadCredential=client_secret:"] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "{prefix} missing from the unit"
        );
    }
}

#[test]
fn unit_verifies_cleanly() {
    // verify wants ExecStart= to exist: point it at the dev build, keep everything else.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("labagent.service");
    std::fs::write(
        &unit,
        unit_text().replace(
            "ExecStart=/usr/bin/labagent",
            &format!("ExecStart={}", labagent_tests::labagent_bin().display()),
        ),
    )
    .unwrap();
    let r = run(Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&unit));
    assert_eq!(r.code, Some(0), "{r:?}");
    // Unknown keys or bad values are only warnings: there must be none.
    assert!(r.stderr.trim().is_empty(), "{r:?}");
}
