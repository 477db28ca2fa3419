//! `format = "fhir"` against the real corpus: every fixture in `../shared/fixtures` that
//! carries results maps to a transaction Bundle that Medplum's own validator accepts
//! (`validateResource` from the npm package `@medplum/core`, run with node on the Bundle
//! and on every resource in it; `tests/fhir`, installed by tests/run.sh), and each result
//! lands where the mapping table says — checked against the source records with a small
//! parser of this file's own, not the agent's.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use labagent::fhir::{Input, Mapper, Skip};
use labagent_config::{ChannelFhir, CodeMap, CodeMapEntry, Encoding};
use serde_json::Value;

const AGENT: &str = "lab-1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared corpus beside the repository (CI) or the workplace's copy.
fn shared() -> PathBuf {
    for p in [
        root().join("../shared/fixtures"),
        PathBuf::from("/work/shared/fixtures"),
    ] {
        if p.join("astm").is_dir() && p.join("hl7").is_dir() {
            return p;
        }
    }
    panic!("../shared/fixtures not found beside the repository");
}

/// (file name, protocol, decoded text) for every ASTM record file and HL7 message.
fn corpus() -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for (dir, ext, proto) in [("astm", ".astm", "astm"), ("hl7", ".hl7", "hl7")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        files.sort();
        for p in files {
            let bytes = std::fs::read(&p).unwrap();
            // Decoded as the drivers record it (encoding = "auto").
            let label = if proto == "hl7" {
                let v = labagent_hal::hl7::msh::MshView::new_checked(&bytes).ok();
                labagent::meta::hl7_encoding_label(&Encoding::Auto, v.as_ref(), &bytes)
            } else {
                labagent::text::encoding_label(&Encoding::Auto, None, &bytes)
            };
            let text = labagent::text::decode(&bytes, &label);
            out.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                proto,
                text,
            ));
        }
    }
    assert!(out.len() > 70, "corpus too small: {}", out.len());
    out
}

fn settings() -> BTreeMap<String, ChannelFhir> {
    let mut codes = BTreeMap::new();
    for (local, loinc, unit) in [
        ("GLU", "2345-7", Some("mg/dL")),
        ("1/1/not", "2986-8", Some("pg/mL")),
        ("WBC", "6690-2", None),
    ] {
        codes.insert(
            local.to_string(),
            CodeMapEntry {
                loinc: loinc.into(),
                display: Some(format!("display of {loinc}")),
                unit: unit.map(str::to_string),
            },
        );
    }
    let mut m = BTreeMap::new();
    for ch in ["astm", "hl7"] {
        m.insert(
            ch.to_string(),
            ChannelFhir {
                code_map: Some(CodeMap {
                    path: "/etc/labagent/codes.toml".into(),
                    codes: codes.clone(),
                }),
                timezone: Some("Europe/Berlin".into()),
                patient_id_system: Some("urn:oid:1.2.3.4".into()),
                ..ChannelFhir::defaults()
            },
        );
    }
    m
}

fn received() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_874_700)
}

fn map(mapper: &Mapper, name: &str, proto: &str, text: &str) -> Result<Vec<u8>, Skip> {
    mapper
        .map(&Input {
            key: &format!("k-{name}"),
            channel: proto,
            protocol: proto,
            text,
            received_at: received(),
        })
        .map(|m| m.json)
}

/// Runs Medplum's validator on each Bundle; returns the errors per Bundle.
fn medplum_validate(bundles: &[Vec<u8>]) -> Vec<(usize, Vec<String>)> {
    let dir = root().join("tests/fhir");
    assert!(
        dir.join("node_modules/@medplum/core").is_dir(),
        "@medplum/core is not installed: run `npm ci --prefix tests/fhir` (tests/run.sh does)"
    );
    let mut child = Command::new("node")
        .arg("validate.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    {
        let mut stdin = child.stdin.take().unwrap();
        for b in bundles {
            stdin.write_all(b).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "validator failed: {:?}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let errors = v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect();
            (v["resources"].as_u64().unwrap() as usize, errors)
        })
        .collect()
}

// ---- an independent reading of the source records -----------------------------------

/// One result as the source states it.
#[derive(Debug)]
struct Src {
    value: String,
    /// The value type (HL7 OBX-2; ASTM: "").
    ty: String,
    unit: String,
    range: String,
    flags: Vec<String>,
    status: String,
}

fn hl7_unescape(s: &str) -> String {
    s.replace("\\S\\", "^")
        .replace("\\T\\", "&")
        .replace("\\F\\", "|")
        .replace("\\R\\", "~")
        .replace("\\E\\", "\\")
}

