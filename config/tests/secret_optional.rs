//! Commands that never authenticate (`status`, `queue`) load the config without a secret:
//! under systemd's `LoadCredential=` the secret exists only inside the service.

use std::path::Path;

use labagent_config::{load_with, LoadOptions, SecretSource};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross/config.toml")
}

#[test]
fn a_missing_secret_is_an_error_only_where_it_is_required() {
    let none = || LoadOptions::with_env(Vec::<(String, String)>::new());
    let err = load_with(&example(), &none()).unwrap_err().to_string();
    assert!(err.contains("needs a client secret"), "{err}");

    let loaded = load_with(&example(), &none().secret_optional()).unwrap();
    assert_eq!(loaded.config.uplink.auth.secret, None);
    assert_eq!(loaded.config.uplink.auth.secret_source, None);
    // Only the missing secret is forgiven: two sources are still an error.
    let two = LoadOptions::with_env([("LABAGENT_CLIENT_SECRET", "a")]).secret_optional();
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("[uplink.auth]", "[uplink.auth]\nclient_secret = \"b\"");
    let err = labagent_config::load_str(&text, &example(), &two)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one source"), "{err}");
}

#[test]
fn a_unit_credential_says_where_it_comes_from() {
    let s = SecretSource::Unit {
        unit: "/lib/systemd/system/labagent.service".into(),
        file: "/etc/credstore/labagent.client_secret".into(),
    };
    assert_eq!(
        s.to_string(),
        "systemd credential client_secret, which /lib/systemd/system/labagent.service loads \
         from /etc/credstore/labagent.client_secret (LoadCredential=)"
    );
}
