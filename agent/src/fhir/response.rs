//! The FHIR server's answer to a transaction.
//!
//! `200` with a `transaction-response` Bundle whose every entry is 2xx → delivered. An
//! entry that is not 2xx, or a 4xx that blames the Bundle (400, 409, 412, 413, 415, 422)
//! → the message is kept as rejected with the OperationOutcome's text. A 2xx that is not
//! a transaction-response of the same size means `url` is not a FHIR base: the uplink
//! pauses (a configuration problem) and keeps the message.

use serde_json::Value;

/// What the answer means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Kept as rejected with this reason.
    Rejected(String),
    /// Not a FHIR answer: pause the uplink with this reason.
    NotFhir(String),
    /// Anything else: the general status table decides.
    Status,
}

/// The text of an OperationOutcome: each issue's severity, details/diagnostics and
/// expression, at most ~1000 characters.
pub fn outcome_text(oo: &Value) -> Option<String> {
    let issues = oo.get("issue")?.as_array()?;
    let mut parts = Vec::new();
    for i in issues {
        let sev = i.get("severity").and_then(Value::as_str).unwrap_or("error");
        let text = i
            .pointer("/details/text")
            .and_then(Value::as_str)
            .or_else(|| i.get("diagnostics").and_then(Value::as_str))
            .or_else(|| i.get("code").and_then(Value::as_str))
            .unwrap_or("");
        let at = i
            .get("expression")
            .or_else(|| i.get("location"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty());
        parts.push(match at {
            Some(at) => format!("{sev}: {text} ({at})"),
            None => format!("{sev}: {text}"),
        });
    }
    if parts.is_empty() {
        return None;
    }
    let mut s = parts.join("; ");
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    Some(s)
}

/// Reads the answer to a transaction of `entries` entries whose resource types are
/// `kinds` (for naming the entry at fault).
pub fn verdict(status: u16, body: &str, kinds: &[&str]) -> Verdict {
    let json: Option<Value> = serde_json::from_str(body).ok();
    match status {
        200..=299 => {
            let Some(b) = json
                .as_ref()
                .filter(|b| b.get("resourceType").and_then(Value::as_str) == Some("Bundle"))
            else {
                return Verdict::NotFhir(format!(
                    "HTTP {status} without a FHIR Bundle: is uplink.url the FHIR R4 base (…/fhir/R4)?"
                ));
            };
            if b.get("type").and_then(Value::as_str) != Some("transaction-response") {
                return Verdict::NotFhir(format!(
                    "HTTP {status} with a Bundle that is not a transaction-response"
                ));
            }
            let empty = Vec::new();
            let entries = b.get("entry").and_then(Value::as_array).unwrap_or(&empty);
            if entries.len() != kinds.len() {
                return Verdict::NotFhir(format!(
                    "transaction-response has {} entries for {} sent",
                    entries.len(),
                    kinds.len()
                ));
            }
            for (i, e) in entries.iter().enumerate() {
                let st = e
                    .pointer("/response/status")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if st.trim_start().starts_with('2') {
                    continue;
                }
                let why = e
                    .pointer("/response/outcome")
                    .and_then(outcome_text)
                    .unwrap_or_else(|| "no OperationOutcome".into());
                return Verdict::Rejected(format!(
                    "FHIR entry {} ({}): {}: {why}",
                    i + 1,
                    kinds.get(i).copied().unwrap_or("?"),
                    if st.is_empty() { "no status" } else { st }
                ));
            }
            Verdict::Delivered
        }
        400 | 409 | 412 | 413 | 415 | 422 => {
            let why = json
                .as_ref()
                .filter(|v| {
                    v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome")
                })
                .and_then(outcome_text)
                .unwrap_or_else(|| "no OperationOutcome".into());
            Verdict::Rejected(format!("HTTP {status}: {why}"))
        }
        _ => Verdict::Status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_entries_2xx_is_delivered() {
        let body = r#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201 Created","location":"Device/1"}},
            {"response":{"status":"200 OK"}}]}"#;
        assert_eq!(
            verdict(200, body, &["Device", "Observation"]),
            Verdict::Delivered
        );
    }

    #[test]
    fn an_entry_error_rejects_with_the_outcome_text() {
        let body = r#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201"}},
            {"response":{"status":"400 Bad Request","outcome":{"resourceType":"OperationOutcome",
              "issue":[{"severity":"error","code":"invalid","details":{"text":"Invalid dateTime"},
                        "expression":["Observation.effective[x]"]}]}}}]}"#;
        assert_eq!(
            verdict(200, body, &["Device", "Observation"]),
            Verdict::Rejected(
                "FHIR entry 2 (Observation): 400 Bad Request: error: Invalid dateTime (Observation.effective[x])"
                    .into()
            )
        );
    }

    #[test]
    fn a_4xx_outcome_rejects_and_non_fhir_pauses() {
        let oo = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Missing required property"}]}"#;
        assert_eq!(
            verdict(400, oo, &["Device"]),
            Verdict::Rejected("HTTP 400: error: Missing required property".into())
        );
        assert_eq!(
            verdict(422, "", &[]),
            Verdict::Rejected("HTTP 422: no OperationOutcome".into())
        );
        assert!(matches!(
            verdict(200, "{}", &["Device"]),
            Verdict::NotFhir(_)
        ));
        assert!(matches!(
            verdict(200, "ok", &["Device"]),
            Verdict::NotFhir(_)
        ));
        let short = r#"{"resourceType":"Bundle","type":"transaction-response","entry":[]}"#;
        assert!(matches!(
            verdict(200, short, &["Device"]),
            Verdict::NotFhir(_)
        ));
        assert_eq!(verdict(503, "", &[]), Verdict::Status);
        assert_eq!(verdict(401, "", &[]), Verdict::Status);
    }
}
