//! `Store::call`: in place on the agent's multi-thread runtime, through the
//! blocking pool on a current-thread one, with the same results (a panic in the store is a
//! store error either way).

use std::sync::Arc;

use labagent::channel::{ChannelCtx, Hooks};
use labagent::store::{Store, StoreError};
use labagent_config::{Channel, Encoding, ProtocolSettings, Raw, Transport};
use tokio::sync::watch;

fn ctx(dir: &std::path::Path) -> Arc<ChannelCtx> {
    let store = Store::open(
        dir.join("store"),
        labagent::store::StoreOptions {
            min_free: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let config = Channel {
        name: "t".into(),
        transport: Transport::Listen("127.0.0.1:1".parse().unwrap()),
        encoding: Encoding::Auto,
        settings: ProtocolSettings::Raw(Raw {
            start: Vec::new(),
            end: b"\n".to_vec(),
            reply: None,
            max_message: 1024,
        }),
        orders: labagent_config::OrderMode::Push,
        query_timeout: std::time::Duration::from_secs(5),
    };
    let (_stop, stopping) = watch::channel(false);
    ChannelCtx::new(config, store, Hooks::default(), stopping)
}

/// In place on the agent's multi-thread runtime, through the pool on a current-thread
/// one: the same results, and a panic in the store is a store error either way.
#[test]
fn store_calls_answer_alike_on_both_runtime_flavors() {
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (rt, multi) in [(multi, true), (current, false)] {
        let d = tempfile::tempdir().unwrap();
        let c = ctx(d.path());
        rt.block_on(async {
            let c2 = c.clone();
            // From a spawned task, as the drivers call it.
            let stats = tokio::spawn(async move { c2.store.call(|s| s.stats()).await })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stats.totals.pending, 0);
            let e = c
                .store
                .call(|_| -> Result<(), StoreError> { Err(StoreError::Corrupt("x".into())) })
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
            let e = c
                .store
                .call(|_| -> Result<(), StoreError> { panic!("store bug") })
                .await
                .unwrap_err();
            assert!(e.to_string().contains("store task failed"), "{e}");
            // Still usable afterwards.
            assert!(c.store.call(|s| s.stats()).await.is_ok());
            // In place on the multi-thread runtime: the call runs on the task's own
            // thread, with no hand-off to the pool and back.
            let c3 = c.clone();
            let (here, there) = tokio::spawn(async move {
                let here = std::thread::current().id();
                let there = c3
                    .store
                    .call(|_| Ok(std::thread::current().id()))
                    .await
                    .unwrap();
                (here, there)
            })
            .await
            .unwrap();
            assert_eq!(here == there, multi, "in place on multi-thread only");
        });
    }
}
