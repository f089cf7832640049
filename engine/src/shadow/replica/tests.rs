use std::net::SocketAddr;

use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};
use tern_storage::LogConfig;

use super::*;
use crate::cluster::DatabaseId;
use crate::config::Overrides;
use crate::shard::IoMode;

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .ring_depth(64)
        .make()
        .expect("glommio executor")
        .run(fut)
}

fn envelope() -> Envelope {
    Envelope {
        helo: "node-a".into(),
        esmtp: true,
        authenticated: None,
        tls: false,
        from: ReversePath::Mailbox(Mailbox {
            local: "s".into(),
            domain: "x.example".into(),
        }),
        params: Default::default(),
        recipients: vec![ForwardPath::Mailbox(Mailbox {
            local: "r".into(),
            domain: "y.example".into(),
        })],
    }
}

/// Appends a shadow record for primary `node-a`'s message `qid`.
async fn shadow_copy(shard: &Shard, qid: &str) -> u64 {
    let origin = Origin::from_param(&format!("node-a,00aa,{qid}")).unwrap();
    let client: SocketAddr = "127.0.0.2:1".parse().unwrap();
    let content = b"Subject: x\r\n\r\nbody\r\n";
    let env = envelope();
    let enc = Encoder::new(&env, client, 5, None, content).with_preamble(origin.preamble());
    let what = Announced::Other;
    let seq = shard
        .append(SHADOW, TimestampMs(5), enc.len(), what, |sequence, w| {
            enc.write(
                QueueId {
                    store: Default::default(),
                    shard: 0,
                    sequence,
                },
                &mut |b| w.put(b),
            )
        })
        .await
        .unwrap();
    seq.0
}

#[test]
fn an_unreadable_copy_does_not_stop_the_upkeep_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let storage = LogConfig {
            retention_min_ms: 0,
            ..LogConfig::default()
        };
        let shard = Shard::open(dir.path(), &[0; 16], 0, IoMode::Buffered, storage, 1 << 20).await;
        let shard = Rc::new(shard.unwrap());
        let config = Config::from_toml("", &Overrides::default()).unwrap();
        let shared = Arc::new(ShadowShared::new(DatabaseId::generate(
            &mut rand::thread_rng(),
        )));
        let metrics = Arc::new(CoreMetrics::default());
        let replica = Replica::new(
            shard.clone(),
            Arc::new(config),
            shared.clone(),
            metrics.clone(),
        );
        // A "copy" whose record is not a shadow record (a damaged or
        // misread one), then a good copy.
        let bad = shard.append_status(&[]).await.unwrap().0;
        replica.hold(
            bad,
            5,
            ("node-a".into(), "00aa".into(), "00000000000001".into()),
        );
        let good = shadow_copy(&shard, "00000000000002").await;
        replica.hold(
            good,
            5,
            ("node-a".into(), "00aa".into(), "00000000000002".into()),
        );
        // node-a came back with a new store: both copies are taken over.
        let state = PrimaryState {
            database: Some("00bb".into()),
            last_ok_ms: TimestampMs::now().0,
            watermarks: Default::default(),
        };
        lock(&shared.replica.primaries).insert("node-a".into(), state);

        replica
            .upkeep(TimestampMs::now().0)
            .await
            .expect("upkeep goes on");

        assert_eq!(replica.len(), 0, "both released: the shadow cursor moves");
        assert_eq!(metrics.takeovers.load(Ordering::Relaxed), 1, "the good one");
        assert_eq!(metrics.unreadable.load(Ordering::Relaxed), 1, "the bad one");
        // The taken-over message is a message record of ours now.
        let end = shard.log.durable_end().0;
        let last = shard.log.read(Sequence(end - 2)).unwrap();
        assert_eq!(last.kind, MESSAGE);
        shard.log.clone().close().await.unwrap();
    });
}

#[test]
fn untold_takeovers_are_told_once_and_older_stores_forgotten() {
    let shared = Shared::default();
    let key = |db: &str| ("a".to_string(), db.to_string());
    lock(&shared.untold).insert(key("old"), 2);
    lock(&shared.untold).insert(key("now"), 5);
    lock(&shared.untold).insert(("c".to_string(), "x".to_string()), 1);
    assert_eq!(shared.untold_takeovers("a", "now"), 5);
    // A takeover counted while the heartbeat was telling: it stays.
    *lock(&shared.untold).get_mut(&key("now")).unwrap() += 1;
    shared.told_takeovers("a", "now", 5);
    assert_eq!(shared.untold_takeovers("a", "now"), 1);
    assert_eq!(
        shared.untold_takeovers("a", "old"),
        0,
        "a's old store is gone"
    );
    assert_eq!(shared.untold_takeovers("c", "x"), 1, "other primaries kept");
    shared.told_takeovers("a", "now", 1);
    assert!(!lock(&shared.untold).contains_key(&key("now")));
}
