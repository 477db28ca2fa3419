//! Host queries and orders: `[[channel]] orders`, `query_timeout`,
//! `[channel.astm] query_id_component`, `[uplink] query_url`, `orders_url`, `orders_poll`,
//! `[buffer] orders_keep` — defaults, values, printing and reading back, and warnings.

use std::path::Path;
use std::time::Duration;

use labagent_config::{load_str, LoadOptions, Loaded, OrderMode, ProtocolSettings};

fn opts() -> LoadOptions {
    LoadOptions::with_env(Vec::<(String, String)>::new())
}

fn load(text: &str) -> Loaded {
    load_str(text, Path::new("t.toml"), &opts()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const HTTP: &str =
    "[agent]\nid = \"a\"\n[uplink]\nkind = \"http\"\nurl = \"https://up.example/in\"\n";
const AUTH: &str = "[uplink.auth]\nmethod = \"none\"\n";
const CHANNELS: &str =
    "[[channel]]\nname = \"c\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:7001\"\n";

#[test]
fn defaults_are_push_5s_first_component_7d_10s_and_no_urls() {
    let l = load(&format!("{HTTP}{AUTH}{CHANNELS}"));
    let c = &l.config;
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let ch = &c.channels[0];
    assert_eq!(ch.orders, OrderMode::Push);
    assert_eq!(OrderMode::default(), OrderMode::Push);
    assert_eq!(ch.query_timeout, Duration::from_secs(5));
    let ProtocolSettings::Astm(a) = &ch.settings else {
        panic!()
    };
    assert_eq!(a.query_id_component, None);
    assert_eq!(c.uplink.query_url, None);
    assert_eq!(c.uplink.orders_url, None);
    assert_eq!(c.uplink.orders_poll, Duration::from_secs(10));
    assert_eq!(c.buffer.orders_keep, Duration::from_secs(7 * 86_400));
    let printed = c.effective_toml();
    for line in [
        "orders_keep = \"7d\"",
        "# query_url: none",
        "# orders_url: none",
        "orders = \"push\"",
        "query_timeout = \"5s\"",
        "# query_id_component: the first non-empty component",
    ] {
        assert!(printed.contains(line), "{line} missing in\n{printed}");
    }
    assert_eq!(load(&printed).config, *c);
}

#[test]
fn every_key_is_kept_printed_and_read_back() {
    let text = format!(
        "[agent]\nid = \"a\"\n[buffer]\norders_keep = \"2d\"\n[uplink]\nkind = \"http\"\nurl = \"https://up.example/in\"\n\
         query_url = \"https://up.example/query\"\norders_url = \"https://up.example/orders\"\norders_poll = \"30s\"\n{AUTH}\
         [[channel]]\nname = \"c\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:7001\"\norders = \"query\"\nquery_timeout = \"2500ms\"\n\
         [channel.astm]\nquery_id_component = 3\n\
         [[channel]]\nname = \"h\"\nprotocol = \"hl7\"\nlisten = \"127.0.0.1:7002\"\norders = \"query\"\n\
         [[channel]]\nname = \"r\"\nprotocol = \"raw\"\nlisten = \"127.0.0.1:7003\"\n[channel.raw]\nstart = [2]\nend = [3]\n"
    );
    let l = load(&text);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.buffer.orders_keep, Duration::from_secs(2 * 86_400));
    assert_eq!(
        c.uplink.query_url.as_deref(),
        Some("https://up.example/query")
    );
    assert_eq!(
        c.uplink.orders_url.as_deref(),
        Some("https://up.example/orders")
    );
    assert_eq!(c.uplink.orders_poll, Duration::from_secs(30));
    let ch = c.channel("c").unwrap();
    assert_eq!(ch.orders, OrderMode::Query);
    assert_eq!(ch.query_timeout, Duration::from_millis(2500));
    let ProtocolSettings::Astm(a) = &ch.settings else {
        panic!()
    };
    assert_eq!(a.query_id_component, Some(3));
    assert_eq!(c.channel("h").unwrap().orders, OrderMode::Query);
    assert_eq!(c.channel("r").unwrap().orders, OrderMode::Push);
    let printed = c.effective_toml();
    for line in [
        "orders_keep = \"2d\"",
        "query_url = \"https://up.example/query\"",
        "orders_url = \"https://up.example/orders\"",
        "orders_poll = \"30s\"",
        "orders = \"query\"",
        "query_id_component = 3",
    ] {
        assert!(printed.contains(line), "{line} missing in\n{printed}");
    }
    // The raw channel prints neither key (they would be errors there).
    let raw_part = printed.split("name = \"r\"").nth(1).unwrap();
    assert!(!raw_part.contains("orders ="), "{printed}");
    let again = load(&printed);
    assert_eq!(again.config, *c, "{printed}");
}

#[test]
fn orders_poll_without_orders_url_is_a_warning() {
    let text = format!("{HTTP}orders_poll = \"5s\"\n{AUTH}{CHANNELS}");
    let l = load(&text);
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    assert_eq!(w.key, "uplink.orders_poll");
    assert_eq!((w.line, w.col), (6, 15));
    assert!(w.message.contains("without uplink.orders_url"), "{w}");
    // Printed and read back the same.
    let printed = l.config.effective_toml();
    assert!(printed.contains("orders_poll = \"5s\""), "{printed}");
    assert_eq!(load(&printed).config, l.config);
}

#[test]
fn a_query_channel_nothing_can_fill_is_a_warning() {
    let query = "[[channel]]\nname = \"c\"\nprotocol = \"astm\"\nlisten = \"127.0.0.1:7001\"\norders = \"query\"\n";
    // http without orders_url: warned, at the key.
    let l = load(&format!("{HTTP}{AUTH}{query}"));
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    assert_eq!(w.key, "channel \"c\".orders");
    assert_eq!((w.line, w.col), (12, 10));
    assert!(w.message.contains("orders_url"), "{w}");
    // With an orders_url: fine.
    let fed = format!("{HTTP}orders_url = \"https://up.example/o\"\n{AUTH}{query}");
    assert!(load(&fed).warnings.is_empty());
    // MQTT with orders = true: fine; with orders = false: warned.
    let mqtt = |orders: bool| {
        format!(
            "[agent]\nid = \"a\"\n[uplink]\nkind = \"mqtt\"\n{AUTH}[uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\norders = {orders}\n{query}"
        )
    };
    assert!(load(&mqtt(true)).warnings.is_empty());
    assert_eq!(load(&mqtt(false)).warnings.len(), 1);
}

#[test]
fn plain_http_feed_urls_need_allow_plain_http() {
    let text = format!(
        "{HTTP}allow_plain_http = true\nquery_url = \"http://127.0.0.1:1/q\"\norders_url = \"http://127.0.0.1:1/o\"\n{AUTH}{CHANNELS}"
    )
    .replace("https://up.example/in", "http://127.0.0.1:1/in");
    let c = load(&text).config;
    assert_eq!(c.uplink.query_url.as_deref(), Some("http://127.0.0.1:1/q"));
    assert_eq!(load(&c.effective_toml()).config, c);
}
