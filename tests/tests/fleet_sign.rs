//! `labagent sign` against openssl: keys made by `openssl genpkey -algorithm ed25519`, a
//! command signed by labagent verifies with `openssl pkeyutl -verify`, one signed by
//! openssl over the canonical form is accepted by the agent's checks, and `check-config`
//! reads the public key (and refuses a private key given in its place).

use std::path::Path;
use std::process::{Command, Stdio};

use labagent::remote::command::{check, Policy};
use labagent::remote::sign::canonical_without_sig;
use labagent_tests::fleet::command;
use serde_json::{json, Value};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keys(dir: &Path) {
    openssl(
        dir,
        &["genpkey", "-algorithm", "ed25519", "-out", "remote.key"],
    );
    openssl(
        dir,
        &["pkey", "-in", "remote.key", "-pubout", "-out", "remote.pub"],
    );
}

fn labagent_sign(key: &Path, cmd: &Value) -> (Value, String) {
    use std::io::Write;
    let mut child = labagent_tests::labagent()
        .arg("sign")
        .arg("--key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string_pretty(cmd).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn labagent_signs_what_openssl_verifies_and_the_other_way_round() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys(d);
    // Non-ASCII and nested keys: the canonical form keeps UTF-8 and sorts every level.
    let cmd = command(
        "sig-1",
        "lab-1",
        "logs",
        json!({"lines": 10, "note": "Größe ✓"}),
    );
    let (signed, text) = labagent_sign(&d.join("remote.key"), &cmd);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    std::fs::write(d.join("msg"), canonical_without_sig(&signed)).unwrap();
    std::fs::write(d.join("sig"), unb64(signed["sig"].as_str().unwrap())).unwrap();
    openssl(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "remote.pub",
            "-rawin",
            "-in",
            "msg",
            "-sigfile",
            "sig",
        ],
    );

    // openssl signs the canonical form; the agent's checks accept it with the PEM key.
    let cmd = command("sig-2", "lab-1", "ping", json!({}));
    std::fs::write(d.join("msg2"), canonical_without_sig(&cmd)).unwrap();
    openssl(
        d,
        &[
            "pkeyutl",
            "-sign",
            "-inkey",
            "remote.key",
            "-rawin",
            "-in",
            "msg2",
            "-out",
            "sig2",
        ],
    );
    let mut by_openssl = cmd.clone();
    by_openssl["sig"] = json!(b64(&std::fs::read(d.join("sig2")).unwrap()));
    let public = labagent_config::remote::parse_public_key_pem(
        &std::fs::read_to_string(d.join("remote.pub")).unwrap(),
    )
    .unwrap();
    let policy = Policy {
        agent_id: "lab-1".into(),
        allow: vec!["ping".into()],
        signing_key: Some(public),
    };
    let now = std::time::SystemTime::now();
    check(by_openssl.to_string().as_bytes(), &policy, now, Some(true)).unwrap();
    by_openssl["args"] = json!({"x": 1});
    let r = check(by_openssl.to_string().as_bytes(), &policy, now, Some(true)).unwrap_err();
    assert!(r.why.contains("bad signature"), "{}", r.why);
}

#[test]
fn check_config_reads_the_public_key_and_refuses_a_private_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys(d);
    let write = |key: &str| {
        let cfg = d.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nid = \"lab-1\"\nstate_dir = \"{}\"\n[uplink]\nkind = \"http\"\n\
                 url = \"https://x.example/in\"\n[uplink.auth]\nmethod = \"none\"\n\
                 [remote]\nenabled = true\ncommands_url = \"https://x.example/cmd\"\n\
                 signing_key = \"{}\"\n",
                d.join("state").display(),
                d.join(key).display()
            ),
        )
        .unwrap();
        labagent_tests::run(
            labagent_tests::labagent()
                .arg("check-config")
                .arg("--config")
                .arg(&cfg),
        )
    };
    let ok = write("remote.pub");
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains("signing_key = "), "{ok:?}");
    let bad = write("remote.key");
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(
        bad.stderr.contains(":12:15: remote.signing_key") && bad.stderr.contains("private key"),
        "{bad:?}"
    );
}
