//! The mapping table, case by case: golden values from real fixtures and small messages
//! written for one rule each (patients, comparators, ranges, flags, statuses, comments,
//! QC markers, code_component, code maps, time zones, determinism).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use labagent::fhir::{Input, Mapper, Skip};
use labagent_config::{ChannelFhir, CodeMap, CodeMapEntry};
use serde_json::Value;

fn shared(rel: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in [
        root.join("../shared/fixtures"),
        PathBuf::from("/work/shared/fixtures"),
    ] {
        if p.is_dir() {
            return p.join(rel);
        }
    }
    panic!("../shared/fixtures not found");
}

fn fixture(rel: &str) -> String {
    String::from_utf8(std::fs::read(shared(rel)).unwrap()).unwrap()
}

fn channel(f: impl FnOnce(&mut ChannelFhir)) -> BTreeMap<String, ChannelFhir> {
    let mut c = ChannelFhir {
        timezone: Some("Europe/Berlin".into()),
        ..ChannelFhir::defaults()
    };
    f(&mut c);
    BTreeMap::from([("ch".to_string(), c)])
}

fn map_with(
    settings: &BTreeMap<String, ChannelFhir>,
    proto: &str,
    text: &str,
) -> Result<(Value, String), Skip> {
    let m = Mapper::new("lab-1", settings).unwrap();
    let out = m.map(&Input {
        key: "00c0ffee-000000000007",
        channel: "ch",
        protocol: proto,
        text,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_874_700_250),
    })?;
    let s = String::from_utf8(out.json).unwrap();
    Ok((serde_json::from_str(&s).unwrap(), s))
}

fn map(proto: &str, text: &str) -> (Value, String) {
    map_with(&channel(|_| {}), proto, text).unwrap_or_else(|e| panic!("{e}"))
}

fn of_type<'a>(b: &'a Value, t: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == t)
        .collect()
}

/// The Observation whose local code is `code`.
fn obs<'a>(b: &'a Value, code: &str) -> &'a Value {
    of_type(b, "Observation")
        .into_iter()
        .find(|o| {
            o["code"]["coding"].as_array().unwrap().iter().any(|c| {
                c["code"] == code && c["system"].as_str().unwrap().starts_with("urn:labagent:")
            })
        })
        .unwrap_or_else(|| panic!("no Observation {code}"))
}

/// The JSON text of an Observation, for decimals as sent.
fn obs_json(json: &str, code: &str) -> String {
    let v: Value = serde_json::from_str(json).unwrap();
    let i = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| {
            e["resource"]["resourceType"] == "Observation"
                && e["resource"]["code"]["coding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| {
                        c["code"] == code
                            && c["system"].as_str().unwrap().starts_with("urn:labagent:")
                    })
        })
        .unwrap();
    // Entries are serialized in order; cut the i-th entry's text out of the Bundle.
    let mut depth = 0;
    let mut starts = Vec::new();
    let body = &json[json.find("\"entry\":[").unwrap() + 9..];
    let mut start = 0;
    for (k, ch) in body.char_indices() {
        match ch {
            '{' => {
                if depth == 0 {
                    start = k;
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    starts.push(body[start..=k].to_string());
                }
            }
            _ => {}
        }
    }
    starts[i].clone()
}

