//! Fleet management helpers: commands (signed or not), key files, an MQTT agent config.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// RFC 8410's Ed25519 key pair (§10.3 private, §10.1 public), as openssl writes them.
pub const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
pub const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

/// RFC 3339 UTC, `secs` from now (negative: in the past).
pub fn in_secs(secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    labagent::calendar::rfc3339_ms((now + secs) * 1000)
}

/// A command for `agent`, valid for ten minutes.
pub fn command(id: &str, agent: &str, command: &str, args: Value) -> Value {
    json!({"id": id, "agent": agent, "command": command, "args": args,
           "not_after": in_secs(600)})
}

/// `v` signed with [`PRIVATE_PEM`].
pub fn signed(v: &Value) -> Value {
    let key = labagent::remote::sign::load_private_pem(PRIVATE_PEM).unwrap();
    labagent::remote::sign::sign(&key, v).unwrap()
}

/// Writes the public key next to `dir` and returns its path.
pub fn public_key_file(dir: &Path) -> PathBuf {
    let p = dir.join("remote.pub");
    std::fs::write(&p, PUBLIC_PEM).unwrap();
    p
}

/// The text of an MQTT agent config: agent `e2e`, state and socket in `dir`, broker on
/// `port`, `[remote]` lines, then `channels`.
pub fn mqtt_config_text(dir: &Path, port: u16, remote: &str, channels: &str) -> String {
    format!(
        r#"[agent]
id = "e2e"
state_dir = "{state}"
status_socket = "{sock}"
[uplink]
kind = "mqtt"
timeout = "5s"
[uplink.mqtt]
url = "mqtt://127.0.0.1:{port}"
allow_plain_mqtt = true
[uplink.auth]
method = "none"
[remote]
{remote}
{channels}
"#,
        state = dir.join("state").display(),
        sock = dir.join("status.sock").display(),
    )
}
