//! The shipped example config, the effective-settings round trip, secret sources and
//! the promise that no Debug/Display ever shows the secret.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use labagent_config::{
    load_str, load_with, AuthMethod, Config, ConfigError, LoadOptions, Loaded, Protocol, Secret,
    SecretSource, Transport,
};

const SECRET: &str = "hunter2-very-secret";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross/config.toml")
}

fn env_secret() -> LoadOptions {
    LoadOptions::with_env([("LABAGENT_CLIENT_SECRET", SECRET)])
}

fn load_example(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    load_with(&example_path(), opts)
}

#[test]
fn example_validates_with_one_secret_source() {
    let loaded = load_example(&env_secret()).unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    assert_eq!(c.agent.id, "chem-lab-1");
    assert_eq!(c.uplink.auth.method, AuthMethod::ClientCredentials);
    assert_eq!(
        c.uplink.auth.secret.as_ref().map(Secret::expose),
        Some(SECRET)
    );
    assert_eq!(c.uplink.auth.secret_source, Some(SecretSource::Env));
    assert_eq!(c.channels.len(), 2);
    assert_eq!(c.channels[0].protocol(), Protocol::Astm);
    assert!(matches!(
        c.channels[0].transport,
        Transport::Serial { baud: 9600, .. }
    ));
    assert_eq!(c.channels[1].protocol(), Protocol::Hl7);
    assert!(matches!(c.channels[1].transport, Transport::Listen(a) if a.port() == 2575));
    assert_eq!(c.buffer.keep_delivered, Duration::from_secs(7 * 86_400));
    assert_eq!(c.buffer.max_bytes, 1 << 30);
    // The by-id serial path does not exist here: a warning, not an error.
    assert!(
        loaded.warnings.iter().all(|w| w.key.ends_with(".serial")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn example_without_secret_is_refused_and_says_how_to_fix_it() {
    let err = load_example(&LoadOptions::with_env(Vec::<(String, String)>::new())).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("needs a client secret"), "{text}");
    assert!(text.contains("LoadCredential=client_secret"), "{text}");
}

#[test]
fn example_with_two_secret_sources_names_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_secret"), "x\n").unwrap();
    let opts = LoadOptions::with_env([
        ("LABAGENT_CLIENT_SECRET", SECRET.to_owned()),
        ("CREDENTIALS_DIRECTORY", dir.path().display().to_string()),
    ]);
    let text = load_example(&opts).unwrap_err().to_string();
    assert!(
        text.contains("LABAGENT_CLIENT_SECRET") && text.contains("systemd credential"),
        "{text}"
    );
}

#[test]
fn effective_toml_round_trips() {
    let first = load_example(&env_secret()).unwrap().config;
    let printed = first.effective_toml();
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(
        printed.contains("# client_secret: [from environment variable LABAGENT_CLIENT_SECRET]"),
        "{printed}"
    );
    let second = load_str(&printed, Path::new("effective.toml"), &env_secret())
        .unwrap_or_else(|e| panic!("{e}\n{printed}"))
        .config;
    assert_eq!(first, second);
    // And printing is stable.
    assert_eq!(printed, second.effective_toml());
}

#[test]
fn every_default_is_printed() {
    let text = "[agent]\nid = \"a\"\nmetrics = \"[::1]:9464\"\n[uplink]\nkind = \"mqtt\"\n[uplink.auth]\nmethod = \"none\"\n\
                [uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\n\
                [[channel]]\nname = \"r\"\nprotocol = \"raw\"\nconnect = \"10.0.0.2:4001\"\nencoding = \"latin1\"\n\
                [channel.raw]\nstart = \"\\u0002\"\nend = [0x03]\n\
                [[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nserial = \"/dev/null\"\n";
    let opts = LoadOptions::with_env(Vec::<(String, String)>::new());
    let c = load_str(text, Path::new("t.toml"), &opts).unwrap().config;
    let printed = c.effective_toml();
    for needle in [
        "state_dir = \"/var/lib/labagent\"",
        "log = \"info\"",
        "max_bytes = \"1GiB\"",
        "min_free = \"256MiB\"",
        "when_full = \"refuse\"",
        "keep_delivered = \"7d\"",
        "timeout = \"30s\"",
        "client_id = \"a\"",
        "topic_prefix = \"labagent\"",
        "qos = 1",
        "start = [0x02]",
        "max_message = \"1MiB\"",
        "idle_timeout = \"10m\"",
        "metrics = \"[::1]:9464\"",
        "encoding = \"latin1\"",
        "baud = 9600",
        "data_bits = 8",
        "stop_bits = 1",
        "ack = \"original\"",
    ] {
        assert!(printed.contains(needle), "{needle} missing in\n{printed}");
    }
    // max_connections is listen-only and this HL7 channel is serial: not printed.
    assert!(!printed.contains("max_connections"));
    let again = load_str(&printed, Path::new("t2.toml"), &opts)
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(c, again.config);
}

fn secret_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join("client_secret");
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "{SECRET}").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    p
}