#[test]
fn erba_hematology_result_golden() {
    let (b, json) = map("hl7", &fixture("hl7/erba_elite580_1.hl7"));
    let o = obs(&b, "786-4");
    // OBX-3 system LN: a LOINC coding, and the local one.
    assert_eq!(
        o["code"]["coding"][0],
        serde_json::json!({"system": "http://loinc.org", "code": "786-4", "display": "MCHC"})
    );
    assert_eq!(o["code"]["coding"][1]["system"], "urn:labagent:lab-1:ch");
    assert_eq!(
        o["valueQuantity"],
        serde_json::json!({"value": 30.6, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"})
    );
    let text = obs_json(&json, "786-4");
    assert!(
        text.contains(r#""low":{"value":32.0,"unit":"g/dL""#),
        "{text}"
    );
    assert!(text.contains(r#""high":{"value":36.0,"#), "{text}");
    let flags: Vec<&str> = o["interpretation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["L", "A"]);
    assert_eq!(o["status"], "final");
    // OBX-14 empty: OBR-7, local time in Berlin (summer).
    assert_eq!(o["effectiveDateTime"], "2025-06-28T17:33:10+02:00");
    assert_eq!(o["issued"], "2026-11-28T14:05:00.250Z");
    // 4.20 keeps its trailing zero.
    assert!(obs_json(&json, "751-8").contains(r#""valueQuantity":{"value":4.20,"#));
    // 10*3/uL is UCUM already.
    assert_eq!(obs(&b, "6690-2")["valueQuantity"]["code"], "10*3/uL");
    // PID|1 has no id: no subject.
    assert!(o.get("subject").is_none());
    assert_eq!(of_type(&b, "Observation").len(), 36);
}

#[test]
fn roche_citm_decimal_commas_patient_notes_and_order_golden() {
    let settings = channel(|c| c.patient_id_system = Some("urn:oid:1.2.3.4".into()));
    let (b, json) = map_with(&settings, "hl7", &fixture("hl7/roche_citm_2.hl7")).unwrap();
    assert!(obs_json(&json, "21").contains(r#""valueQuantity":{"value":101.0,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}"#));
    assert!(obs_json(&json, "82").contains(r#""value":5.7,"#));
    let o = obs(&b, "89");
    assert_eq!(o["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(
        o["subject"],
        serde_json::json!({"type": "Patient", "identifier": {"system": "urn:oid:1.2.3.4", "value": "4637463G66"}})
    );
    assert_eq!(o["note"][0]["text"], "Comment·on·test·code·89");
    assert_eq!(o["effectiveDateTime"], "2011-09-27T15:47:34+02:00");
    let dr = of_type(&b, "DiagnosticReport")[0];
    assert_eq!(
        dr["basedOn"][0],
        serde_json::json!({"type": "ServiceRequest", "identifier": {"value": "20020604101"}})
    );
    assert_eq!(dr["code"]["coding"][0]["code"], "ALL");
    assert_eq!(dr["status"], "final");
    assert_eq!(dr["result"].as_array().unwrap().len(), 3);
    let sp = of_type(&b, "Specimen");
    assert_eq!(sp.len(), 1);
    assert_eq!(sp[0]["accessionIdentifier"]["value"], "20020604101");
    assert_eq!(dr["specimen"][0]["reference"], b["entry"][1]["fullUrl"]);
}

#[test]
fn ghh_structured_numeric_and_text_range() {
    let (b, _) = map("hl7", &fixture("hl7/hl7std_ghh_lab_oru_1.hl7"));
    let obs = of_type(&b, "Observation");
    assert_eq!(
        obs[0]["valueQuantity"],
        serde_json::json!({"value": 182, "unit": "mg/dl", "system": "http://unitsofmeasure.org", "code": "mg/dL"})
    );
    assert_eq!(
        obs[0]["referenceRange"][0],
        serde_json::json!({"text": "70_105"})
    );
    assert_eq!(obs[0]["interpretation"][0]["coding"][0]["code"], "H");
    // OBX-2 FN is not a numeric type: the value stays text.
    assert_eq!(obs[1]["valueString"], "^182");
    assert_eq!(
        obs[0]["subject"]["identifier"],
        serde_json::json!({"value": "555-44-4444"})
    );
}

#[test]
fn e411_code_map_unit_and_collection_time() {
    let settings = channel(|c| {
        c.code_map = Some(CodeMap {
            path: "/etc/labagent/codes.toml".into(),
            codes: BTreeMap::from([(
                "1/1/not".to_string(),
                CodeMapEntry {
                    loinc: "2986-8".into(),
                    display: Some("Testosterone [Mass/volume] in Serum or Plasma".into()),
                    unit: Some("ng/dL".into()),
                },
            )]),
        })
    });
    let (b, json) = map_with(&settings, "astm", &fixture("astm/roche_e411_1.astm")).unwrap();
    let o = obs(&b, "1/1/not");
    assert_eq!(o["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(o["code"]["coding"][0]["code"], "2986-8");
    // The map's unit replaces the instrument's.
    assert!(obs_json(&json, "1/1/not").contains(r#""valueQuantity":{"value":223.1,"unit":"ng/dL","system":"http://unitsofmeasure.org","code":"ng/dL"}"#));
    // R-13 and O-7 empty: O-8 (collection), Berlin winter time.
    assert_eq!(o["effectiveDateTime"], "2019-12-07T17:17:14+01:00");
    let d = &of_type(&b, "Device")[0];
    assert_eq!(d["deviceName"][0]["name"], "cobas-e411");
    assert_eq!(d["version"][0]["value"], "1");
    assert_eq!(
        b["entry"][0]["request"]["ifNoneExist"],
        "identifier=urn:labagent:lab-1|ch"
    );
    assert_eq!(
        b["entry"][2]["request"]["ifNoneExist"],
        "identifier=urn:labagent:lab-1|00c0ffee-000000000007/2"
    );
}

const RULES: &str = "H|\\^&|||Analyzer X^2.1^SN42|||||||P|1394-97|20250115093000\r\
P|1||PAT-1\r\
O|1|S-1||^^^CHEM|R|20250115080000|||||N||||SER\r\
R|1|^^^GLU^Glucose|<0,5|mmol/L|70 to 110|L\\LL||F||||20250115090000\r\
C|1|I|first^note|G\r\
R|2|^^^NA|140|mmol/l|<145|HH||C\r\
R|3|^^^K|pos||>1|X||X\r\
R|4|^^^CL|1e5||3.5-5.1|||P\r\
R|5|^^^CA|>=2.60|mmol/L||N|||\r\
P|2|||LAB-2\r\
O|2|S-2||^^^HEM|||||||Q\r\
R|1|^^^HB|13.2|g/dL||||F\r\
O|3|S-3||^^^URI\r\
R|1|^^^PH|6.5||5-8|||I\r\
L|1|N\r";

#[test]
fn rules_one_by_one() {
    let settings = channel(|c| c.patient_id_system = Some("https://hospital.example/mrn".into()));
    let (b, json) = map_with(&settings, "astm", RULES).unwrap();
    let glu = obs(&b, "GLU");
    // decimal comma with a comparator
    assert!(obs_json(&json, "GLU").contains(r#""valueQuantity":{"value":0.5,"comparator":"<","unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}"#));
    assert!(obs_json(&json, "GLU").contains(r#""referenceRange":[{"low":{"value":70,"#));
    let f: Vec<&str> = glu["interpretation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(f, ["L", "LL"]);
    assert_eq!(glu["note"][0]["text"], "first note");
    assert_eq!(glu["effectiveDateTime"], "2025-01-15T09:00:00+01:00");
    assert_eq!(
        glu["subject"]["identifier"],
        serde_json::json!({"system": "https://hospital.example/mrn", "value": "PAT-1"})
    );
    let na = obs(&b, "NA");
    assert_eq!(na["status"], "corrected");
    assert_eq!(na["valueQuantity"]["code"], "mmol/L");
    assert_eq!(na["valueQuantity"]["unit"], "mmol/l");
    assert!(obs_json(&json, "NA").contains(r#""referenceRange":[{"high":{"value":145,"#));
    assert_eq!(
        na["interpretation"][0]["coding"][0]["display"],
        "Critical high"
    );
    // R-13 empty: O-7.
    assert_eq!(na["effectiveDateTime"], "2025-01-15T08:00:00+01:00");
    let k = obs(&b, "K");
    assert_eq!(k["valueString"], "pos");
    assert_eq!(k["status"], "cancelled");
    assert!(obs_json(&json, "K").contains(r#""referenceRange":[{"low":{"value":1}}]"#));
    assert_eq!(k["interpretation"][0], serde_json::json!({"text": "X"}));
    let cl = obs(&b, "CL");
    assert_eq!(cl["valueString"], "1e5");
    assert_eq!(cl["status"], "preliminary");
    let ca = obs(&b, "CA");
    assert_eq!(ca["valueQuantity"]["comparator"], ">=");
    assert!(obs_json(&json, "CA").contains(r#""value":2.60,"#));
    assert_eq!(ca["status"], "unknown");
    // The second patient's order with O-12 = Q is QC: left out; its third order is not.
    assert_eq!(of_type(&b, "Observation").len(), 6);
    let ph = obs(&b, "PH");
    assert_eq!(ph["status"], "registered");
    assert_eq!(ph["subject"]["identifier"]["value"], "LAB-2");
    assert_eq!(
        ph["effectiveDateTime"], "2025-01-15T09:30:00+01:00",
        "H-14 last"
    );
    let drs = of_type(&b, "DiagnosticReport");
    assert_eq!(drs.len(), 2);
    assert_eq!(drs[0]["status"], "corrected", "any corrected");
    assert_eq!(drs[1]["status"], "preliminary", "not all final");
    assert_eq!(
        drs[0]["code"]["coding"][0],
        serde_json::json!({"system": "urn:labagent:lab-1:ch", "code": "CHEM"})
    );
    let sp = of_type(&b, "Specimen");
    assert_eq!(sp.len(), 2, "S-2 belongs to the QC order only");
    assert_eq!(sp[0]["type"]["text"], "SER");
    assert_eq!(sp[1]["subject"]["identifier"]["value"], "LAB-2");
}

#[test]
fn default_code_is_loinc_laboratory_report_and_code_component() {
    let text = "H|\\^&\rR|1|ALT^GPT^9|12|U/L\rL|1\r";
    let (b, _) = map("astm", text);
    assert_eq!(
        of_type(&b, "DiagnosticReport")[0]["code"]["coding"][0]["code"],
        "11502-2"
    );
    assert_eq!(
        of_type(&b, "Observation")[0]["code"]["coding"][0]["code"],
        "ALT"
    );
    let (b, _) = map_with(&channel(|c| c.code_component = Some(2)), "astm", text).unwrap();
    assert_eq!(
        of_type(&b, "Observation")[0]["code"]["coding"][0]["code"],
        "GPT"
    );
}

#[test]
fn queries_qc_and_empty_messages_are_skipped_by_policy() {
    let skip = |s: &BTreeMap<String, ChannelFhir>, proto: &str, t: &str| match map_with(s, proto, t)
    {
        Err(Skip::Policy(why)) => why,
        other => panic!("expected a policy skip, got {:?}", other.map(|x| x.1)),
    };
    let d = channel(|_| {});
    assert!(skip(&d, "astm", &fixture("astm/roche_e411_query_1.astm")).contains("query"));
    assert!(
        skip(&d, "astm", &fixture("astm/ortho_vitros3600_order_1.astm")).contains("no results")
    );
    assert!(skip(&d, "hl7", &fixture("hl7/mindray_cl2000i_qry_1.hl7")).contains("QRY^Q02"));
    assert!(
        skip(&d, "astm", &fixture("astm/horiba_yumizenh500_1.astm")).contains("quality control")
    );
    // A vendor marker: Mindray's H-12 "QR" on a message with a result.
    let mindray = "H|\\^&|||Mindry^^|||||||QR|1394-97|20250701174411\rP|1\rO|1|||P^P\rR|1|^^^GLU|5.1|mmol/L\rL|1|N\r";
    assert!(
        map_with(&d, "astm", mindray).is_ok(),
        "QR is not a marker by default"
    );
    let marked = channel(|c| c.qc_markers = vec!["QR".into()]);
    assert!(skip(&marked, "astm", mindray).contains("quality control"));
    // fhir_skip_qc = false posts QC too.
    let keep = channel(|c| c.skip_qc = false);
    assert!(map_with(&keep, "astm", &fixture("astm/horiba_yumizenh500_1.astm")).is_ok());
    // HL7: Mindray marks QC with MSH-16 = 2.
    let qc = "MSH|^~\\&|||||20120508103014||ORU^R01|1|P|2.3.1||||2||ASCII\rOBR|1|7|AST\rOBX|1|NM|5|AST|26.4|U/L|||||F\r";
    assert!(map_with(&d, "hl7", qc).is_ok());
    assert!(
        skip(&channel(|c| c.qc_markers = vec!["2".into()]), "hl7", qc).contains("quality control")
    );
    let spm = "MSH|^~\\&|A||||20240101||OUL^R22|1|P|2.5.1\rSPM|1|S9||BLD|||||||Q\rOBR|1||S9|X\rOBX|1|NM|X||1\r";
    assert!(skip(&d, "hl7", spm).contains("quality control"));
}

#[test]
fn raw_channels_map_when_the_text_is_astm_or_hl7() {
    let (b, _) = map("raw", "\u{2}H|\\^&|||Maglumi\rR|1|^^^TSH|1.2|uIU/mL\rL|1\r");
    assert_eq!(
        of_type(&b, "Observation")[0]["valueQuantity"]["code"],
        "u[IU]/mL"
    );
    match map_with(&channel(|_| {}), "raw", "WBC 6.5 RBC 4.1") {
        Err(Skip::NotMappable(_)) => {}
        other => panic!("{:?}", other.map(|x| x.1)),
    }
}

#[test]
fn the_bundle_is_a_pure_function_of_the_message() {
    let t = fixture("hl7/roche_citm_1.hl7");
    let a = map("hl7", &t).1;
    let b = map("hl7", &t).1;
    assert_eq!(a, b);
}

#[test]
fn hl7_results_without_a_type_and_escapes() {
    // cITm sends OBX-5 "1\S\2.14" with no OBX-2: text, unescaped.
    let (b, _) = map("hl7", &fixture("hl7/roche_citm_1.hl7"));
    let o = obs(&b, "HIVAG_01");
    assert_eq!(o["valueString"], "1^2.14");
    assert_eq!(of_type(&b, "Observation").len(), 16);
    // OUL^R21: specimen from OBR-2 (OBR-3 empty).
    assert_eq!(
        of_type(&b, "Specimen")[0]["accessionIdentifier"]["value"],
        "AA5OEB6WYN"
    );
}
