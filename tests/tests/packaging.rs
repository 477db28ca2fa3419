//! The Debian package and the systemd unit (cross/, docs/PACKAGING.md).
//!
//! One .deb (amd64) is built from the dev binary the suite already has and inspected with
//! dpkg-deb: file list, owners and modes, the conffile, the unit, the manual pages, the
//! changelog, the maintainer scripts (`sh -n`, then run against stub commands to show an
//! upgrade never touches the store). lintian finds nothing that is not overridden with a
//! reason. A second revision is built, and install → upgrade → remove → purge run with the
//! real dpkg in a throwaway overlay of this machine (`tests/deb_lifecycle.sh`).
//! The unit must keep its hardening: `systemd-analyze security --offline=true` exposure
//! at most 2.0, every directive of issue 9 present, `systemd-analyze verify` silent; and
//! its system call filter, evaluated from `systemd-analyze syscall-filter`, must let the
//! clock-sync flag's `adjtimex` through.

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

/// Builds the amd64 .deb of the dev build with Debian revision `revision` into `dir`.
fn build_deb(dir: &Path, revision: u32) -> PathBuf {
    ok(Command::new(repo_path("cross/deb"))
        .arg("amd64")
        .arg("--bin")
        .arg(labagent_tests::labagent_bin())
        .arg("--out")
        .arg(dir)
        .arg("--fast")
        .args(["--revision", &revision.to_string()]));
    let suffix = format!("-{revision}_amd64.deb");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))
        .expect("cross/deb wrote no .deb")
}

