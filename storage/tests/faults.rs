//! Fault injection through the file trait: a failed fdatasync, a short
//! write and a torn write never let an append report success, fail the log
//! for good, and lose nothing acknowledged.

mod common;

use common::{fast_tempdir, open, payload, run, small_config, KIND};
use tern_storage::fault::{FaultEnv, PowerLoss};
use tern_storage::{BufferedEnv, Error, Log, Sequence, TimestampMs};

/// Appends `n` records and returns their payloads (all acknowledged).
async fn fill(log: &Log<FaultEnv>, n: u64) -> Vec<Vec<u8>> {
    let mut acked = Vec::new();
    for i in 0..n {
        let p = payload(i, 700 + i as usize * 13);
        log.append(KIND, TimestampMs(10), &[&p]).await.unwrap();
        acked.push(p);
    }
    acked
}

/// Reopens with a healthy environment and checks every acknowledged record;
/// anything after them must be a prefix of `attempted`.
fn verify_after(dir: &std::path::Path, acked: &[Vec<u8>], attempted: &[Vec<u8>]) -> u64 {
    run(async {
        let (log, _) = Log::open(BufferedEnv, dir, small_config(), TimestampMs(1))
            .await
            .unwrap();
        let got: Vec<_> = log
            .iter_from(Sequence(1))
            .map(|r| r.unwrap().payload)
            .collect();
        assert!(got.len() >= acked.len(), "acknowledged records lost");
        assert_eq!(&got[..acked.len()], acked);
        let extra = &got[acked.len()..];
        assert!(extra.len() <= attempted.len());
        assert_eq!(extra, &attempted[..extra.len()], "unexpected extra records");
        log.close().await.unwrap();
        extra.len() as u64
    })
}

#[test]
fn failing_fdatasync_fails_the_append_and_the_log() {
    let dir = fast_tempdir();
    let env = FaultEnv::new();
    let (acked, attempted) = run(async {
        let log = open(env.clone(), dir.path(), &small_config()).await;
        let acked = fill(&log, 20).await;
        env.fail_syncs();
        let p = payload(99, 500);
        let err = log.append(KIND, TimestampMs(11), &[&p]).await.unwrap_err();
        assert!(matches!(err, Error::Fatal(_)), "{err}");
        // No retry: later appends and cursor moves fail at once.
        assert!(matches!(
            log.append(KIND, TimestampMs(11), &[b"more"]).await,
            Err(Error::Fatal(_))
        ));
        assert!(matches!(
            log.set_cursor("queue", Sequence(2)).await,
            Err(Error::Fatal(_))
        ));
        // Data already acknowledged is still readable.
        assert_eq!(log.read(Sequence(20)).unwrap().payload, acked[19]);
        (acked, vec![p])
    });
    env.power_loss(PowerLoss::DropUnsynced).unwrap();
    assert_eq!(verify_after(dir.path(), &acked, &attempted), 0);
}

#[test]
fn failing_fdatasync_then_page_cache_survives() {
    // The write reached the page cache and the process died: the record may
    // come back after reopen (it was never acknowledged), intact or not at all.
    let dir = fast_tempdir();
    let env = FaultEnv::new();
    let (acked, p) = run(async {
        let log = open(env.clone(), dir.path(), &small_config()).await;
        let acked = fill(&log, 5).await;
        env.fail_syncs();
        let p = payload(77, 3000);
        assert!(log.append(KIND, TimestampMs(11), &[&p]).await.is_err());
        (acked, p)
    });
    env.power_loss(PowerLoss::KeepUnsynced).unwrap();
    assert_eq!(verify_after(dir.path(), &acked, &[p]), 1);
}

