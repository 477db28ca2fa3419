//! The `format = "fhir"` keys: validation with positions, the code map read with the
//! config, the effective settings printing and re-reading them.

use std::path::Path;

use labagent_config::{load_str, Format, LoadOptions};

fn opts() -> LoadOptions {
    LoadOptions::with_env(Vec::<(String, String)>::new())
}

fn config(format: &str, channel_extra: &str) -> String {
    format!(
        "[agent]\nid = \"a\"\n[uplink]\nkind = \"http\"\nurl = \"https://fhir.example/fhir/R4\"\nformat = \"{format}\"\n\
         [uplink.auth]\nmethod = \"none\"\n\
         [[channel]]\nname = \"c\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:7001\"\n{channel_extra}\
         [[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:7002\"\n"
    )
}

#[test]
fn keys_are_kept_printed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("codes.toml");
    std::fs::write(&map, "GLU = { loinc = \"2345-7\", unit = \"mg/dL\" }\n").unwrap();
    let extra = format!(
        "code_map = \"{}\"\ntimezone = \"Europe/Berlin\"\npatient_id_system = \"urn:oid:1.2.3\"\n\
         fhir_skip_qc = false\nfhir_qc_markers = [\"QR\", \"Q\"]\ncode_component = 4\n",
        map.display()
    );
    let c = load_str(&config("fhir", &extra), Path::new("t.toml"), &opts())
        .unwrap()
        .config;
    assert_eq!(c.uplink.format, Format::Fhir);
    let f = &c.uplink.fhir["c"];
    assert_eq!(f.code_map.as_ref().unwrap().codes["GLU"].loinc, "2345-7");
    assert_eq!(f.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(f.patient_id_system.as_deref(), Some("urn:oid:1.2.3"));
    assert!(!f.skip_qc);
    assert_eq!(f.qc_markers, ["QR"], "Q is always a marker");
    assert_eq!(f.code_component, Some(4));
    // format = "fhir": every channel has settings, defaults for the one without keys.
    assert!(c.uplink.fhir["h"].is_default());
    let printed = c.effective_toml();
    assert!(
        printed.contains("timezone = \"Europe/Berlin\""),
        "{printed}"
    );
    assert!(printed.contains("fhir_qc_markers = [\"QR\"]"), "{printed}");
    assert!(printed.contains("# 1 codes"), "{printed}");
    let again = load_str(&printed, Path::new("e.toml"), &opts())
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.config, c);
    // With another format, only channels that set a key keep them.
    let raw = load_str(
        &config("raw", "timezone = \"UTC\"\n"),
        Path::new("t.toml"),
        &opts(),
    )
    .unwrap()
    .config;
    assert_eq!(raw.uplink.fhir.keys().collect::<Vec<_>>(), ["c"]);
}

#[test]
fn problems_are_reported_with_positions() {
    let text = config(
        "fhir",
        "code_map = \"codes.toml\"\ntimezone = \"Mars/Olympus\"\npatient_id_system = \"not a uri\"\ncode_component = 0\n",
    );
    let e = load_str(&text, Path::new("t.toml"), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:13:12: channel \"c\".code_map: expected an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:14:12: channel \"c\".timezone: unknown time zone \"Mars/Olympus\""),
        "{e}"
    );
    assert!(
        e.contains("channel \"c\".patient_id_system: expected a URI"),
        "{e}"
    );
    assert!(
        e.contains("channel \"c\".code_component: expected an integer from 1 to 32, got 0"),
        "{e}"
    );
    let missing = config("fhir", "code_map = \"/nonexistent/codes.toml\"\n");
    let e = load_str(&missing, Path::new("t.toml"), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read code map /nonexistent/codes.toml"),
        "{e}"
    );
    let typo = config("fhir", "timezon = \"UTC\"\n");
    let e = load_str(&typo, Path::new("t.toml"), &opts()).unwrap_err();
    assert_eq!(e.diagnostics()[0].hint.as_deref(), Some("timezone"), "{e}");
    let mqtt = "[agent]\nid = \"a\"\n[uplink]\nkind = \"mqtt\"\nformat = \"fhir\"\n[uplink.auth]\nmethod = \"none\"\n[uplink.mqtt]\nurl = \"mqtts://b:8883\"\n";
    let e = load_str(mqtt, Path::new("t.toml"), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:5:10: uplink.format: \"fhir\" posts transaction Bundles over HTTP"),
        "{e}"
    );
}
