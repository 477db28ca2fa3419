//! Host queries answered by `[uplink] query_url`, against the real binary: the analyzer
//! (`labagent simulate --query`) gets the upstream's answer; with the upstream down the
//! answer comes from the order cache; with the upstream slower than `query_timeout`, the
//! cache answers in time.

use std::path::Path;
use std::time::{Duration, Instant};

use labagent::store::{NewOrder, Protocol, Store, StoreOptions};
use labagent_tests::config;
use labagent_tests::process::AgentProcess;
use labagent_tests::upstream::{Page, Upstream};

const T: Duration = Duration::from_secs(30);

fn simulate_query(port: u16, ids: &str) -> labagent_tests::Run {
    labagent_tests::run(
        labagent_tests::labagent()
            .args(["simulate", "--protocol", "astm", "--no-pacing"])
            .args(["--connect", &format!("127.0.0.1:{port}")])
            .args(["--query", ids, "--query-wait", "20"]),
    )
}

/// The config with `query_url`, one ASTM channel on `port` with `channel_extra`.
fn write_config(dir: &Path, query_url: &str, port: u16, channel_extra: &str) -> std::path::PathBuf {
    let up_url = config::dead_url();
    let channels = format!(
        "{}{channel_extra}",
        config::listen_channel("chem", "astm", port)
    );
    let cfg = config::write(dir, "qu", &up_url, "", &channels);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "allow_plain_http = true\n",
        &format!("allow_plain_http = true\nquery_url = \"{query_url}\"\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// One cached order for specimen S1, put in before the agent starts.
fn cache_order(dir: &Path) {
    let store = Store::open(dir.join("state").join("store"), StoreOptions::default()).unwrap();
    let o = NewOrder {
        id: "o1".into(),
        channel: "chem".into(),
        text: "H|\\^&|||LIS\nP|1||PID-1\nO|1|S1||^^^CACHE\nL|1|N\n".into(),
        specimens: Vec::new(),
    };
    assert!(store.put_order_for(o, Protocol::Astm).unwrap());
}

fn answer_lines(r: &labagent_tests::Run) -> Vec<String> {
    r.stdout
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn the_upstream_answers_the_analyzer() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    up.push_query_answer(Page::Json(
        "H|\\^&|||LIS\nP|1||PID-9\nO|1|S1||^^^UPSTREAM\nL|1|N\n".into(),
    ));
    let port = config::free_port();
    let cfg = write_config(dir.path(), &up.url("/query"), port, "");
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    let r = simulate_query(port, "S1");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        answer_lines(&r),
        ["H|\\^&|||LIS", "P|1||PID-9", "O|1|S1||^^^UPSTREAM", "L|1|N"],
        "{r:?}"
    );
    agent.wait_line(0, &["host query answered", "from=\"upstream\""], T);
    let q = up
        .requests()
        .into_iter()
        .find(|x| x.path == "/query")
        .unwrap();
    assert_eq!(q.method, "POST");
    assert_eq!(q.header("x-labagent-kind"), Some("query"));
    assert_eq!(q.header("x-labagent-specimens"), Some("S1"));
    assert_eq!(q.header("x-labagent-channel"), Some("chem"));
    assert!(q.header("idempotency-key").is_none());
    assert!(
        String::from_utf8_lossy(&q.body).contains("Q|1|"),
        "the query as received"
    );
    assert!(agent.terminate(T).success());
}

#[test]
fn with_the_upstream_down_the_cache_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = config::free_port();
    let cfg = write_config(
        dir.path(),
        &config::dead_url(),
        port,
        "orders = \"query\"\n",
    );
    cache_order(dir.path());
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    let r = simulate_query(port, "S1");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        answer_lines(&r).contains(&"O|1|S1||^^^CACHE".to_string()),
        "{r:?}"
    );
    agent.wait_line(0, &["host query answered", "from=\"cache\""], T);
    assert!(agent.terminate(T).success());
}

#[test]
fn an_upstream_slower_than_query_timeout_leaves_the_answer_to_the_cache_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start();
    up.push_query_answer(Page::Hold);
    let port = config::free_port();
    let cfg = write_config(
        dir.path(),
        &up.url("/query"),
        port,
        "orders = \"query\"\nquery_timeout = \"2s\"\n",
    );
    cache_order(dir.path());
    let mut agent = AgentProcess::start(&cfg);
    agent.wait_line(0, &["agent running"], T);
    let t0 = Instant::now();
    let r = simulate_query(port, "S1");
    let took = t0.elapsed();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        answer_lines(&r).contains(&"O|1|S1||^^^CACHE".to_string()),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    agent.wait_line(0, &["host query answered", "from=\"cache\""], T);
    // The held query never made the agent's stop wait.
    let t0 = Instant::now();
    assert!(agent.terminate(T).success());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    up.release();
}