#[test]
fn short_write_is_an_error_and_is_cut_on_reopen() {
    for keep in [0, 1, 43, 44, 45, 500, 4095, 4096, 4097] {
        let dir = fast_tempdir();
        let env = FaultEnv::new();
        let acked = run(async {
            let log = open(env.clone(), dir.path(), &small_config()).await;
            let acked = fill(&log, 3).await;
            env.short_next_write(keep);
            let err = log
                .append(KIND, TimestampMs(11), &[&payload(9, 6000)])
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Fatal(_)), "{err}");
            assert!(log.append(KIND, TimestampMs(11), &[b"x"]).await.is_err());
            acked
        });
        // The batch write started at the block holding the end of acked
        // data, so a short write can keep at most part of the new record.
        assert_eq!(verify_after(dir.path(), &acked, &[]), 0, "keep {keep}");
    }
}

#[test]
fn torn_write_at_power_loss_keeps_acknowledged_prefix() {
    for keep in [0, 100, 4096, 5000, 9000] {
        let dir = fast_tempdir();
        let env = FaultEnv::new();
        let attempted: Vec<_> = (0..8u64).map(|i| payload(100 + i, 1500)).collect();
        let acked = run(async {
            let log = open(env.clone(), dir.path(), &small_config()).await;
            let acked = fill(&log, 7).await;
            env.tear_next_write(keep);
            // Several appenders in one batch; none may succeed.
            let tasks: Vec<_> = attempted
                .iter()
                .cloned()
                .map(|p| {
                    let log = log.clone();
                    glommio::spawn_local(
                        async move { log.append(KIND, TimestampMs(12), &[&p]).await },
                    )
                })
                .collect();
            for t in tasks {
                assert!(t.await.is_err());
            }
            acked
        });
        // Whole records inside the torn write may survive (never
        // acknowledged); the record cut by the tear and all after it do not.
        let survived = verify_after(dir.path(), &acked, &attempted);
        assert!(survived < attempted.len() as u64, "keep {keep}");
    }
}

#[test]
fn power_loss_tearing_blocks_in_any_order_keeps_acknowledged_prefix() {
    for seed in 1..40u64 {
        let dir = fast_tempdir();
        let env = FaultEnv::new();
        let (acked, attempted) = run(async {
            let log = open(env.clone(), dir.path(), &small_config()).await;
            let acked = fill(&log, 4).await;
            env.fail_syncs();
            let attempted: Vec<_> = (0..6)
                .map(|i| payload(50 + i, 1000 + 900 * i as usize))
                .collect();
            let tasks: Vec<_> = attempted
                .iter()
                .cloned()
                .map(|p| {
                    let log = log.clone();
                    glommio::spawn_local(
                        async move { log.append(KIND, TimestampMs(12), &[&p]).await },
                    )
                })
                .collect();
            for t in tasks {
                assert!(t.await.is_err());
            }
            (acked, attempted)
        });
        env.power_loss(PowerLoss::TearBlocks(seed)).unwrap();
        verify_after(dir.path(), &acked, &attempted);
    }
}

#[test]
fn cursor_never_durable_before_the_records_it_passes() {
    // A cursor set past a record that is still queued behind a flush in
    // flight must not be written (nor return) before that record is durable.
    let dir = fast_tempdir();
    let env = FaultEnv::new();
    run(async {
        let log = open(env.clone(), dir.path(), &small_config()).await;
        fill(&log, 3).await;
        env.hold_syncs();
        let a = {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(KIND, TimestampMs(20), &[b"r4"]).await })
        };
        for _ in 0..5 {
            futures_lite::future::yield_now().await;
        }
        let b = {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(KIND, TimestampMs(20), &[b"r5"]).await })
        };
        let c = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.set_cursor("queue", Sequence(6)).await.unwrap();
                log.durable_end()
            })
        };
        for _ in 0..5 {
            futures_lite::future::yield_now().await;
        }
        // Let two fdatasyncs through (r4, then whatever comes next: a
        // cursor written too early, or r5), then hold again.
        env.pass_syncs(2);
        for _ in 0..20 {
            futures_lite::future::yield_now().await;
        }
        env.release_syncs();
        let durable_when_cursor_returned = c.await;
        assert_eq!(a.await.unwrap(), Sequence(4));
        assert_eq!(b.await.unwrap(), Sequence(5));
        assert!(
            durable_when_cursor_returned >= Sequence(6),
            "{durable_when_cursor_returned:?}"
        );
    });
}

