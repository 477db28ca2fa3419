//! A table of broken configs: each must be refused with the exact line and column, a
//! message naming what was expected, and (for typos) the closest valid key or value.

use std::io::Write;
use std::path::Path;

use labagent_config::{load_str, ConfigError, Diagnostic, LoadOptions};

/// `[agent]` and an `[uplink]` without auth: 9 lines, so channel keys start on line 10.
const HEAD: &str = r#"[agent]
id = "lab"

[uplink]
kind = "http"
url = "https://ingest.example.org/in"

[uplink.auth]
method = "none"
"#;

/// An `[uplink]` of kind mqtt, open for more keys (line 5 is the next).
const MQ: &str = "[agent]\nid = \"lab\"\n[uplink]\nkind = \"mqtt\"\n";

/// A valid ASTM channel on /dev/null (exists everywhere, so no warning).
const CH: &str = r#"[[channel]]
name = "a"
protocol = "astm"
serial = "/dev/null"
"#;

struct Case {
    name: &'static str,
    text: String,
    line: usize,
    col: usize,
    contains: &'static str,
    hint: Option<&'static str>,
}

fn case(
    name: &'static str,
    text: impl Into<String>,
    line: usize,
    col: usize,
    contains: &'static str,
) -> Case {
    Case {
        name,
        text: text.into(),
        line,
        col,
        contains,
        hint: None,
    }
}

fn with_hint(mut c: Case, hint: &'static str) -> Case {
    c.hint = Some(hint);
    c
}

fn head_with(channels: &str) -> String {
    format!("{HEAD}{channels}")
}