fn with_auth(auth: &str) -> String {
    format!("[agent]\nid = \"a\"\n[uplink]\nkind = \"http\"\nurl = \"https://x.example/in\"\n[uplink.auth]\n{auth}\n")
}

#[test]
fn secret_file_source_round_trips_as_the_real_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), 0o600);
    let text = with_auth(&format!(
        "method = \"basic\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"",
        p.display()
    ));
    let opts = LoadOptions::with_env(Vec::<(String, String)>::new());
    let loaded = load_str(&text, Path::new("t.toml"), &opts).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(
        c.uplink.auth.secret.as_ref().map(Secret::expose),
        Some(SECRET),
        "trailing newline removed"
    );
    assert_eq!(
        c.uplink.auth.secret_source,
        Some(SecretSource::File(p.clone()))
    );
    let printed = c.effective_toml();
    assert!(printed.contains(&format!("client_secret_file = \"{}\"", p.display())));
    assert_eq!(
        load_str(&printed, Path::new("e.toml"), &opts)
            .unwrap()
            .config,
        c
    );
}

#[test]
fn group_readable_secret_file_warns() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), 0o640);
    let text = with_auth(&format!(
        "method = \"basic\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"",
        p.display()
    ));
    let loaded = load_str(
        &text,
        Path::new("t.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("group"));
}

#[test]
fn credentials_directory_and_inline_sources() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), 0o400);
    let text = with_auth(
        "method = \"client_credentials\"\ntoken_url = \"https://x.example/t\"\nclient_id = \"c\"",
    );
    let opts = LoadOptions::with_env([("CREDENTIALS_DIRECTORY", dir.path().display().to_string())]);
    let c = load_str(&text, Path::new("t.toml"), &opts).unwrap().config;
    assert_eq!(
        c.uplink.auth.secret.as_ref().map(Secret::expose),
        Some(SECRET)
    );
    assert_eq!(
        c.uplink.auth.secret_source,
        Some(SecretSource::CredentialsDirectory(
            dir.path().join("client_secret")
        ))
    );

    let inline = with_auth(&format!(
        "method = \"basic\"\nclient_id = \"c\"\nclient_secret = \"{SECRET}\""
    ));
    let loaded = load_str(
        &inline,
        Path::new("t.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
    .unwrap();
    assert_eq!(
        loaded.config.uplink.auth.secret_source,
        Some(SecretSource::Inline)
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!((loaded.warnings[0].line, loaded.warnings[0].col), (9, 17));
    assert!(loaded.warnings[0].message.contains("inline secret"));
    let printed = loaded.config.effective_toml();
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(printed.contains("# client_secret: [from inline client_secret in the config file]"));
}

#[test]
fn debug_and_display_never_show_the_secret() {
    let loaded = load_example(&env_secret()).unwrap();
    let c: &Config = &loaded.config;
    let secret = c.uplink.auth.secret.clone().unwrap();
    for shown in [
        format!("{c:?}"),
        format!("{c:#?}"),
        format!("{loaded:?}"),
        format!("{secret:?}"),
        format!("{secret}"),
        c.effective_toml(),
        format!("{:?}", c.uplink.auth),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert_eq!(format!("{secret}"), "[redacted]");
    assert_eq!(format!("{secret:?}"), "[redacted]");
    assert_eq!(secret.expose(), SECRET);
}

#[test]
fn missing_serial_port_is_a_warning_with_position() {
    let text = with_auth("method = \"none\"")
        + "[[channel]]\nname = \"x\"\nprotocol = \"astm\"\nserial = \"/dev/does-not-exist-labagent\"\n";
    let loaded = load_str(
        &text,
        Path::new("t.toml"),
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    let w = &loaded.warnings[0];
    assert_eq!(
        (w.line, w.col, w.key.as_str()),
        (11, 10, "channel \"x\".serial")
    );
    assert!(w.to_string().starts_with("t.toml:11:10: "));
}

#[test]
fn load_reports_unreadable_file() {
    let err = labagent_config::load(Path::new("/nonexistent/labagent/config.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err
        .to_string()
        .starts_with("/nonexistent/labagent/config.toml: cannot read config file"));
}

#[test]
fn every_truncation_and_line_deletion_of_the_example_is_handled_without_panic() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let opts = env_secret();
    let path = Path::new("cut.toml");
    for (i, _) in text.char_indices().step_by(7) {
        let _ = load_str(&text[..i], path, &opts);
    }
    let lines: Vec<&str> = text.lines().collect();
    for skip in 0..lines.len() {
        let cut: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        if let Err(e) = load_str(&cut.join("\n"), path, &opts) {
            for d in e.diagnostics() {
                assert!(d.line >= 1 && d.col >= 1 && !d.message.is_empty());
            }
        }
    }
}
