//! The real `labagent run` with `format = "fhir"` against a local FHIR test server
//! (`tests/src/fhir_server.rs`): an ASTM instrument and an HL7 analyzer send real
//! fixtures over TCP; their results arrive as Observations (code map, time zone and
//! patient id system applied), a host query stays in the store as delivered by policy
//! with the reason in its meta, and a Bundle the server refuses is kept as rejected with
//! the OperationOutcome's text, visible in `labagent queue`. Also `labagent map` and
//! `check-config` on code maps and zones. Every wait is on an event.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use labagent::simulate::AstmInstrument;
use labagent_tests::config::free_port;
use labagent_tests::fhir_server::FhirServer;
use labagent_tests::process::AgentProcess;

const T: Duration = Duration::from_secs(60);

fn fixture(rel: &str) -> Vec<u8> {
    for base in [
        labagent_tests::repo_path("../shared/fixtures"),
        PathBuf::from("/work/shared/fixtures"),
    ] {
        if base.join(rel).is_file() {
            return std::fs::read(base.join(rel)).unwrap();
        }
    }
    panic!("fixture {rel} not found");
}

const CODE_MAP: &str = "# cobas e 411\n\"1/1/not\" = { loinc = \"2986-8\", display = \"Testosterone [Mass/volume] in Serum or Plasma\", unit = \"pg/mL\" }\n";

fn write_config(dir: &Path, url: &str, astm: u16, hl7: u16) -> PathBuf {
    let map = dir.join("codes-e411.toml");
    std::fs::write(&map, CODE_MAP).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"lab-e2e\"\nstate_dir = \"{state}\"\nstatus_socket = \"{sock}\"\n\
             [uplink]\nkind = \"http\"\nurl = \"{url}\"\nformat = \"fhir\"\nallow_plain_http = true\n\
             [uplink.auth]\nmethod = \"none\"\n\
             [[channel]]\nname = \"e411\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:{astm}\"\n\
             code_map = \"{map}\"\ntimezone = \"Europe/Berlin\"\npatient_id_system = \"urn:oid:1.2.3.4\"\n\
             [[channel]]\nname = \"erba\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:{hl7}\"\ntimezone = \"America/New_York\"\n",
            state = dir.join("state").display(),
            sock = dir.join("status.sock").display(),
            map = map.display(),
        ),
    )
    .unwrap();
    cfg
}

fn labagent(cfg: &Path, args: &[&str]) -> labagent_tests::Run {
    labagent_tests::run(
        labagent_tests::labagent()
            .arg("--config")
            .arg(cfg)
            .args(args),
    )
}

/// Sends one HL7 message over MLLP and returns the ACK.
fn mllp(port: u16, msg: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).unwrap();
    let mut ack = Vec::new();
    let mut buf = [0u8; 1024];
    while !ack.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the ACK");
        ack.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&ack).into_owned()
}

