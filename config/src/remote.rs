//! `[remote]`: fleet management (see docs/FLEET.md).
//!
//! Everything here can be changed only locally: a pushed config must carry a `[remote]`
//! equal to the running one (defaults filled in), and a *missing* table counts as different
//! from any table, so a push can neither switch remote management off nor widen `allow`.
//!
//! The Ed25519 public key of `signing_key` is read and checked here, at load, so
//! `check-config` reports a missing or malformed key file with its line and column. The
//! key is kept as its 32 raw bytes; the agent verifies with `ring`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_spanned::Spanned;

use crate::check::Ctx;
use crate::defaults as d;
use crate::schema::RawRemote;

/// The commands a box may accept (`[remote] allow`).
pub const COMMANDS: &[&str] = &["status", "ping", "reload", "config", "logs", "queue"];

/// `[remote]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub enabled: bool,
    /// Subset of [`COMMANDS`], in file order, without repeats.
    pub allow: Vec<String>,
    pub status_every: Duration,
    /// The HTTPS command feed (`uplink.kind = "http"`).
    pub commands_url: Option<String>,
    pub rollback_after: Duration,
    /// When set, every command must be signed with the matching private key.
    pub signing_key: Option<SigningKey>,
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            enabled: d::REMOTE_ENABLED,
            allow: d::REMOTE_ALLOW.iter().map(|s| s.to_string()).collect(),
            status_every: d::REMOTE_STATUS_EVERY,
            commands_url: None,
            rollback_after: d::REMOTE_ROLLBACK_AFTER,
            signing_key: None,
        }
    }
}

impl Remote {
    pub fn allows(&self, command: &str) -> bool {
        self.allow.iter().any(|a| a == command)
    }
}

/// An Ed25519 public key read from an SPKI PEM file (`openssl pkey -pubout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub path: PathBuf,
    /// The raw 32-byte public key.
    pub public: [u8; 32],
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE, the algorithm
/// identifier 1.3.101.112, a BIT STRING of 33 bytes (0 unused bits + the key).
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER bytes of a PEM block whose BEGIN line `rest` follows, up to its `end` line.
pub fn pem_body(rest: &str, end: &str) -> Result<Vec<u8>, String> {
    let stop = rest
        .find(end)
        .ok_or_else(|| format!("the PEM block has no \"{end}\""))?;
    let b64: String = rest[..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("the PEM block is not valid base64: {e}"))
}

/// The raw key of an Ed25519 public key in SPKI PEM form.
pub fn parse_public_key_pem(text: &str) -> Result<[u8; 32], String> {
    let begin = "-----BEGIN PUBLIC KEY-----";
    let end = "-----END PUBLIC KEY-----";
    let start = text.find(begin).ok_or_else(|| {
        if text.contains("PRIVATE KEY") {
            "this is a private key: give the public key (openssl pkey -in KEY -pubout)".to_string()
        } else {
            format!("expected a PEM public key (\"{begin}\")")
        }
    })?;
    let der = pem_body(&text[start + begin.len()..], end)?;
    if der.len() != 44 || der[..12] != SPKI_ED25519_PREFIX {
        return Err("not an Ed25519 public key (generate one with openssl genpkey -algorithm ed25519, then openssl pkey -pubout)".into());
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&der[12..]);
    Ok(k)
}

/// Validates `[remote]`; `None` when the table is absent.
pub fn remote(
    ctx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawRemote>>,
    uplink_kind: Option<crate::model::UplinkKind>,
    allow_plain_http: bool,
) -> Option<Remote> {
    let raw = raw?;
    let r = raw.get_ref();
    let mut allow = Vec::new();
    match &r.allow {
        None => allow = Remote::default().allow,
        Some(list) => {
            for item in list.get_ref() {
                let name = item.get_ref();
                if !COMMANDS.contains(&name.as_str()) {
                    let hint = crate::check::closest(name, COMMANDS.iter().copied());
                    let mut diag = ctx.diag(
                        &item.span(),
                        "remote.allow",
                        &format!(
                            "unknown command \"{name}\" (commands: {})",
                            COMMANDS.join(" ")
                        ),
                    );
                    diag.hint = hint;
                    ctx.errors.push(diag);
                } else if !allow.contains(name) {
                    allow.push(name.clone());
                }
            }
        }
    }
    let commands_url = r.commands_url.as_ref().map(|u| {
        ctx.url(
            u,
            "remote.commands_url",
            "https",
            "http",
            allow_plain_http,
            "uplink.allow_plain_http",
        );
        if uplink_kind == Some(crate::model::UplinkKind::Mqtt) {
            ctx.warn(
                &u.span(),
                "remote.commands_url",
                "is ignored: with uplink.kind = \"mqtt\" commands come over the broker",
            );
        }
        u.get_ref().clone()
    });
    let signing_key = r.signing_key.as_ref().and_then(|p| {
        let path = ctx.abs_path(p, "remote.signing_key");
        if !path.is_absolute() {
            return None;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                ctx.error(
                    &p.span(),
                    "remote.signing_key",
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        };
        match parse_public_key_pem(&text) {
            Ok(public) => Some(SigningKey { path, public }),
            Err(e) => {
                ctx.error(
                    &p.span(),
                    "remote.signing_key",
                    format!("{}: {e}", path.display()),
                );
                None
            }
        }
    });
    let enabled = ctx.value(&r.enabled, d::REMOTE_ENABLED);
    if enabled && uplink_kind == Some(crate::model::UplinkKind::Http) && commands_url.is_none() {
        ctx.warn(
            &raw.span(),
            "remote.commands_url",
            "is not set: with uplink.kind = \"http\" no command reaches this box",
        );
    }
    Some(Remote {
        enabled,
        allow,
        status_every: ctx.duration(
            &r.status_every,
            "remote.status_every",
            d::REMOTE_STATUS_EVERY,
            true,
        ),
        commands_url,
        rollback_after: ctx.duration(
            &r.rollback_after,
            "remote.rollback_after",
            d::REMOTE_ROLLBACK_AFTER,
            true,
        ),
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm ed25519 | openssl pkey -pubout` (RFC 8410 §10.1's key).
    const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn reads_an_openssl_public_key() {
        let k = parse_public_key_pem(PEM).unwrap();
        assert_eq!(&k[..4], &[0x19, 0xbf, 0x44, 0x09]);
    }

    #[test]
    fn refuses_private_keys_and_other_algorithms() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        assert!(parse_public_key_pem(private)
            .unwrap_err()
            .contains("private key"));
        // An X25519 key (OID 1.3.101.110) has the same length but another algorithm.
        let x25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(parse_public_key_pem(x25519)
            .unwrap_err()
            .contains("not an Ed25519"));
        assert!(parse_public_key_pem("hello").is_err());
    }
}
