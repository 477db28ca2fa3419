//! A command as it arrives, and the checks every command passes before it runs.
//!
//! `{"id","agent","command","args","not_after"[,"sig"]}`:
//! - `id` matches `[A-Za-z0-9._-]{1,64}` (it becomes an MQTT topic level);
//! - `agent` is this box's `agent.id` (so a command does not run on every box);
//! - `not_after` is RFC 3339 UTC, not past and at most [`MAX_AHEAD`] ahead;
//! - with `[remote] signing_key`, `sig` verifies (see [`super::sign`]);
//! - `command` is one this agent knows and `[remote] allow` lists.
//!
//! Order of the checks: shape, signature, agent, time, allow. A refusal says why in
//! words that never quote the command's arguments.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::sign;

/// How far ahead `not_after` may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// The commands this agent knows.
pub const KNOWN: &[&str] = labagent_config::remote::COMMANDS;

/// A command that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub command: String,
    pub args: Value,
    /// Unix seconds.
    pub not_after: i64,
}

/// What the checks need from the config and the clock.
#[derive(Debug, Clone)]
pub struct Policy {
    pub agent_id: String,
    pub allow: Vec<String>,
    pub signing_key: Option<[u8; 32]>,
}

/// A refused command: its id when it has a usable one (the result goes there), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Option<String>,
    pub command: Option<String>,
    pub not_after: Option<i64>,
    pub why: String,
}