fn errors(text: &str, opts: &LoadOptions) -> Vec<Diagnostic> {
    match load_str(text, Path::new("/etc/labagent/config.toml"), opts) {
        Ok(l) => panic!("accepted:\n{text}\nwarnings: {:?}", l.warnings),
        Err(ConfigError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn cases(secret_dir: &Path) -> Vec<Case> {
    let open_secret = secret_dir.join("open_secret");
    let good_secret = secret_dir.join("good_secret");
    let cc = |file: &Path| {
        format!(
            "[agent]\nid = \"lab\"\n\n[uplink]\nkind = \"http\"\nurl = \"https://x.example/in\"\n\n\
             [uplink.auth]\nmethod = \"client_credentials\"\ntoken_url = \"https://x.example/token\"\n\
             client_id = \"c\"\nclient_secret_file = \"{}\"\n",
            file.display()
        )
    };
    vec![
        with_hint(case("typo'd key", head_with("[[channel]]\nname = \"cobas\"\nprotocol = \"astm\"\nserial = \"/dev/null\"\nbaud_rate = 9600\n"), 14, 1, "unknown key `baud_rate` in channel \"cobas\""), "baud"),
        case("wrong type", head_with(&format!("{CH}baud = \"fast\"\n")), 14, 8, "channel \"a\".baud: expected an integer"),
        case("missing agent.id", "[agent]\nlog = \"info\"\n[uplink]\nkind = \"http\"\nurl = \"https://x.example/\"\n[uplink.auth]\nmethod = \"none\"\n", 1, 1, "agent.id: is required"),
        case("serial and listen", head_with(&format!("{CH}listen = \"0.0.0.0:2575\"\n")), 14, 10, "exactly one of serial, listen, connect; this one also has serial"),
        case("no transport", head_with("[[channel]]\nname = \"a\"\nprotocol = \"astm\"\n"), 10, 1, "needs exactly one of serial"),
        case("http url", HEAD.replace("https://ingest", "http://ingest"), 6, 7, "set uplink.allow_plain_http = true"),
        case("duplicate name", head_with(&format!("{CH}{}", CH.replace("/dev/null", "/dev/zero"))), 15, 8, "duplicate channel name"),
        case("duplicate serial port", head_with(&format!("{CH}{}", CH.replace("\"a\"", "\"b\""))), 17, 10, "serial port /dev/null is already used by channel \"a\""),
        case("duplicate listen port", head_with("[[channel]]\nname = \"a\"\nprotocol = \"hl7\"\nlisten = \"0.0.0.0:2575\"\n[[channel]]\nname = \"b\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:2575\"\n"), 17, 10, "port 2575 is already used by channel \"a\""),
        case("bad duration", head_with(&format!("{CH}[channel.astm]\nack_timeout = \"30x\"\n")), 15, 15, "expected a duration like"),
        case("bad size", format!("{HEAD}[buffer]\nmax_bytes = \"12XB\"\n"), 11, 13, "expected a size like"),
        case("world-readable secret", cc(&open_secret), 12, 22, "others may access it"),
        case("two secret sources", format!("{}client_secret = \"x\"\n", cc(&good_secret)), 12, 22, "more than one source"),
        case("channel name with /", head_with(&CH.replace("\"a\"", "\"a/b\"")), 11, 8, "channel \"a/b\".name: expected letters, digits"),
        case("non-ASCII start", head_with("[[channel]]\nname = \"r\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\n[channel.raw]\nstart = \"ab§\"\nend = [3]\n"), 15, 12, "ASCII only"),
        with_hint(case("unknown protocol", head_with(&CH.replace("\"astm\"", "\"asmt\"")), 12, 12, "unknown value \"asmt\"; expected one of: astm | hl7 | raw"), "astm"),
        case("bad parity", head_with(&format!("{CH}parity = \"mark\"\n")), 14, 10, "expected one of: none | even | odd"),
        case("data_bits 6", head_with(&format!("{CH}data_bits = 6\n")), 14, 13, "expected 7 or 8, got 6"),
        case("stop_bits 3", head_with(&format!("{CH}stop_bits = 3\n")), 14, 13, "expected 1 or 2, got 3"),
        case("qos 0", "[agent]\nid = \"lab\"\n[uplink]\nkind = \"mqtt\"\n[uplink.auth]\nmethod = \"none\"\n[uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\nqos = 0\n", 9, 7, "uplink.mqtt.qos: must be 1"),
        with_hint(case("unknown section", format!("{HEAD}[bufer]\nmax_bytes = 1\n"), 10, 2, "unknown key `bufer` at the top level"), "buffer"),
        case("hl7 section on astm channel", head_with(&format!("{CH}[channel.hl7]\nack = \"original\"\n")), 14, 1, "[channel.hl7] belongs to protocol = \"hl7\""),
        case("raw without end", head_with("[[channel]]\nname = \"r\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\n[channel.raw]\nstart = [2]\n"), 14, 1, "channel \"r\".raw.end: is required"),
        case("byte 300 in end", head_with("[[channel]]\nname = \"r\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\n[channel.raw]\nstart = [2]\nend = [3, 300]\n"), 16, 11, "expected byte values 0..=255"),
        case("mqtt without url", "[agent]\nid = \"lab\"\n[uplink]\nkind = \"mqtt\"\n[uplink.auth]\nmethod = \"none\"\n", 3, 1, "uplink.mqtt.url: is required"),
        case("mqtt:// plain", "[agent]\nid = \"lab\"\n[uplink]\nkind = \"mqtt\"\n[uplink.auth]\nmethod = \"none\"\n[uplink.mqtt]\nurl = \"mqtt://b.example:1883\"\n", 8, 7, "set uplink.mqtt.allow_plain_mqtt = true"),
        case("bad agent.id", HEAD.replace("\"lab\"", "\"lab 1\""), 2, 6, "agent.id: expected letters, digits"),
        case("relative state_dir", HEAD.replace("id = \"lab\"", "id = \"lab\"\nstate_dir = \"var/lib\""), 3, 13, "expected an absolute path"),
        case("log verbose", HEAD.replace("id = \"lab\"", "id = \"lab\"\nlog = \"verbose\""), 3, 7, "unknown value \"verbose\"; expected one of: error | warn | info | debug | trace"),
        case("when_full block", format!("{HEAD}[buffer]\nwhen_full = \"block\"\n"), 11, 13, "expected one of: refuse | drop_oldest"),
        case("TOML syntax error", "[agent]\nid = \"lab\n", 2, 10, "TOML syntax error"),
        case("max_frame > max_message", head_with(&format!("{CH}[channel.astm]\nmax_frame = \"8MiB\"\n")), 15, 13, "must not be larger than astm.max_message"),
        case("zero timeout", HEAD.replace("kind = \"http\"", "kind = \"http\"\ntimeout = \"0s\""), 6, 11, "uplink.timeout: must be greater than zero"),
        case("client_credentials without token_url", HEAD.replace("method = \"none\"", "method = \"client_credentials\"\nclient_id = \"c\"\nclient_secret = \"s\""), 9, 10, "token_url: is required"),
        case("basic without client_id", HEAD.replace("method = \"none\"", "method = \"basic\"\nclient_secret = \"s\""), 9, 10, "client_id: is required for method = \"basic\""),
        case("missing secret", HEAD.replace("method = \"none\"", "method = \"basic\"\nclient_id = \"c\""), 9, 10, "needs a client secret"),
        case("http kind without url", "[agent]\nid = \"lab\"\n[uplink]\nkind = \"http\"\n[uplink.auth]\nmethod = \"none\"\n", 3, 1, "uplink.url: is required"),
        case("baud zero", head_with(&format!("{CH}baud = 0\n")), 14, 8, "expected an integer from 1 to 4000000, got 0"),
        case("max_connections on connect", head_with("[[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nconnect = \"10.0.0.1:5000\"\n[channel.hl7]\nmax_connections = 4\n"), 15, 19, "only applies to channels that listen"),
        case("baud on tcp channel", head_with("[[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nlisten = \"0.0.0.0:2575\"\nbaud = 9600\n"), 14, 8, "is a serial line setting"),
        case("channel as table", format!("{HEAD}[channel]\nname = \"a\"\n"), 10, 1, "expected [[channel]] sections"),
        case("missing secret file", cc(&secret_dir.join("nope")), 12, 22, "cannot read secret file"),
        case("ca_file missing", HEAD.replace("kind = \"http\"", "kind = \"http\"\nca_file = \"/nonexistent/ca.pem\""), 6, 11, "does not exist"),
        case("client_cert without key", HEAD.replace("kind = \"http\"", "kind = \"http\"\nclient_cert = \"/dev/null\""), 6, 15, "needs uplink.client_key too"),
        case("unnamed channel typo", head_with("[[channel]]\nprotocl = \"astm\"\n"), 11, 1, "unknown key `protocl` in channel[0]"),
        case("bad listen", head_with("[[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nlisten = \"2575\"\n"), 13, 10, "expected an address:port"),
        case("negative size", format!("{HEAD}[buffer]\nmin_free = -1\n"), 11, 12, "expected a size like"),
        case("orders pull", head_with(&format!("{CH}orders = \"pull\"\n")), 14, 10, "unknown value \"pull\"; expected one of: push | query"),
        case("query_timeout zero", head_with(&format!("{CH}query_timeout = \"0s\"\n")), 14, 17, "query_timeout: must be greater than zero"),
        case("query_timeout a minute", head_with(&format!("{CH}query_timeout = \"60s\"\n")), 14, 17, "query_timeout: must be below"),
        case("orders on a raw channel", head_with("[[channel]]\nname = \"r\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\norders = \"query\"\n[channel.raw]\nstart = [2]\nend = [3]\n"), 14, 10, "channel \"r\".orders: applies to astm and hl7 channels only"),
        case("query_timeout on a raw channel", head_with("[[channel]]\nname = \"r\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\nquery_timeout = \"2s\"\n[channel.raw]\nstart = [2]\nend = [3]\n"), 14, 17, "applies to astm and hl7 channels only"),
        case("query_id_component 0", head_with(&format!("{CH}[channel.astm]\nquery_id_component = 0\n")), 15, 22, "components count from 1"),
        case("query_url with mqtt", format!("{MQ}{}", "query_url = \"https://x.example/q\"\n[uplink.auth]\nmethod = \"none\"\n[uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\n"), 5, 13, "{prefix}/{agent}/{channel}/queries"),
        case("orders_url with mqtt", format!("{MQ}{}", "orders_url = \"https://x.example/o\"\n[uplink.auth]\nmethod = \"none\"\n[uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\n"), 5, 14, "{prefix}/{agent}/{channel}/orders"),
        case("plain query_url", HEAD.replace("kind = \"http\"", "kind = \"http\"\nquery_url = \"http://x.example/q\""), 6, 13, "uplink.query_url: http:// sends credentials"),
        case("orders_url not a URL", HEAD.replace("kind = \"http\"", "kind = \"http\"\norders_url = \"ftp://x.example/o\""), 6, 14, "uplink.orders_url: expected a https:// URL"),
        case("orders_poll bad", HEAD.replace("kind = \"http\"", "kind = \"http\"\norders_poll = \"10x\""), 6, 15, "expected a duration like"),
        case("orders_keep zero", format!("{HEAD}[buffer]\norders_keep = \"0s\"\n"), 11, 15, "buffer.orders_keep: must be greater than zero"),
        case("duration as integer", format!("{HEAD}[buffer]\nkeep_delivered = 7\n"), 11, 18, "expected a duration string like \"500ms\", \"30s\""),
    ]
}

#[test]
fn broken_configs_are_refused_with_position_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    for (name, mode) in [("open_secret", 0o644), ("good_secret", 0o600)] {
        let p = dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "s3cret").unwrap();
        set_mode(&p, mode);
    }
    let table = cases(dir.path());
    assert!(table.len() >= 30, "only {} cases", table.len());
    let opts = LoadOptions::with_env(Vec::<(String, String)>::new());
    let mut failures = Vec::new();
    for c in &table {
        let diags = errors(&c.text, &opts);
        let Some(first) = diags.iter().find(|d| d.message.contains(c.contains)) else {
            failures.push(format!(
                "{}: no diagnostic contains {:?}; got:\n  {}",
                c.name,
                c.contains,
                diags
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
            continue;
        };
        let shown = first.to_string();
        assert!(shown.starts_with(&format!(
            "/etc/labagent/config.toml:{}:{}: ",
            first.line, first.col
        )));
        if (first.line, first.col) != (c.line, c.col) {
            failures.push(format!(
                "{}: expected {}:{}, got {shown}",
                c.name, c.line, c.col
            ));
        }
        if c.hint.is_some() && first.hint.as_deref() != c.hint {
            failures.push(format!(
                "{}: expected hint {:?}, got {shown}",
                c.name, c.hint
            ));
        }
        if let Some(h) = c.hint {
            assert!(shown.contains(&format!("did you mean \"{h}\"?")), "{shown}");
        }
        assert!(
            !first.key.is_empty() || c.name == "TOML syntax error",
            "{}: no key in {shown}",
            c.name
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

#[test]
fn all_semantic_errors_are_reported_in_file_order() {
    let text = head_with(&format!(
        "{CH}data_bits = 6\nstop_bits = 3\n{}",
        CH.replace("/dev/null", "/dev/zero")
    ))
    .replace("id = \"lab\"", "id = \"l a b\"");
    let diags = errors(
        &text,
        &LoadOptions::with_env(Vec::<(String, String)>::new()),
    );
    let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 14, 15, 17], "{diags:#?}");
}

#[test]
fn arbitrary_garbage_never_panics() {
    let opts = LoadOptions::with_env(Vec::<(String, String)>::new());
    let samples = [
        "", "\0", "[", "]]]", "a = ", "[[channel]]\n[channel.raw]\nstart = [[1]]", "channel = 5",
        "[agent]\nid = 5", "[uplink]\nkind = [\"http\"]", "[[channel]]\nname = \"x\"\nprotocol = \"raw\"\nserial = \"/dev/null\"\n[channel.raw]\nstart = []\nend = \"\"",
        "[buffer]\nmax_bytes = \"99999999999TiB\"", "[buffer]\nkeep_delivered = \"99999999999999999999d\"",
        "[[channel]]\nlisten = \"[::1]:99999\"", "[[channel]]\nconnect = \":\"", "é = 1", "[agent]\nid = \"é\"",
    ];
    for s in samples {
        let r = load_str(s, Path::new("x.toml"), &opts);
        assert!(r.is_err(), "{s:?} accepted");
        for d in r.unwrap_err().diagnostics() {
            assert!(d.line >= 1 && d.col >= 1);
        }
    }
}