/// The amd64 .deb of the dev build (`cross/deb amd64 --bin PATH`, nothing else), built
/// once for all tests of this file.
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
        depends.contains("adduser")
            && depends.contains("libc6 (>= 2.")
            && depends.contains("ca-certificates"),
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
        ("/usr/share/doc/labagent/changelog.Debian.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/labagent.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/labagent-run.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/labagent-queue-list.1.gz", "-rw-r--r--"),
        ("/usr/share/lintian/overrides/labagent", "-rw-r--r--"),
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
    // The manual page comes from the packaged binary's clap definitions, gzip -9n (no name,
    // no time stamp: reproducible), and documents the exit codes.
    let gunzip = |p: &str| {
        let gz = read(p);
        assert_eq!(&gz[..2], b"\x1f\x8b", "{p} is not gzip");
        assert_eq!(
            &gz[4..8],
            &[0, 0, 0, 0],
            "{p}: gzip time stamp set (use gzip -n)"
        );
        ok(Command::new("gzip").args(["-dc"]).arg(x.path().join(p)))
    };
    let man = gunzip("usr/share/man/man1/labagent.1.gz");
    assert!(man.contains(".TH labagent 1"), "{man}");
    assert!(
        man.contains("EXIT STATUS") && man.contains("\\fB72\\fR"),
        "{man}"
    );
    let changelog = gunzip("usr/share/doc/labagent/changelog.Debian.gz");
    let version = field("Version");
    assert!(
        changelog.starts_with(&format!("labagent ({version}) ")),
        "changelog does not start with the package version {version}: {changelog}"
    );
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
/// the logged calls, one per line. `enabled`: what `deb-systemd-helper was-enabled` says.
fn run_script(script: &str, args: &[&str], user_exists: bool, enabled: bool) -> Vec<String> {
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
    stub(
        "deb-systemd-helper",
        &format!(
            "case \"$*\" in *was-enabled*) exit {};; esac; exit 0",
            if enabled { 0 } else { 1 }
        ),
    );
    for name in [
        "adduser",
        "chown",
        "chmod",
        "install",
        "systemctl",
        "rmdir",
        "deb-systemd-invoke",
    ] {
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

/// What the scripts call, whatever this machine has installed (the lifecycle test below
/// runs them for real): the service is never enabled or started by the package, an
/// upgrade never touches the store, removal masks, purge cleans up the unit's symlinks.
#[test]
fn maintainer_scripts_never_enable_or_start_and_never_touch_the_store_on_upgrade() {
    let has = |calls: &[String], c: &str| calls.iter().any(|l| l == c);
    let fresh = run_script("postinst", &["configure"], false, false);
    assert!(
        fresh
            .iter()
            .any(|l| l.starts_with("adduser --system") && l.ends_with(" labagent")),
        "{fresh:?}"
    );
    assert!(has(&fresh, "adduser labagent dialout"), "{fresh:?}");
    assert!(
        has(&fresh, "deb-systemd-helper update-state labagent.service"),
        "the unit's symlinks are tracked for purge: {fresh:?}"
    );
    if !Path::new("/var/lib/labagent").exists() {
        assert!(
            has(&fresh, "install -d -m 0700 /var/lib/labagent")
                && has(&fresh, "chown labagent:labagent /var/lib/labagent"),
            "{fresh:?}"
        );
    }
    // Not enabled by the admin: nothing enables it. Enabled: the enablement is renewed.
    for (enabled, calls) in [
        (false, run_script("postinst", &["configure"], true, false)),
        (
            false,
            run_script("postinst", &["configure", "0.0.9-1"], true, false),
        ),
        (
            true,
            run_script("postinst", &["configure", "0.0.9-1"], true, true),
        ),
    ] {
        assert_eq!(
            has(&calls, "deb-systemd-helper enable labagent.service"),
            enabled,
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|l| l.contains(" start")
                || l.starts_with("systemctl enable")
                || l.contains("--now")),
            "the package never starts or enables the service: {calls:?}"
        );
    }

    // Upgrade: nothing about /var/lib/labagent, no user created, prerm stops nothing.
    let upgrade = run_script("postinst", &["configure", "0.0.9-1"], true, true);
    assert!(
        !upgrade.iter().any(|l| l.starts_with("adduser")),
        "{upgrade:?}"
    );
    for (script, args) in [
        ("prerm", vec!["upgrade", "0.1.0-1"]),
        ("postrm", vec!["upgrade", "0.1.0-1"]),
        ("postinst", vec!["configure", "0.0.9-1"]),
    ] {
        let calls = run_script(script, &args, true, true);
        assert!(
            !calls.iter().any(|l| l.contains("/var/lib/labagent")),
            "{script} {args:?} touched the store: {calls:?}"
        );
        if script != "postinst" {
            assert!(
                calls.is_empty(),
                "{script} {args:?} must do nothing on upgrade: {calls:?}"
            );
        }
    }
    // Removal masks the unit (its file is gone); purge removes the tracked symlinks and
    // keeps the store.
    let remove = run_script("postrm", &["remove"], true, true);
    assert!(
        has(&remove, "deb-systemd-helper mask labagent.service"),
        "{remove:?}"
    );
    let purge = run_script("postrm", &["purge"], true, true);
    assert!(
        has(&purge, "deb-systemd-helper purge labagent.service")
            && has(&purge, "deb-systemd-helper unmask labagent.service"),
        "{purge:?}"
    );
    assert!(
        !purge.iter().any(|l| l.contains("/var/lib/labagent")),
        "{purge:?}"
    );
}

/// lintian on the package: no error, and every warning (pedantic and informational tags
/// too) fixed or overridden in cross/debian/lintian-overrides with its reason.
#[test]
fn lintian_is_clean() {
    let r = run(Command::new("lintian")
        .args(["--tag-display-limit", "0", "-I", "-E", "--pedantic"])
        .arg(deb()));
    let tags: Vec<&str> = r
        .stdout
        .lines()
        .chain(r.stderr.lines())
        .filter(|l| {
            ["E:", "W:", "I:", "P:", "X:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(tags.is_empty(), "lintian: {tags:#?}\n{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
    // The overrides are used (a stale one would be reported as unused-override).
    let o = ok(Command::new("lintian")
        .args([
            "--tag-display-limit",
            "0",
            "-I",
            "-E",
            "--pedantic",
            "--show-overrides",
        ])
        .arg(deb()));
    let overridden = o.lines().filter(|l| l.starts_with("O:")).count();
    let x = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(x.path()));
    let listed = std::fs::read_to_string(x.path().join("usr/share/lintian/overrides/labagent"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("labagent:"))
        .count();
    assert_eq!(overridden, listed, "{o}");
}

/// `key: value` lines of tests/deb_lifecycle.sh's output, per step.
fn lifecycle_states(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut steps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut step = String::new();
    for l in out.lines() {
        if let Some(s) = l.strip_prefix("== ") {
            step = s.to_string();
            steps.entry(step.clone()).or_default();
        } else if l.starts_with("| ") || l.starts_with("-- ") {
            // a command and its output
        } else if let Some((k, v)) = l.split_once(": ") {
            if let Some(m) = steps.get_mut(&step) {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    steps
}

/// install → upgrade → remove → purge with the real dpkg and maintainer scripts, in an
/// overlay of this machine (nothing here changes): behaves as dh_installsystemd
/// --no-enable --no-start would, keeps the admin's config edits and enablement across an
/// upgrade, survives a deleted config, keeps the store and the user on purge.
#[test]
fn install_upgrade_remove_purge() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the lifecycle test runs dpkg in a private mount namespace: it needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let old = build_deb(dir.path(), 1);
    let new = build_deb(dir.path(), 2);
    let work = dir.path().join("sandbox");
    std::fs::create_dir(&work).unwrap();
    let out = ok(Command::new(repo_path("tests/deb_lifecycle.sh"))
        .arg(&work)
        .arg(&old)
        .arg(&new));
    let st = lifecycle_states(&out);
    let get = |step: &str, key: &str| -> &str {
        st.get(step)
            .and_then(|m| m.get(key))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key} after {step}:\n{out}"))
    };
    for step in [
        "install",
        "admin",
        "upgrade",
        "reinstall-without-config",
        "remove",
        "purge",
    ] {
        assert_eq!(
            get(step, "rc"),
            "0",
            "the command before {step} failed:\n{out}"
        );
    }
    assert_eq!(get("before", "package"), "none", "{out}");
    // Installed: user in dialout, config 0640 root:labagent, store dir private, man page,
    // and the service neither enabled nor started.
    assert_eq!(get("install", "package"), "install ok installed 0.1.0-1");
    assert_eq!(
        get("install", "user"),
        "labagent:/var/lib/labagent:/usr/sbin/nologin"
    );
    assert!(get("install", "groups").split(' ').any(|g| g == "dialout"));
    assert_eq!(get("install", "config"), "640 root:labagent");
    assert_eq!(get("install", "state-dir"), "700 labagent:labagent");
    assert_eq!(get("install", "unit"), "present");
    assert_eq!(get("install", "man"), "present");
    assert_eq!(
        get("install", "enabled"),
        "no",
        "the package must not enable it:\n{out}"
    );
    assert_eq!(get("install", "binary"), "labagent 0.1.0");
    // The admin enabled it and edited the config: the upgrade keeps both, and the store.
    assert_eq!(get("admin", "enabled"), "yes", "{out}");
    assert_eq!(get("upgrade", "package"), "install ok installed 0.1.0-2");
    assert_eq!(get("upgrade", "enabled"), "yes");
    assert_eq!(get("upgrade", "config-edited"), "1");
    assert_eq!(get("upgrade", "config"), "640 root:labagent");
    assert_eq!(get("upgrade", "store-file"), "present");
    // A deleted config does not make configure fail (and stays deleted).
    assert_eq!(get("reinstall-without-config", "config"), "absent");
    // Removed: binary and unit gone, the unit masked, config and store kept.
    assert_eq!(
        get("remove", "package"),
        "deinstall ok config-files 0.1.0-2"
    );
    assert_eq!(get("remove", "binary"), "absent");
    assert_eq!(get("remove", "unit"), "absent");
    assert_eq!(get("remove", "masked"), "yes");
    assert_eq!(get("remove", "config-edited"), "1");
    assert_eq!(get("remove", "store-file"), "present");
    // Purged: config, /etc/labagent, the symlinks and the mask gone; the store and the
    // system user kept, and the script says so.
    assert_eq!(get("purge", "package"), "none");
    assert_eq!(get("purge", "config"), "absent");
    assert_eq!(get("purge", "etc-dir"), "absent");
    assert_eq!(get("purge", "enabled"), "no");
    assert_eq!(get("purge", "masked"), "no");
    assert_eq!(get("purge", "store-file"), "present");
    assert_eq!(
        get("purge", "user"),
        "labagent:/var/lib/labagent:/usr/sbin/nologin"
    );
    assert!(
        out.contains("the message store /var/lib/labagent was kept"),
        "{out}"
    );
    // And this machine was not touched.
    assert!(
        !Path::new("/lib/systemd/system/labagent.service").exists()
            || run(Command::new("dpkg-query").args(["-W", "labagent"])).code == Some(0),
        "the sandbox leaked a unit file onto this machine"
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

/// The system calls a group of `systemd-analyze syscall-filter` stands for (nested groups
/// expanded).
fn syscall_group(
    name: &str,
    cache: &mut BTreeMap<String, std::collections::BTreeSet<String>>,
) -> std::collections::BTreeSet<String> {
    if let Some(s) = cache.get(name) {
        return s.clone();
    }
    let out = ok(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", name]));
    let mut set = std::collections::BTreeSet::new();
    for l in out.lines().skip(1) {
        let item = l.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            set.extend(syscall_group(item, cache));
        } else {
            set.insert(item.to_string());
        }
    }
    assert!(!set.is_empty(), "{name}: no system calls in {out}");
    cache.insert(name.to_string(), set.clone());
    set
}

/// The system calls the unit's `SystemCallFilter=` lines allow, evaluated as systemd.exec(5)
/// says: the first line is an allow list, later lines add (or with `~` remove) calls.
fn allowed_syscalls(unit: &str) -> std::collections::BTreeSet<String> {
    let mut cache = BTreeMap::new();
    let mut allowed = std::collections::BTreeSet::new();
    let mut first = true;
    for l in unit.lines().map(str::trim) {
        let Some(v) = l.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (deny, items) = match v.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        assert!(
            !(first && deny),
            "the unit's filter must start with an allow list"
        );
        first = false;
        for item in items.split_whitespace() {
            let calls = if item.starts_with('@') {
                syscall_group(item, &mut cache)
            } else {
                std::iter::once(item.to_string()).collect()
            };
            for c in calls {
                if deny {
                    allowed.remove(&c);
                } else {
                    allowed.insert(c);
                }
            }
        }
    }
    allowed
}

/// The clock-sync flag reads `adjtimex` (no modes set): the unit's own filter must let it
/// through (and `ProtectClock=`, whose filter denies it, must stay off), while setting the
/// clock stays impossible (no CAP_SYS_TIME). Evaluated from the unit file itself.
#[test]
fn the_clock_flag_works_in_the_units_sandbox() {
    let unit = unit_text();
    let allowed = allowed_syscalls(&unit);
    for call in ["adjtimex", "clock_adjtime"] {
        assert!(
            allowed.contains(call),
            "{call} is denied by the unit's SystemCallFilter=: the clock flag would be unknown"
        );
    }
    // Still a real filter: the rest of @privileged stays out.
    for call in [
        "settimeofday",
        "clock_settime",
        "reboot",
        "init_module",
        "mount",
    ] {
        assert!(!allowed.contains(call), "{call} is allowed");
    }
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("ProtectClock=") && !l.ends_with("=no")),
        "ProtectClock= denies adjtimex in its own filter"
    );
    assert!(
        lines.contains(&"CapabilityBoundingSet="),
        "CAP_SYS_TIME must stay out"
    );
    // systemd's own reading of the unit agrees.
    let r = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_path("cross/labagent.service")));
    assert!(
        r.stdout.contains("adjtimex is allowed"),
        "systemd-analyze security does not see adjtimex allowed:\n{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("CAP_SYS_TIME") && l.trim_start().starts_with('✓')),
        "{}",
        r.stdout
    );
}
