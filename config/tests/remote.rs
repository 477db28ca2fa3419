//! `[remote]`: defaults, the allow list, durations, the signing key read at load.

use std::path::Path;

use labagent_config::{load_str, LoadOptions};

const HEAD: &str = r#"[agent]
id = "lab"

[uplink]
kind = "http"
url = "https://ingest.example.org/in"

[uplink.auth]
method = "none"
"#;

const PUB: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

fn load(extra: &str) -> Result<labagent_config::Loaded, labagent_config::ConfigError> {
    load_str(
        &format!("{HEAD}{extra}"),
        Path::new("/etc/labagent/config.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
}

#[test]
fn missing_table_is_none_and_differs_from_an_empty_one() {
    let none = load("").unwrap().config;
    assert_eq!(none.remote, None);
    let empty = load("[remote]\n").unwrap().config;
    let r = empty.remote.clone().expect("a table");
    assert!(!r.enabled);
    assert_eq!(r.allow, vec!["status", "ping", "logs"]);
    assert_eq!(r.status_every.as_secs(), 60);
    assert_eq!(r.rollback_after.as_secs(), 60);
    assert_eq!(r.commands_url, None);
    assert_eq!(r.signing_key, None);
    assert_ne!(none.remote, empty.remote);
    assert_eq!(none.remote_or_default(), r);
}

#[test]
fn values_are_checked_with_line_and_column() {
    let e = load("[remote]\nenabled = true\nallow = [\"status\", \"reboot\"]\n").unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!((d.line, d.col), (12, 20), "{e}");
    assert!(d.message.contains("unknown command \"reboot\""), "{e}");
    let e = load("[remote]\nrollback_after = \"60x\"\n").unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "remote.rollback_after", "{e}");
    let e = load("[remote]\ncommands_url = \"http://x/cmd\"\n").unwrap_err();
    assert!(e.to_string().contains("allow_plain_http"), "{e}");
    let e = load("[remote]\nenable = true\n").unwrap_err();
    assert!(e.to_string().contains("enable"), "{e}");
}

#[test]
fn signing_key_is_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("remote.pub");
    std::fs::write(&good, PUB).unwrap();
    let c = load(&format!(
        "[remote]\nenabled = true\nsigning_key = \"{}\"\n",
        good.display()
    ))
    .unwrap()
    .config;
    let k = c.remote.unwrap().signing_key.unwrap();
    assert_eq!(k.public[0], 0x19);
    let printed = load(&format!(
        "[remote]\nenabled = true\nsigning_key = \"{}\"\n",
        good.display()
    ))
    .unwrap()
    .config
    .effective_toml();
    assert!(printed.contains("signing_key = "), "{printed}");

    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "not a key\n").unwrap();
    let e = load(&format!("[remote]\nsigning_key = \"{}\"\n", bad.display())).unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(
        (d.line, d.col, d.key.as_str()),
        (11, 15, "remote.signing_key"),
        "{e}"
    );
    let e = load(&format!(
        "[remote]\nsigning_key = \"{}\"\n",
        dir.path().join("missing.pub").display()
    ))
    .unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn effective_settings_round_trip() {
    let c =
        load("[remote]\nenabled = true\nallow = [\"status\", \"config\"]\nstatus_every = \"5s\"\n")
            .unwrap()
            .config;
    let again = load_str(
        &c.effective_toml(),
        Path::new("/x.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
    .unwrap()
    .config;
    assert_eq!(c, again);
    let none = load("").unwrap().config;
    let again = load_str(
        &none.effective_toml(),
        Path::new("/x.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
    .unwrap()
    .config;
    assert_eq!(again.remote, None);
}