/// Results of a message, in order; `None` when it is not a result message (query, order,
/// no R/OBX, QC marker).
fn source_results(proto: &str, text: &str) -> Option<Vec<Src>> {
    let mut out = Vec::new();
    if proto == "astm" {
        let recs: Vec<&str> = text
            .split('\r')
            .map(|r| r.trim_start_matches('\n'))
            .filter(|r| !r.is_empty())
            .collect();
        let h = recs.iter().find(|r| r.starts_with('H'))?;
        let fd = h.chars().nth(1)?;
        let rd = h.chars().nth(2)?;
        let cd = h.chars().nth(3)?;
        let hf: Vec<&str> = h.split(fd).collect();
        if hf.get(11).is_some_and(|p| p.split(cd).next() == Some("Q")) {
            return None;
        }
        for r in &recs {
            let f: Vec<&str> = r.split(fd).collect();
            if f[0] == "O" && f.get(11).is_some_and(|a| *a == "Q") {
                return None;
            }
            if f[0] != "R" {
                continue;
            }
            let g = |i: usize| f.get(i).copied().unwrap_or("").trim().to_string();
            out.push(Src {
                value: f
                    .get(3)
                    .copied()
                    .unwrap_or("")
                    .split(rd)
                    .next()
                    .unwrap()
                    .split(cd)
                    .next()
                    .unwrap()
                    .trim()
                    .to_string(),
                ty: String::new(),
                unit: g(4),
                range: g(5),
                flags: g(6)
                    .split(rd)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect(),
                status: g(8),
            });
        }
    } else {
        let segs: Vec<&str> = text.split(['\r', '\n']).filter(|s| !s.is_empty()).collect();
        let msh = segs[0];
        let fd = msh.chars().nth(3)?;
        let m: Vec<&str> = msh.split(fd).collect();
        let ty = m.get(8).copied().unwrap_or("");
        if !(ty.starts_with("ORU^R01") || ty.starts_with("OUL^R2")) {
            return None;
        }
        for s in &segs {
            let f: Vec<&str> = s.split(fd).collect();
            if f[0] == "SPM" && f.get(11).is_some_and(|r| r.starts_with('Q')) {
                return None;
            }
            if f[0] != "OBX" {
                continue;
            }
            let g = |i: usize| hl7_unescape(f.get(i).copied().unwrap_or("").trim());
            out.push(Src {
                value: g(5),
                ty: g(2),
                unit: g(6).split('^').next().unwrap().trim().to_string(),
                range: g(7),
                flags: g(8)
                    .split('~')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect(),
                status: g(11),
            });
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A plain decimal with an optional comparator, as the table defines it; returns
/// (comparator, the number as FHIR must carry it).
fn plain_decimal(v: &str) -> Option<(Option<&'static str>, String)> {
    let mut v = v.trim();
    let mut cmp = None;
    for op in ["<=", ">=", "<", ">"] {
        if let Some(r) = v.strip_prefix(op) {
            cmp = Some(op);
            v = r;
            break;
        }
    }
    let v = v.trim().strip_prefix('+').unwrap_or(v.trim());
    let body = v.strip_prefix('-').unwrap_or(v);
    let seps = body.matches(['.', ',']).count();
    if body.is_empty()
        || seps > 1
        || !body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    {
        return None;
    }
    if !body.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((cmp, v.replace(',', ".")))
}

/// `"<key>":{"value":<number>` in a resource's JSON text: the number as sent.
fn raw_number(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":{{\"value\":");
    let at = json.find(&pat)? + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

fn status_of(code: &str) -> &'static str {
    match code {
        "F" | "V" | "R" => "final",
        "P" => "preliminary",
        "C" => "corrected",
        "X" => "cancelled",
        "I" => "registered",
        _ => "unknown",
    }
}

/// Every resource of a Bundle as (resourceType, JSON text, parsed).
fn resources(bundle: &[u8]) -> Vec<(String, String, Value)> {
    #[derive(serde::Deserialize)]
    struct B<'a> {
        #[serde(borrow)]
        entry: Vec<E<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        resource: &'a serde_json::value::RawValue,
    }
    let b: B<'_> = serde_json::from_slice(bundle).unwrap();
    b.entry
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e.resource.get()).unwrap();
            (
                v["resourceType"].as_str().unwrap().to_string(),
                e.resource.get().to_string(),
                v,
            )
        })
        .collect()
}

