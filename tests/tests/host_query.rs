//! Host queries against the real binary (issue 17): `labagent simulate --query` plays an
//! analyzer asking for its specimens over TCP; the agent answers from its order cache
//! (orders = "query"), else "no information" — ASTM and HL7 (QBP^Q11). The cache is
//! filled through the store before the agent starts, as orders fed earlier would be.

use std::time::Duration;

use labagent::store::{NewOrder, OrderState, Protocol, Store, StoreOptions};
use labagent_tests::config;
use labagent_tests::process::AgentProcess;

const T: Duration = Duration::from_secs(30);

fn simulate_query(protocol: &str, port: u16, ids: &str) -> labagent_tests::Run {
    labagent_tests::run(
        labagent_tests::labagent()
            .args(["simulate", "--protocol", protocol, "--no-pacing"])
            .args(["--connect", &format!("127.0.0.1:{port}")])
            .args(["--query", ids, "--query-wait", "20"]),
    )
}

#[test]
fn simulate_query_gets_cached_orders_then_no_information() {
    let dir = tempfile::tempdir().unwrap();
    let (astm, hl7) = (config::free_port(), config::free_port());
    let channels = format!(
        "{}orders = \"query\"\nquery_timeout = \"3s\"\n{}orders = \"query\"\n",
        config::listen_channel("chem", "astm", astm),
        config::listen_channel("lab7", "hl7", hl7),
    );
    let cfg = config::write(dir.path(), "hq", &config::dead_url(), "", &channels);
    {
        let store = Store::open(
            dir.path().join("state").join("store"),
            StoreOptions::default(),
        )
        .unwrap();
        for (id, sid) in [("o1", "S1"), ("o2", "S2")] {
            let o = NewOrder {
                id: id.into(),
                channel: "chem".into(),
                text: format!("H|\\^&|||LIS\nP|1||PID-{sid}\nO|1|{sid}||^^^GLU\nL|1|N\n"),
                specimens: Vec::new(),
            };
            assert!(store.put_order_for(o, Protocol::Astm).unwrap());
        }
    }
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);

    // Two of three specimens known: one answer with both orders' records.
    let r = simulate_query("astm", astm, "S2,S9,S1");
    assert_eq!(r.code, Some(0), "{r:?}");
    let answer: Vec<&str> = r.stdout.lines().skip(1).map(str::trim).collect();
    assert_eq!(
        answer,
        [
            "H|\\^&|||LIS",
            "P|1||PID-S1",
            "O|1|S1||^^^GLU",
            "P|2||PID-S2",
            "O|1|S2||^^^GLU",
            "L|1|N"
        ],
        "{r:?}"
    );
    agent.wait_line(0, &["host query answered", "from=\"cache\""], T);
    // Asked again: the orders were used; nothing is sent twice.
    let r = simulate_query("astm", astm, "S1");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("  L|1|I\n"), "{r:?}");
    assert!(r.stdout.contains("knows nothing"), "{r:?}");
    // HL7: RSP^K11 with QAK-2 NF.
    let r = simulate_query("hl7", hl7, "SPC-1");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("RSP^K11"), "{r:?}");
    assert!(r.stdout.contains("knows nothing"), "{r:?}");
    assert!(agent.terminate(T).success());
    let store = Store::open(
        dir.path().join("state").join("store"),
        StoreOptions::default(),
    )
    .unwrap();
    for id in ["o1", "o2"] {
        assert_eq!(
            store.order(id).unwrap().unwrap().state,
            OrderState::AnsweredQuery
        );
    }
}