#[test]
fn enqueued_record_is_never_reported_durable_when_its_commit_fails() {
    let dir = fast_tempdir();
    let env = FaultEnv::new();
    let (acked, attempted) = run(async {
        let log = open(env.clone(), dir.path(), &small_config()).await;
        let acked = fill(&log, 5).await;
        env.fail_syncs();
        let p = payload(77, 400);
        let seq = log
            .enqueue_with(KIND, TimestampMs(11), p.len(), |_, out| out.put(&p))
            .await
            .unwrap();
        assert!(matches!(log.durable(seq).await, Err(Error::Fatal(_))));
        assert!(log.read(seq).is_err());
        (acked, vec![p])
    });
    env.power_loss(PowerLoss::DropUnsynced).unwrap();
    assert_eq!(verify_after(dir.path(), &acked, &attempted), 0);
}

/// A full file system is not a failure of the log: with no next segment,
/// new records are refused (`NoSpace`) once only the reserve is left,
/// results (`Class::Reserved`) use the reserve, nothing acknowledged is
/// lost, and once space returns the log takes new records again without
/// being reopened.
#[test]
fn a_full_file_system_refuses_new_records_and_recovers() {
    use tern_storage::{Class, LogConfig};
    let dir = fast_tempdir();
    let env = FaultEnv::new();
    let cfg = LogConfig {
        record_bytes_max: 4096,
        segment_bytes_max: 64 << 10,
        reserve_bytes: 16 << 10,
        retention_min_ms: 0,
        ..LogConfig::default()
    };
    let acked = run(async {
        let log = open(env.clone(), dir.path(), &cfg).await;
        let mut acked = fill(&log, 3).await;
        env.set_full(true);
        // New records until the reserve: at least one roll into the spare
        // made before the disk filled, then the rest of that segment.
        let mut refused = None;
        for i in 0..400u64 {
            let p = payload(100 + i, 700);
            match log.append(KIND, TimestampMs(10), &[&p]).await {
                Ok(_) => acked.push(p),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let err = refused.expect("new records are refused before the log is full");
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
        assert!(log.failure().is_none(), "a full disk does not fail the log");
        assert!(log.spare_failure().is_some());
        assert!(log.headroom() <= cfg.reserve_bytes + 4096);
        // Results go on, into the reserve.
        let mut results = 0;
        loop {
            let p = payload(900 + results, 300);
            let r = log
                .enqueue_class(Class::Reserved, KIND, TimestampMs(10), p.len(), |_, w| {
                    w.put(&p)
                })
                .await;
            match r {
                Ok(seq) => {
                    log.durable(seq).await.unwrap();
                    acked.push(p);
                    results += 1;
                }
                Err(e) => {
                    assert!(matches!(e, Error::NoSpace(_)), "{e}");
                    break;
                }
            }
            assert!(results < 200, "the reserve is bounded by the segment");
        }
        assert!(results >= 30, "the reserve took {results} results");
        assert!(log.failure().is_none());
        // Space returns: no reopen needed.
        env.set_full(false);
        log.retry_spare();
        let p = payload(5000, 700);
        let mut ok = false;
        for _ in 0..100 {
            match log.append(KIND, TimestampMs(11), &[&p]).await {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(Error::NoSpace(_)) => {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(ok, "new records accepted again once space returned");
        acked.push(p);
        assert!(log.spare_failure().is_none());
        log.close().await.unwrap();
        acked
    });
    // Everything acknowledged is there after a reopen.
    run(async {
        let (log, _) = Log::open(BufferedEnv, dir.path(), cfg.clone(), TimestampMs(1))
            .await
            .unwrap();
        let got: Vec<_> = log
            .iter_from(Sequence(1))
            .map(|r| r.unwrap().payload)
            .collect();
        assert_eq!(got, acked);
        log.close().await.unwrap();
    });
}