#[test]
fn every_fixture_with_results_maps_to_a_bundle_medplum_accepts() {
    let mapper = Mapper::new(AGENT, &settings()).unwrap();
    let mut bundles = Vec::new();
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    for (name, proto, text) in corpus() {
        let has_h = proto == "hl7"
            || text
                .split('\r')
                .any(|r| r.trim_start_matches('\n').starts_with('H'));
        match (
            source_results(proto, &text),
            map(&mapper, &name, proto, &text),
        ) {
            (Some(_), Ok(b)) => {
                bundles.push(b);
                names.push(name);
            }
            (_, Err(Skip::NotMappable(why))) if !has_h => skipped.push(format!("{name}: {why}")),
            (None, Err(Skip::Policy(why))) => skipped.push(format!("{name}: {why}")),
            (src, got) => panic!(
                "{name}: source results {:?} but mapping gave {:?}",
                src.map(|s| s.len()),
                got.map(|b| b.len())
            ),
        }
    }
    // Most of the corpus carries results; the rest are queries, orders, QC, fragments.
    assert!(
        bundles.len() >= 45,
        "{} bundles; skipped: {skipped:#?}",
        bundles.len()
    );
    let verdicts = medplum_validate(&bundles);
    assert_eq!(verdicts.len(), bundles.len());
    let mut failures = Vec::new();
    let mut total = 0;
    for ((resources, errors), name) in verdicts.iter().zip(&names) {
        total += resources;
        if !errors.is_empty() {
            failures.push(format!("{name}: {errors:#?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "Medplum's validator refused:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{} Bundles, {total} resources valid; not posted: {skipped:#?}",
        bundles.len()
    );
}

#[test]
fn the_validator_is_not_a_rubber_stamp() {
    // The same validator refuses what the mapping must never produce. (It checks
    // structure, types, formats and FHIRPath invariants; it does not check required
    // ValueSet bindings — a status of "done" passes — nor that a time has an offset:
    // the value-level test below checks those.)
    let bad = [
        // a dateTime without seconds (instruments' YYYYMMDDHHMM must gain them)
        r#"{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:0b1f5c3e-8f0a-4c3e-9d2a-1a2b3c4d5e6f","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2024-01-01T10:00+01:00"},"request":{"method":"POST","url":"Observation"}}]}"#,
        // a transaction entry without its request
        r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"}}}]}"#,
        // a number as a string
        r#"{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:0b1f5c3e-8f0a-4c3e-9d2a-1a2b3c4d5e6f","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"4.2"}},"request":{"method":"POST","url":"Observation"}}]}"#,
    ];
    let v = medplum_validate(
        &bad.iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    for (i, (_, errors)) in v.iter().enumerate() {
        assert!(!errors.is_empty(), "bundle {i} should be refused");
    }
}

#[test]
fn each_result_lands_where_the_mapping_table_says() {
    let mapper = Mapper::new(AGENT, &settings()).unwrap();
    let mut checked = 0;
    for (name, proto, text) in corpus() {
        let Some(src) = source_results(proto, &text) else {
            continue;
        };
        let Ok(bundle) = map(&mapper, &name, proto, &text) else {
            continue;
        };
        let res = resources(&bundle);
        let obs: Vec<&(String, String, Value)> =
            res.iter().filter(|r| r.0 == "Observation").collect();
        assert_eq!(obs.len(), src.len(), "{name}: one Observation per result");
        let device = &res[0];
        assert_eq!(device.0, "Device", "{name}");
        let full_urls: Vec<String> = serde_json::from_slice::<Value>(&bundle).unwrap()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap().to_string())
            .collect();
        for (i, ((_, json, o), s)) in obs.iter().zip(&src).enumerate() {
            let at = format!("{name} result {}", i + 1);
            // value
            let numeric = matches!(s.ty.as_str(), "" | "NM") && plain_decimal(&s.value).is_some();
            if numeric {
                let (cmp, num) = plain_decimal(&s.value).unwrap();
                let canon = canonical(&num);
                assert_eq!(
                    raw_number(json, "valueQuantity").as_deref(),
                    Some(canon.as_str()),
                    "{at}: value {:?}",
                    s.value
                );
                assert_eq!(o["valueQuantity"]["comparator"].as_str(), cmp, "{at}");
                if !s.unit.is_empty() && o["code"]["coding"][0]["system"] != "http://loinc.org" {
                    assert_eq!(
                        o["valueQuantity"]["unit"].as_str(),
                        Some(s.unit.as_str()),
                        "{at}: unit"
                    );
                }
            } else if s.ty == "SN" {
                assert!(
                    o.get("valueQuantity").is_some() || o.get("valueString").is_some(),
                    "{at}"
                );
            } else if matches!(s.ty.as_str(), "CE" | "CWE") && !s.value.is_empty() {
                assert!(o.get("valueCodeableConcept").is_some(), "{at}");
            } else if !s.value.is_empty() {
                assert!(
                    o.get("valueQuantity").is_none(),
                    "{at}: {:?} is not a plain number",
                    s.value
                );
                assert!(
                    o["valueString"].as_str().is_some_and(|v| !v.is_empty()),
                    "{at}: valueString for {:?}",
                    s.value
                );
            } else {
                assert!(
                    o.get("valueQuantity").is_none() && o.get("valueString").is_none(),
                    "{at}: no value"
                );
            }
            // status
            assert_eq!(
                o["status"],
                status_of(&s.status),
                "{at}: status {:?}",
                s.status
            );
            // flags
            let interp = o["interpretation"].as_array().cloned().unwrap_or_default();
            assert_eq!(interp.len(), s.flags.len(), "{at}: flags {:?}", s.flags);
            for (c, f) in interp.iter().zip(&s.flags) {
                let known = ["L", "H", "LL", "HH", "N", "A", "<", ">"].contains(&f.as_str());
                if known {
                    assert_eq!(c["coding"][0]["code"], f.as_str(), "{at}");
                    assert_eq!(
                        c["coding"][0]["system"],
                        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
                    );
                } else {
                    assert_eq!(c["text"], f.as_str(), "{at}");
                }
            }
            // reference range
            let rr = &o["referenceRange"][0];
            let r = s.range.as_str();
            if r.is_empty() {
                assert!(o.get("referenceRange").is_none(), "{at}");
            } else if let Some((lo, hi)) = r.split_once('-').filter(|(a, b)| {
                plain_decimal(a).is_some()
                    && plain_decimal(b).is_some()
                    && !a.trim().starts_with(['<', '>'])
            }) {
                assert_eq!(
                    raw_number(json, "low"),
                    Some(canonical(&plain_decimal(lo).unwrap().1)),
                    "{at}: range {r}"
                );
                assert_eq!(
                    raw_number(json, "high"),
                    Some(canonical(&plain_decimal(hi).unwrap().1)),
                    "{at}: range {r}"
                );
            } else if let Some(h) = r.strip_prefix('<').and_then(plain_decimal) {
                assert_eq!(raw_number(json, "high"), Some(canonical(&h.1)), "{at}");
                assert!(rr.get("low").is_none());
            } else if let Some(l) = r.strip_prefix('>').and_then(plain_decimal) {
                assert_eq!(raw_number(json, "low"), Some(canonical(&l.1)), "{at}");
                assert!(rr.get("high").is_none());
            } else if let Some((lo, hi)) = r.split_once(" to ") {
                assert_eq!(
                    raw_number(json, "low"),
                    Some(canonical(&plain_decimal(lo).unwrap().1)),
                    "{at}"
                );
                assert_eq!(
                    raw_number(json, "high"),
                    Some(canonical(&plain_decimal(hi).unwrap().1)),
                    "{at}"
                );
            } else {
                assert_eq!(rr["text"], r, "{at}: range kept as text");
            }
            // references
            assert_eq!(
                o["device"]["reference"].as_str(),
                Some(full_urls[0].as_str()),
                "{at}"
            );
            if let Some(sp) = o["specimen"]["reference"].as_str() {
                assert!(full_urls.iter().any(|u| u == sp), "{at}: specimen resolves");
            }
            // Medplum accepts a time without an offset; FHIR does not (a time SHALL carry
            // one): a date alone, or a time with an offset.
            if let Some(t) = o.get("effectiveDateTime").and_then(Value::as_str) {
                let b = t.as_bytes();
                let offset =
                    b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':';
                assert!(t.len() == 10 || (t.contains('T') && offset), "{at}: {t}");
            }
            checked += 1;
        }
        // Identifiers: `<key>/<n>`, n from 1 in entry order, each once.
        let mut seen = HashSet::new();
        for (n, (_, _, r)) in res.iter().enumerate().skip(1) {
            assert_eq!(
                r["identifier"][0]["system"],
                format!("urn:labagent:{AGENT}")
            );
            assert_eq!(
                r["identifier"][0]["value"],
                format!("k-{name}/{n}"),
                "{name}"
            );
            assert!(seen.insert(r["identifier"][0]["value"].to_string()));
        }
        // Every DiagnosticReport's results are Observations of this Bundle.
        for (_, _, dr) in res.iter().filter(|r| r.0 == "DiagnosticReport") {
            for r in dr["result"].as_array().unwrap() {
                assert!(full_urls.iter().any(|u| *u == r["reference"]), "{name}");
            }
        }
    }
    assert!(checked > 450, "only {checked} results checked");
}

/// A decimal as FHIR JSON carries it: no leading `+`, no leading zeros, `.5` → `0.5`.
fn canonical(n: &str) -> String {
    let (neg, b) = match n.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, n),
    };
    let (i, f) = b.split_once('.').unwrap_or((b, ""));
    let i = i.trim_start_matches('0');
    let i = if i.is_empty() { "0" } else { i };
    let zero = i == "0" && f.chars().all(|c| c == '0');
    let mut s = String::new();
    if neg && !zero {
        s.push('-');
    }
    s.push_str(i);
    if !f.is_empty() {
        s.push('.');
        s.push_str(f);
    }
    s
}
