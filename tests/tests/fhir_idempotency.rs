//! The `format = "fhir"` uplink against a FHIR test server that honours `ifNoneExist`
//! (`tests/src/fhir_server.rs`): the same Bundle posted twice — again by hand, or retried
//! after its answer was lost — creates each resource once; a Bundle the server refuses
//! is kept as rejected with the OperationOutcome's text while the uplink goes on; what is
//! not results is never posted; a 2xx that is not a FHIR answer pauses the uplink.
//! Time is a virtual clock: backoff waits take no time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use labagent::uplink::{
    AuthSettings, Format, MemoryQueue, MemoryTokenCache, Outgoing, Protocol, Uplink,
    UplinkSettings, UplinkState, VirtualClock,
};
use labagent_config::ChannelFhir;
use labagent_tests::fhir_server::FhirServer;
use labagent_tests::upstream::Upstream;

const RESULT: &str = "H|\\^&|||Analyzer^1.0|||||||P|1394-97|20250115093000\rP|1||PAT-7\rO|1|S-77||^^^CHEM\rR|1|^^^GLU|5.4|mmol/L|3.9-6.1|N||F\rR|2|^^^NA|141|mmol/L|135-145|N||F\rL|1|N\r";

fn message(id: &str, text: &str) -> Outgoing {
    Outgoing {
        id: id.to_string(),
        channel: "chem".into(),
        protocol: Protocol::Astm,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_874_700),
        clock_synced: Some(true),
        text: text.to_string(),
        meta: serde_json::json!({}),
    }
}

fn uplink(url: &str, q: &MemoryQueue, budget: usize) -> (Uplink, Arc<VirtualClock>) {
    let mut s = UplinkSettings::new(url, "lab-1");
    s.format = Format::Fhir;
    s.allow_plain_http = true;
    s.fhir = BTreeMap::from([(
        "chem".to_string(),
        ChannelFhir {
            timezone: Some("UTC".into()),
            ..ChannelFhir::defaults()
        },
    )]);
    let clock = VirtualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_877_987),
        budget,
    );
    let up = Uplink::new(
        s,
        AuthSettings::none(),
        Arc::new(q.clone()),
        Arc::new(MemoryTokenCache::new()),
        clock.clone(),
    )
    .unwrap();
    (up, clock)
}

