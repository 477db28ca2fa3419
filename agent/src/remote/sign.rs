//! The signature of a command: Ed25519 over its canonical form without `sig`, base64.
//!
//! Canonical form: compact JSON (no whitespace), object keys sorted by their UTF-8 bytes
//! (done here explicitly, not left to a map type), strings escaped only where JSON must
//! (`"`, `\`, control characters; non-ASCII stays as UTF-8), numbers as serde_json prints
//! them. The signed object includes `agent` and `not_after`, so one signed command does not
//! replay on another box sharing the key, nor after its time.
//!
//! Keys: the private key is PKCS#8 PEM as `openssl genpkey -algorithm ed25519` writes it;
//! the public key is SPKI PEM (`openssl pkey -pubout`), read by `labagent-config`.

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde_json::Value;

/// The bytes that are signed: `v` without its top-level `sig`, canonical.
pub fn canonical_without_sig(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| k.as_str() != "sig").collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(&mut out, k);
                out.push(':');
                write_canonical(&mut out, &m[k.as_str()]);
            }
            out.push('}');
        }
        other => write_canonical(&mut out, other),
    }
    out
}

/// The canonical form of any value (see the module doc).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, v);
    out
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes only `"`, `\` and control characters; non-ASCII stays UTF-8.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_canonical(out, &m[k.as_str()]);
            }
            out.push('}');
        }
    }
}

/// Why a signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("unsigned: this box requires signed commands (\"sig\")")]
    Missing,
    #[error("\"sig\" is not base64")]
    NotBase64,
    #[error("bad signature (tampered, or signed with another key)")]
    Bad,
}

/// Checks `v["sig"]` against the raw Ed25519 `public` key.
pub fn verify(public: &[u8; 32], v: &Value) -> Result<(), SigError> {
    let sig = v
        .get("sig")
        .and_then(Value::as_str)
        .ok_or(SigError::Missing)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| SigError::NotBase64)?;
    let msg = canonical_without_sig(v);
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg.as_bytes(), &sig)
        .map_err(|_| SigError::Bad)
}

/// A private key from PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn load_private_pem(text: &str) -> Result<Ed25519KeyPair, String> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = text
        .find(begin)
        .ok_or_else(|| format!("expected a PKCS#8 PEM private key (\"{begin}\")"))?;
    let der = labagent_config::remote::pem_body(&text[start + begin.len()..], end)?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}"))
}

/// `v` with `sig` set (any old `sig` replaced).
pub fn sign(key: &Ed25519KeyPair, v: &Value) -> Result<Value, String> {
    let Value::Object(m) = v else {
        return Err("a command is a JSON object".into());
    };
    let msg = canonical_without_sig(v);
    let sig = key.sign(msg.as_bytes());
    let mut m = m.clone();
    m.insert(
        "sig".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(sig.as_ref())),
    );
    Ok(Value::Object(m))
}

/// The raw public key of a key pair.
pub fn public_of(key: &Ed25519KeyPair) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(key.public_key().as_ref());
    k
}

/// RFC 8410 §10.3's private key (its public key is §10.1's): for tests only.
#[cfg(test)]
pub(crate) fn tests_key() -> &'static str {
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

    #[test]
    fn canonical_form_is_sorted_compact_and_keeps_non_ascii() {
        let v = json!({"z": 1, "a": {"y": [1, "ü"], "b": null}, "sig": "x", "é": "\n"});
        assert_eq!(
            canonical_without_sig(&v),
            "{\"a\":{\"b\":null,\"y\":[1,\"ü\"]},\"z\":1,\"é\":\"\\n\"}"
        );
    }

    #[test]
    fn sign_then_verify_and_tampering_fails() {
        let key = load_private_pem(PRIVATE).unwrap();
        let public = public_of(&key);
        let pem_pub = labagent_config::remote::parse_public_key_pem(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert_eq!(public, pem_pub, "RFC 8410's key pair");
        let cmd = json!({"id": "c1", "agent": "lab", "command": "ping", "args": {},
                         "not_after": "2030-01-01T00:00:00Z"});
        let signed = sign(&key, &cmd).unwrap();
        verify(&public, &signed).unwrap();
        assert_eq!(verify(&public, &cmd), Err(SigError::Missing));
        let mut t = signed.clone();
        t["agent"] = json!("other");
        assert_eq!(verify(&public, &t), Err(SigError::Bad));
        let mut t = signed.clone();
        t["sig"] = json!("%%%");
        assert_eq!(verify(&public, &t), Err(SigError::NotBase64));
        // Key order and whitespace in the transmitted JSON do not matter.
        let text = serde_json::to_string_pretty(&signed).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        verify(&public, &back).unwrap();
    }
}