#[test]
fn results_arrive_as_fhir_and_the_rest_is_kept_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = FhirServer::start();
    server.refuse_code("REFUSED");
    let (astm, hl7) = (free_port(), free_port());
    let cfg = write_config(dir.path(), &server.base(), astm, hl7);
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);

    let refused =
        b"H|\\^&|||X^1\rP|1||PAT-9\rO|1|S-9||^^^R\rR|1|^^^REFUSED|1.0|mmol/L||||F\rL|1|N\r"
            .to_vec();
    let messages = vec![
        fixture("astm/roche_e411_1.astm"),
        fixture("astm/roche_e411_query_1.astm"),
        refused,
    ];
    let mut s = TcpStream::connect(("127.0.0.1", astm)).unwrap();
    let sent = AstmInstrument::new(None)
        .send_all(&mut s, &messages)
        .unwrap();
    assert!(sent.iter().all(|x| x.delivered), "{sent:?}");
    let ack = mllp(hl7, &fixture("hl7/erba_elite580_1.hl7"));
    assert!(ack.contains("MSA|AA"), "{ack}");

    server.wait_count("Observation", 37, T);
    agent.wait_line(0, &["kept as delivered by policy"], T);
    agent.wait_line(0, &["kept as rejected"], T);

    // The e411 result: LOINC from the code map, its unit, Berlin time, the patient system.
    let obs = server.resources("Observation");
    let e411 = obs
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "2986-8")
        .expect("the mapped e411 result");
    assert_eq!(e411["valueQuantity"]["value"], 223.1);
    assert_eq!(e411["valueQuantity"]["code"], "pg/mL");
    assert_eq!(e411["effectiveDateTime"], "2019-12-07T17:17:14+01:00");
    assert!(e411["device"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Device/"));
    // The HL7 analyzer's results in New York time; one Device per channel.
    let wbc = obs
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "6690-2")
        .unwrap();
    assert_eq!(wbc["effectiveDateTime"], "2025-06-28T17:33:10-04:00");
    assert_eq!(server.count("Device"), 2);
    assert_eq!(server.count("DiagnosticReport"), 2);

    // What was not posted is in the store with its reason.
    let list = labagent(&cfg, &["queue", "list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    let rejected = list
        .stdout
        .lines()
        .find(|l| l.contains("rejected"))
        .unwrap_or_else(|| panic!("{list:?}"));
    assert!(
        rejected.contains("HTTP 422: error: Observation code REFUSED is not allowed here (test server) (Observation.code)"),
        "{rejected}"
    );
    let rejected_id = rejected.split_whitespace().next().unwrap();
    let show = labagent(&cfg, &["queue", "show", rejected_id]);
    assert!(
        show.stdout
            .contains("reason: HTTP 422: error: Observation code REFUSED"),
        "{show:?}"
    );
    assert!(
        show.stdout.contains("R|1|^^^REFUSED|1.0|mmol/L"),
        "the bytes are kept: {show:?}"
    );
    let ids: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut policy = 0;
    for id in &ids {
        let show = labagent(&cfg, &["queue", "show", id]);
        if show
            .stdout
            .contains("\"delivered_by_policy\":\"host query (Q records), no results\"")
        {
            policy += 1;
        }
    }
    assert_eq!(policy, 1, "{}", list.stdout);
    // The FHIR lines name message ids and reasons, never patient ids.
    for l in agent
        .log()
        .lines()
        .filter(|l| l.contains("FHIR") || l.contains("by policy"))
    {
        assert!(!l.contains("PAT-9"), "{l}");
    }
    assert!(agent.terminate(T).success());
}

#[test]
fn map_prints_the_bundle_and_check_config_checks_code_maps_and_zones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "http://127.0.0.1:9/fhir/R4",
        free_port(),
        free_port(),
    );
    let e411 = dir.path().join("e411.astm");
    std::fs::write(&e411, fixture("astm/roche_e411_1.astm")).unwrap();
    let out = labagent(&cfg, &["map", "--channel", "e411", e411.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let b: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(b["type"], "transaction");
    assert_eq!(
        b["entry"][2]["resource"]["code"]["coding"][0]["code"],
        "2986-8"
    );
    assert!(
        out.stderr
            .contains("# 4 entries; 0 test codes without a LOINC mapping"),
        "{out:?}"
    );
    // HL7 with LF line ends (as a file edited by hand), an unmapped code reported.
    let h = dir.path().join("m.hl7");
    std::fs::write(
        &h,
        "MSH|^~\\&|A||||20240101||ORU^R01|1|P|2.5\nOBR|1||S1|X\nOBX|1|NM|K||4.1|mmol/L\n",
    )
    .unwrap();
    let out = labagent(&cfg, &["map", "--channel", "erba", h.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("1 test codes without a LOINC mapping: K"),
        "{out:?}"
    );
    // A query: no Bundle, the reason.
    let q = dir.path().join("q.astm");
    std::fs::write(&q, fixture("astm/roche_e411_query_1.astm")).unwrap();
    let out = labagent(&cfg, &["map", "--channel", "e411", q.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.is_empty() && out.stderr.contains("not posted as FHIR"),
        "{out:?}"
    );
    let out = labagent(&cfg, &["map", "--channel", "nope", q.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");

    // check-config: the code map's own file, line and column; a flagged unit; a bad zone.
    let ok = labagent(&cfg, &["check-config"]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(
        ok.stdout.contains("code_map = ") && ok.stdout.contains("# 1 codes"),
        "{ok:?}"
    );
    assert!(ok.stdout.contains("timezone = \"Europe/Berlin\""), "{ok:?}");
    let map = dir.path().join("codes-e411.toml");
    std::fs::write(
        &map,
        "[GLU]\nloinc = \"2345-7\"\nunit = \"mg/dL\"\n[NA]\nloinc = \"2951-2\"\nunit = \"mEq/L\"\n",
    )
    .unwrap();
    let flagged = labagent(&cfg, &["check-config"]);
    assert_eq!(flagged.code, Some(0), "{flagged:?}");
    let at = format!("warning: {}:6:8: code \"NA\".unit", map.display());
    assert!(
        flagged.stderr.contains(&at) && flagged.stderr.contains("mEq/L"),
        "{flagged:?}"
    );
    std::fs::write(
        &map,
        "[GLU]\nloinc = \"2345-7\"\nunit = \"mg/dL\"\n[NA]\nloinc = \"2951-3\"\n",
    )
    .unwrap();
    let bad = labagent(&cfg, &["check-config"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    let at = format!("{}:5:9: code \"NA\".loinc", map.display());
    assert!(bad.stderr.contains(&at), "{bad:?}");
    assert!(bad.stderr.contains("check digit should be 2"), "{bad:?}");
    std::fs::write(&map, CODE_MAP).unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("Europe/Berlin", "Europe/Berln");
    std::fs::write(&cfg, text).unwrap();
    let bad = labagent(&cfg, &["check-config"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(
        bad.stderr
            .contains("channel \"e411\".timezone: unknown time zone \"Europe/Berln\""),
        "{bad:?}"
    );
}