/// `[A-Za-z0-9._-]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses and checks a command. `clock_synced`: the kernel's flag (`None`: unknown); when
/// not known to be synchronized, a time refusal says the clock may be wrong.
pub fn check(
    payload: &[u8],
    policy: &Policy,
    now: SystemTime,
    clock_synced: Option<bool>,
) -> Result<Command, Refusal> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| Refusal {
        id: None,
        command: None,
        not_after: None,
        why: format!(
            "not a JSON command ({})",
            format!("{:?}", e.classify()).to_lowercase()
        ),
    })?;
    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
    let command = v.get("command").and_then(Value::as_str).map(str::to_string);
    let not_after = v
        .get("not_after")
        .and_then(Value::as_str)
        .and_then(crate::calendar::parse_rfc3339_utc);
    let refuse = |why: String| Refusal {
        id: id.clone().filter(|i| valid_id(i)),
        command: command.clone().filter(|c| KNOWN.contains(&c.as_str())),
        not_after,
        why,
    };
    let Value::Object(m) = &v else {
        return Err(refuse("a command is a JSON object".into()));
    };
    let Some(id_s) = id.clone() else {
        return Err(refuse("\"id\" is required".into()));
    };
    if !valid_id(&id_s) {
        return Err(refuse(
            "\"id\" must match [A-Za-z0-9._-]{1,64} (it becomes a topic level)".into(),
        ));
    }
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "id" | "agent" | "command" | "args" | "not_after" | "sig"
        ) {
            return Err(refuse(format!(
                "unknown field \"{}\"",
                k.chars().take(32).collect::<String>()
            )));
        }
    }
    if let Some(key) = &policy.signing_key {
        sign::verify(key, &v).map_err(|e| refuse(e.to_string()))?;
    }
    match v.get("agent").and_then(Value::as_str) {
        None => return Err(refuse("\"agent\" is required".into())),
        Some(a) if a != policy.agent_id => {
            return Err(refuse(format!("for agent \"{a}\", not this one")))
        }
        Some(_) => {}
    }
    let clock_note = if clock_synced == Some(true) {
        ""
    } else {
        " (this box's clock is not known to be synchronized: it may be wrong)"
    };
    let Some(na) = not_after else {
        return Err(refuse(if v.get("not_after").is_some() {
            "\"not_after\" must be RFC 3339 UTC like 2026-12-01T12:00:00Z".into()
        } else {
            "\"not_after\" is required".into()
        }));
    };
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if na < now_s {
        return Err(refuse(format!("expired: not_after has passed{clock_note}")));
    }
    if na - now_s > MAX_AHEAD.as_secs() as i64 {
        return Err(refuse(format!(
            "not_after is more than 24 h ahead{clock_note}"
        )));
    }
    let Some(cmd) = command.clone() else {
        return Err(refuse("\"command\" is required".into()));
    };
    if !KNOWN.contains(&cmd.as_str()) {
        return Err(refuse(format!(
            "unknown command \"{}\" (known: {})",
            cmd.chars().take(32).collect::<String>(),
            KNOWN.join(" ")
        )));
    }
    if !policy.allow.iter().any(|a| a == &cmd) {
        return Err(refuse(format!(
            "command \"{cmd}\" is not allowed on this box ([remote] allow)"
        )));
    }
    let args = v.get("args").cloned().unwrap_or(Value::Null);
    if !(args.is_null() || args.is_object()) {
        return Err(refuse("\"args\" must be an object".into()));
    }
    Ok(Command {
        id: id_s,
        command: cmd,
        args,
        not_after: na,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn at(offset: i64) -> String {
        crate::calendar::rfc3339_ms((NOW as i64 + offset) * 1000)
    }

    fn policy(key: Option<[u8; 32]>) -> Policy {
        Policy {
            agent_id: "lab-1".into(),
            allow: vec!["status".into(), "ping".into()],
            signing_key: key,
        }
    }

    fn cmd(id: &str, agent: &str, command: &str, not_after: &str) -> Value {
        json!({"id": id, "agent": agent, "command": command, "args": {}, "not_after": not_after})
    }

    fn run(v: &Value, p: &Policy) -> Result<Command, Refusal> {
        check(v.to_string().as_bytes(), p, now(), Some(true))
    }

    #[test]
    fn accepts_a_good_command() {
        let c = run(&cmd("c-1.x_y", "lab-1", "ping", &at(60)), &policy(None)).unwrap();
        assert_eq!((c.id.as_str(), c.command.as_str()), ("c-1.x_y", "ping"));
    }

    #[test]
    fn refusals_say_why_and_keep_a_usable_id() {
        let p = policy(None);
        let cases = [
            (cmd("c1", "lab-2", "ping", &at(60)), "for agent \"lab-2\""),
            (cmd("c1", "lab-1", "ping", &at(-1)), "expired"),
            (cmd("c1", "lab-1", "ping", &at(25 * 3600)), "more than 24 h"),
            (cmd("c1", "lab-1", "reload", &at(60)), "not allowed"),
            (cmd("c1", "lab-1", "reboot", &at(60)), "unknown command"),
            (cmd("c1", "lab-1", "ping", "tomorrow"), "RFC 3339"),
            (
                json!({"id": "c1", "agent": "lab-1", "command": "ping"}),
                "\"not_after\" is required",
            ),
            (
                json!({"id": "c1", "command": "ping", "not_after": at(60)}),
                "\"agent\" is required",
            ),
        ];
        for (v, want) in cases {
            let r = run(&v, &p).unwrap_err();
            assert!(r.why.contains(want), "{v}: {}", r.why);
            assert_eq!(r.id.as_deref(), Some("c1"));
        }
        let r = run(&cmd("a/b", "lab-1", "ping", &at(60)), &p).unwrap_err();
        assert_eq!(r.id, None, "an id that cannot be a topic level");
        let r = run(&cmd(&"x".repeat(65), "lab-1", "ping", &at(60)), &p).unwrap_err();
        assert_eq!(r.id, None);
        let r = check(b"{", &p, now(), Some(true)).unwrap_err();
        assert!(r.why.contains("not a JSON command"), "{}", r.why);
    }

    #[test]
    fn an_unsynchronized_clock_is_named() {
        let v = cmd("c1", "lab-1", "ping", &at(-5));
        let r = check(v.to_string().as_bytes(), &policy(None), now(), Some(false)).unwrap_err();
        assert!(
            r.why.contains("expired") && r.why.contains("clock"),
            "{}",
            r.why
        );
    }

    #[test]
    fn signatures_are_required_with_a_key() {
        let key = sign::load_private_pem(sign::tests_key()).unwrap();
        let p = policy(Some(sign::public_of(&key)));
        let v = cmd("c1", "lab-1", "ping", &at(60));
        assert!(run(&v, &p).unwrap_err().why.contains("unsigned"));
        let signed = sign::sign(&key, &v).unwrap();
        run(&signed, &p).unwrap();
        let mut tampered = signed.clone();
        tampered["command"] = json!("status");
        assert!(run(&tampered, &p)
            .unwrap_err()
            .why
            .contains("bad signature"));
        // The signature covers agent and not_after: another box refuses it.
        let mut other = p.clone();
        other.agent_id = "lab-2".into();
        assert!(run(&signed, &other).unwrap_err().why.contains("for agent"));
    }
}