/// Device 1, Specimen 1, Observations 2, DiagnosticReport 1.
fn assert_stored_once(s: &FhirServer) {
    assert_eq!(
        (
            s.count("Device"),
            s.count("Specimen"),
            s.count("Observation"),
            s.count("DiagnosticReport")
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(s.creates(), 5);
}

#[test]
fn the_same_bundle_posted_twice_creates_each_resource_once() {
    let server = FhirServer::start();
    let q = MemoryQueue::new();
    q.push(message("00c0ffee-000000000001", RESULT));
    let (mut up, _) = uplink(&server.base(), &q, 0);
    assert!(up.drain());
    assert_eq!(q.confirmed(), ["00c0ffee-000000000001"]);
    assert_stored_once(&server);
    // The same message again (an operator's `queue retry`, a confirmation lost in a crash).
    q.push(message("00c0ffee-000000000001", RESULT));
    assert!(up.drain());
    assert_eq!(server.transactions(), 2);
    assert_stored_once(&server);
    // References were resolved to the stored resources, the device included.
    let obs = server.resources("Observation");
    let dev = &server.resources("Device")[0];
    assert_eq!(
        obs[0]["device"]["reference"],
        format!("Device/{}", dev["id"].as_str().unwrap())
    );
    let dr = &server.resources("DiagnosticReport")[0];
    assert_eq!(
        dr["result"][1]["reference"],
        format!("Observation/{}", obs[1]["id"].as_str().unwrap())
    );
    assert!(server
        .content_types()
        .iter()
        .all(|c| c == "application/fhir+json"));
    // Another message of the channel: new results, the same Device.
    q.push(message(
        "00c0ffee-000000000002",
        &RESULT.replace("5.4", "5.5"),
    ));
    assert!(up.drain());
    assert_eq!(server.count("Device"), 1);
    assert_eq!(server.count("Observation"), 4);
}

#[test]
fn a_bundle_retried_after_a_lost_answer_creates_nothing_twice() {
    let server = FhirServer::start();
    server.lose_responses(1);
    let q = MemoryQueue::new();
    q.push(message("00c0ffee-000000000003", RESULT));
    let (mut up, clock) = uplink(&server.base(), &q, 5);
    assert!(up.drain());
    assert_eq!(server.transactions(), 2, "processed, answer lost, retried");
    assert_eq!(clock.sleeps().len(), 1, "one backoff wait");
    assert_eq!(q.confirmed(), ["00c0ffee-000000000003"]);
    assert_stored_once(&server);
}

#[test]
fn a_refused_bundle_is_kept_rejected_with_the_outcome_and_the_uplink_goes_on() {
    let server = FhirServer::start();
    server.refuse_code("NA");
    let q = MemoryQueue::new();
    q.push(message("00c0ffee-000000000004", RESULT));
    let other = "H|\\^&\rP|1||PAT-8\rO|1|S-78\rR|1|^^^GLU|6.0|mmol/L||||F\rL|1|N\r";
    q.push(message("00c0ffee-000000000005", other));
    let (mut up, _) = uplink(&server.base(), &q, 0);
    assert!(up.drain());
    let rejected = q.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, "00c0ffee-000000000004");
    assert_eq!(
        rejected[0].1,
        "HTTP 422: error: Observation code NA is not allowed here (test server) (Observation.code)"
    );
    assert_eq!(q.confirmed(), ["00c0ffee-000000000005"]);
    assert_eq!(server.count("Observation"), 1);
}

#[test]
fn queries_and_unreadable_text_are_never_posted() {
    let server = FhirServer::start();
    let q = MemoryQueue::new();
    q.push(message(
        "00c0ffee-000000000006",
        "H|\\^&\rQ|1|^SID1||^^^ALL\rL|1|N\r",
    ));
    let mut garbage = message("00c0ffee-000000000007", "WBC 6.5 RBC 4.1");
    garbage.protocol = Protocol::Raw;
    q.push(garbage);
    let (mut up, _) = uplink(&server.base(), &q, 0);
    assert!(up.drain());
    assert_eq!(server.transactions(), 0);
    use labagent::uplink::queue::Fate;
    assert_eq!(
        q.log(),
        [
            Fate::Skipped("00c0ffee-000000000006".into(), "host query (Q records), no results".into()),
            Fate::Rejected(
                "00c0ffee-000000000007".into(),
                "cannot be mapped to FHIR: raw channel text that is neither HL7 (MSH) nor ASTM records (H)".into()
            ),
        ]
    );
}

#[test]
fn a_2xx_that_is_not_a_fhir_answer_pauses_and_keeps_the_message() {
    // The JSON-ingest test upstream answers 200 `{}`: e.g. uplink.url left on a Bot.
    let up_server = Upstream::start();
    let q = MemoryQueue::new();
    q.push(message("00c0ffee-000000000008", RESULT));
    let (mut up, _) = uplink(&up_server.url("/Bot/1/$execute"), &q, 1);
    let status = up.subscribe();
    assert!(!up.drain(), "the uplink pauses");
    assert_eq!(q.pending(), 1);
    assert!(q.log().is_empty());
    let state = status.borrow().state.clone();
    match state {
        UplinkState::Paused { reason } => assert!(reason.contains("FHIR"), "{reason}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn server_errors_back_off_and_retry_the_same_bundle() {
    let server = FhirServer::start();
    server.script(503, 1);
    server.script(500, 1);
    let q = MemoryQueue::new();
    q.push(message("00c0ffee-000000000009", RESULT));
    let (mut up, clock) = uplink(&server.base(), &q, 5);
    assert!(up.drain());
    assert_eq!(clock.sleeps().len(), 2);
    assert_eq!(q.confirmed(), ["00c0ffee-000000000009"]);
    assert_stored_once(&server);
}
