//! Property test: the log against a simple in-memory model, with appends
//! (concurrent), cursor moves, copy-forward, reclamation, reads and reboots
//! (clean, power loss dropping unsynced writes, tearing them block by block,
//! or keeping them).

mod common;

use std::collections::BTreeMap;

use common::{fast_tempdir, run, KIND};
use proptest::prelude::*;
use tern_storage::fault::{FaultEnv, PowerLoss};
use tern_storage::{Error, Log, LogConfig, Sequence, TimestampMs};

const CURSORS: [&str; 3] = ["queue", "shadow", "safety-net"];

#[derive(Clone, Debug)]
enum Op {
    /// Concurrent appends of these payload lengths.
    Append(Vec<usize>),
    /// Move cursor `which` to a fraction of the appendable range.
    Cursor(usize, f64),
    /// Copy a live record (fraction of the retained range) forward.
    CopyForward(f64),
    Reclaim,
    Read(f64),
    /// Reboot; `None` = clean close, else a power loss after failed syncs
    /// with these concurrent appends in flight.
    Reboot(Option<(u8, u64, Vec<usize>)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..3000, 1..8).prop_map(Op::Append),
        2 => (0usize..3, 0.0f64..=1.0).prop_map(|(c, f)| Op::Cursor(c, f)),
        1 => (0.0f64..1.0).prop_map(Op::CopyForward),
        1 => Just(Op::Reclaim),
        2 => (0.0f64..1.0).prop_map(Op::Read),
        1 => prop::option::of((0u8..4, any::<u64>(), prop::collection::vec(0usize..3000, 1..5)))
            .prop_map(Op::Reboot),
    ]
}

/// What the log must hold: payload (and origin) per sequence.
#[derive(Default)]
struct Model {
    records: BTreeMap<u64, (Vec<u8>, Option<u64>)>,
    next: u64,
    cursors: BTreeMap<&'static str, u64>,
}

fn config() -> LogConfig {
    LogConfig {
        record_bytes_max: 4096,
        segment_bytes_max: 16 << 10,
        retention_min_ms: 0,
        ..LogConfig::default()
    }
}

fn body(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (n as usize * 7 + j * 13) as u8).collect()
}

fn pick(lo: u64, hi: u64, f: f64) -> u64 {
    lo + ((hi - lo) as f64 * f) as u64
}

async fn open_log(dir: &std::path::Path) -> (Log<FaultEnv>, FaultEnv) {
    let env = FaultEnv::new();
    let (log, _) = Log::open(env.clone(), dir, config(), TimestampMs(1))
        .await
        .unwrap();
    (log, env)
}

async fn append_all(log: &Log<FaultEnv>, payloads: &[Vec<u8>]) -> Vec<Result<Sequence, Error>> {
    let tasks: Vec<_> = payloads
        .iter()
        .cloned()
        .map(|p| {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(KIND, TimestampMs(5), &[&p]).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await);
    }
    out
}

/// Checks every retained record and the cursors against the model.
fn check(log: &Log<FaultEnv>, m: &Model) {
    assert_eq!(log.durable_end().0, m.next);
    let first = log.first_sequence().0;
    let min_cursor = m.cursors.values().copied().min().unwrap_or(1);
    assert!(
        first <= min_cursor,
        "reclaimed past a cursor: {first} > {min_cursor}"
    );
    for (seq, (payload, origin)) in m.records.range(first..) {
        let rec = log.read(Sequence(*seq)).unwrap();
        assert_eq!(&rec.payload[..], &payload[..], "seq {seq}");
        assert_eq!(rec.origin.map(|s| s.0), *origin, "origin of {seq}");
    }
    for (name, at) in &m.cursors {
        assert_eq!(
            log.cursor(name).map(|s| s.0),
            Some((*at).max(first)),
            "cursor {name}"
        );
    }
}

async fn run_ops(ops: Vec<Op>) {
    let dir = fast_tempdir();
    let (mut log, mut env) = open_log(dir.path()).await;
    let mut m = Model {
        next: 1,
        ..Model::default()
    };
    for c in CURSORS {
        m.cursors.insert(c, 1);
    }
    for op in ops {
        match op {
            Op::Append(lens) => {
                let payloads: Vec<_> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, l)| body(m.next + i as u64, *l))
                    .collect();
                let seqs = append_all(&log, &payloads).await;
                for (seq, p) in seqs.into_iter().zip(payloads) {
                    let seq = seq.unwrap();
                    assert_eq!(seq.0, m.next);
                    m.records.insert(seq.0, (p, None));
                    m.next += 1;
                }
            }
            Op::Cursor(which, f) => {
                let to = pick(log.first_sequence().0, m.next, f);
                log.set_cursor(CURSORS[which], Sequence(to)).await.unwrap();
                m.cursors.insert(CURSORS[which], to);
            }
            Op::CopyForward(f) => {
                let first = log.first_sequence().0;
                if first < m.next {
                    let seq = pick(first, m.next - 1, f);
                    let new = log
                        .copy_forward(Sequence(seq), TimestampMs(5))
                        .await
                        .unwrap();
                    let (p, origin) = m.records[&seq].clone();
                    assert_eq!(new.0, m.next);
                    m.records.insert(new.0, (p, Some(origin.unwrap_or(seq))));
                    m.next += 1;
                }
            }
            Op::Reclaim => {
                log.reclaim(TimestampMs(u64::MAX / 2)).await.unwrap();
            }
            Op::Read(f) => {
                let first = log.first_sequence().0;
                let seq = pick(first.saturating_sub(2), m.next + 2, f);
                match log.read(Sequence(seq)) {
                    Ok(rec) => assert_eq!(rec.payload, m.records[&seq].0),
                    Err(Error::NotFound(_)) => assert!(seq < first || seq >= m.next),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Reboot(None) => {
                log.close().await.unwrap();
                (log, env) = open_log(dir.path()).await;
            }
            Op::Reboot(Some((mode, seed, lens))) => {
                env.fail_syncs();
                let payloads: Vec<_> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, l)| body(m.next + i as u64, *l))
                    .collect();
                for r in append_all(&log, &payloads).await {
                    assert!(matches!(r, Err(Error::Fatal(_))));
                }
                let loss = [
                    PowerLoss::DropUnsynced,
                    PowerLoss::KeepUnsynced,
                    PowerLoss::TearBlocks(seed),
                    PowerLoss::TearBlocks(seed),
                ];
                env.power_loss(loss[mode as usize]).unwrap();
                if mode == 3 {
                    // Indexes are never fsynced: a power loss may lose them.
                    for e in std::fs::read_dir(dir.path()).unwrap() {
                        let path = e.unwrap().path();
                        if path.extension().is_some_and(|x| x == "idx") {
                            std::fs::remove_file(path).unwrap();
                        }
                    }
                }
                drop(log);
                (log, env) = open_log(dir.path()).await;
                // Unacknowledged records may survive, as a prefix, intact.
                let end = log.durable_end().0;
                assert!(end >= m.next && end <= m.next + payloads.len() as u64);
                for (i, p) in payloads
                    .into_iter()
                    .take((end - m.next) as usize)
                    .enumerate()
                {
                    m.records.insert(m.next + i as u64, (p, None));
                }
                m.next = end;
            }
        }
        check(&log, &m);
    }
    log.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(run_ops(ops));
    }
}
