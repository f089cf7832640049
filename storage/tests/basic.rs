//! Append, read, iterate, time lookup, rolls, reopen, limits.

mod common;

use common::{open, payload, run, small_config, KIND};
use futures_lite::future::zip;
use tern_storage::fault::FaultEnv;
use tern_storage::{BufferedEnv, DirectEnv, Error, Log, RecordKind, Sequence, TimestampMs};

#[test]
fn append_read_reopen_buffered_and_direct() {
    for direct in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config();
        run(async {
            let mut seqs = Vec::new();
            macro_rules! body {
                ($env:expr) => {{
                    let log = open($env, dir.path(), &cfg).await;
                    for i in 0..300u64 {
                        let p = payload(i, (i as usize * 97) % 5000);
                        seqs.push(
                            log.append(KIND, TimestampMs(2_000 + i), &[&p])
                                .await
                                .unwrap(),
                        );
                    }
                    log.close().await.unwrap();
                    let log = open($env, dir.path(), &cfg).await;
                    assert!(log.segments().len() > 2, "small segments roll");
                    for (i, seq) in seqs.iter().enumerate() {
                        let rec = log.read(*seq).unwrap();
                        assert_eq!(rec.kind, KIND);
                        assert_eq!(rec.payload, payload(i as u64, (i * 97) % 5000));
                        assert_eq!(rec.timestamp, TimestampMs(2_000 + i as u64));
                    }
                    let next = log.append(KIND, TimestampMs(1), &[b"after"]).await.unwrap();
                    assert_eq!(next, seqs.last().unwrap().next());
                    // The clock went backwards: the stored time does not.
                    assert_eq!(log.read(next).unwrap().timestamp, TimestampMs(2_299));
                    log.close().await.unwrap();
                }};
            }
            if direct {
                body!(DirectEnv);
                // DirectEnv stays off glommio's IOPOLL ring (on a device
                // without poll queues, in-flight writes there make the core
                // spin; see DirectEnv).
                let stats = glommio::executor().io_stats();
                assert_eq!(stats.poll_ring.file_writes().0, 0, "poll ring used");
            } else {
                body!(BufferedEnv)
            }
        });
    }
}

#[test]
fn direct_write_all_sync_writes_every_span_in_order() {
    use tern_storage::{Env, LogFile};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // Larger than the first staging buffer (64 KiB): it grows.
    let big = payload(1, 256 << 10);
    run(async {
        let f = DirectEnv.create(&path).await.unwrap();
        f.allocate(1 << 20).await.unwrap();
        f.write_all_sync(vec![(vec![7; 4096], 0), (big.clone(), 8192)])
            .await
            .unwrap();
        // A later span overwrites an earlier one in the same call.
        f.write_all_sync(vec![(vec![1; 4096], 4096), (vec![2; 4096], 4096)])
            .await
            .unwrap();
        // Not block aligned: O_DIRECT refuses, and the error comes back.
        assert!(f.write_all_sync(vec![(vec![3; 100], 0)]).await.is_err());
        f.truncate(300 << 10).await.unwrap();
        assert!(matches!(
            DirectEnv
                .create(&path)
                .await
                .map(|_| ())
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::AlreadyExists
        ));
    });
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), 300 << 10);
    assert_eq!(&got[..4096], &[7; 4096][..]);
    assert_eq!(&got[4096..8192], &[2; 4096][..]);
    assert_eq!(&got[8192..8192 + big.len()], &big[..]);
}

#[test]
fn sequences_are_dense_and_iterate_in_order() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        let first = log
            .append(KIND, TimestampMs(5), &[b"a", b"b"])
            .await
            .unwrap();
        assert_eq!(first, Sequence(1));
        for i in 0..10u64 {
            log.append(KIND, TimestampMs(5 + i), &[&payload(i, 10)])
                .await
                .unwrap();
        }
        let all: Vec<_> = log.iter_from(Sequence(0)).map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 11);
        assert_eq!(&all[0].payload[..], b"ab");
        for w in all.windows(2) {
            assert_eq!(w[1].sequence, w[0].sequence.next());
        }
        assert!(matches!(log.read(Sequence(12)), Err(Error::NotFound(_))));
        assert!(matches!(log.read(Sequence(0)), Err(Error::NotFound(_))));
    });
}

#[test]
fn time_lookup_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        let mut by_time = Vec::new();
        for i in 0..200u64 {
            let at = TimestampMs(10_000 + (i / 3) * 100);
            by_time.push((
                at,
                log.append(KIND, at, &[&payload(i, 3000)]).await.unwrap(),
            ));
        }
        assert!(log.segments().len() > 1);
        for probe in [0, 10_000, 10_050, 10_100, 12_345, 16_600] {
            let want = by_time
                .iter()
                .find(|(at, _)| at.0 >= probe)
                .map(|(_, s)| *s);
            assert_eq!(log.first_at_or_after(TimestampMs(probe)), want, "t={probe}");
        }
        assert_eq!(log.first_at_or_after(TimestampMs(99_999)), None);
    });
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    let env = FaultEnv::new();
    run(async {
        let log = open(env.clone(), dir.path(), &small_config()).await;
        let before = env.syncs();
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    log.append(KIND, TimestampMs(7), &[&payload(i, 100)])
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await);
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 64);
        let syncs = env.syncs() - before;
        let stats = log.stats();
        assert_eq!(stats.records, 64);
        assert_eq!(stats.batches, syncs);
        assert_eq!(stats.sync_us_buckets.iter().sum::<u64>(), stats.batches);
        // Bucket i holds commits of 2^(i-1) .. 2^i - 1 us (bucket 0: 0 us;
        // the last one: anything slower): the sum lies within the bounds.
        let (mut low, mut high) = (0u64, 0u64);
        let last = stats.sync_us_buckets.len() - 1;
        for (i, &n) in stats.sync_us_buckets.iter().enumerate() {
            low += n * ((1u64 << i) >> 1);
            high = match (i == last, n) {
                (true, 1..) => u64::MAX,
                _ => high + n * ((1u64 << i) - 1),
            };
        }
        assert!(
            (low..=high).contains(&stats.sync_us_total),
            "sum {} outside {low}..={high}: {stats:?}",
            stats.sync_us_total
        );
        assert!(
            stats.batch_records_buckets[7] >= 1,
            "a batch of 64..127 records: {stats:?}"
        );
        // 64 appends queued in one turn of the executor: one batch (plus at
        // most one more for stragglers), never one fdatasync each.
        assert!(syncs <= 2, "{syncs} fdatasyncs for 64 appends");
    });
}

#[test]
fn limits_and_reserved_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        let big = vec![0u8; cfg.record_bytes_max + 1];
        assert!(matches!(
            log.append(KIND, TimestampMs(1), &[&big]).await,
            Err(Error::RecordTooLarge { .. })
        ));
        let max = vec![1u8; cfg.record_bytes_max];
        let seq = log.append(KIND, TimestampMs(1), &[&max]).await.unwrap();
        assert_eq!(log.read(seq).unwrap().payload.len(), max.len());
        for kind in [0u8, 0xF0, 0xFF] {
            assert!(matches!(
                log.append(RecordKind(kind), TimestampMs(1), &[b"x"]).await,
                Err(Error::ReservedKind(_))
            ));
        }
        // A second open of the same directory is refused.
        let second = Log::open(BufferedEnv, dir.path(), cfg.clone(), TimestampMs(1)).await;
        assert!(matches!(second, Err(Error::Locked(_))));
    });
}

#[test]
fn age_rolls_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tern_storage::LogConfig {
        segment_age_max_ms: 1_000,
        ..small_config()
    };
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        for i in 0..5u64 {
            log.append(KIND, TimestampMs(10_000 + i * 600), &[b"x"])
                .await
                .unwrap();
        }
        // Segment created at t=1000 by open; the first append at 10_000 rolls,
        // then every ~1 s of record time starts another.
        let segs = log.segments();
        assert!(segs.len() >= 3, "{segs:?}");
        let (a, b) = zip(
            log.append(KIND, TimestampMs(20_000), &[b"y"]),
            log.append(KIND, TimestampMs(20_001), &[b"z"]),
        )
        .await;
        assert_eq!(b.unwrap(), a.unwrap().next());
    });
}

#[test]
fn append_with_writes_the_payload_in_place_knowing_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        log.append(KIND, TimestampMs(1), &[b"first"]).await.unwrap();
        let seq = log
            .append_with(KIND, TimestampMs(2), 13, |seq, out| {
                out.put(b"id=");
                out.put(format!("{:010}", seq.0).as_bytes());
            })
            .await
            .unwrap();
        assert_eq!(seq, Sequence(2));
        assert_eq!(&log.read(seq).unwrap().payload[..], b"id=0000000002");
        assert!(matches!(
            log.append_with(RecordKind(0xF1), TimestampMs(2), 0, |_, _| {})
                .await,
            Err(Error::ReservedKind(_))
        ));
    });
}

#[test]
fn inspection_reads_a_live_log_without_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        for i in 0..100u64 {
            log.append(KIND, TimestampMs(5), &[&payload(i, 3000)])
                .await
                .unwrap();
        }
        let forwarded = log.copy_forward(Sequence(3), TimestampMs(6)).await.unwrap();
        log.set_cursor("queue", Sequence(50)).await.unwrap();
        // While the log is open (locked), the inspector still reads it.
        let view = tern_storage::inspect::inspect(dir.path()).unwrap();
        assert_eq!(view.cursor("queue"), Some(Sequence(50)));
        let recs: Vec<_> = view.records_from(Sequence(50)).collect();
        assert_eq!(recs.len(), 52);
        assert_eq!(recs[0].payload, payload(49, 3000));
        let last = recs.last().unwrap();
        assert_eq!((last.sequence, last.origin), (forwarded, Some(Sequence(3))));
        assert_eq!(last.payload, payload(2, 3000));
    });
}

#[test]
fn inspection_survives_a_restart_truncating_the_last_segment() {
    // `tern queue` holds a view while a restarting server may cut the last
    // segment's tail (recovery truncates and preallocates it again). A
    // mapped page past a truncation is SIGBUS: this test process would die
    // reading the view if the last segment were mapped.
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        for i in 0..200u64 {
            log.append(KIND, TimestampMs(5), &[&payload(i, 3000)])
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    });
    let view = tern_storage::inspect::inspect(dir.path()).unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() > 1, "the test needs sealed segments too");
    let last = segments.last().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(0)
        .unwrap();
    let recs: Vec<_> = view.records_from(Sequence(0)).collect();
    assert_eq!(recs.len(), 200, "the view is what was there when it looked");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.payload, payload(i as u64, 3000));
    }
}

#[test]
fn opens_a_relative_directory() {
    // Regression: `tern serve` defaults to ./tern-data; a relative log
    // directory used to fail at the first directory fsync (EBADF).
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let rel = std::path::PathBuf::from(format!(
        "{up}{}",
        dir.path().display().to_string().trim_start_matches('/')
    ));
    assert!(rel.is_relative());
    run(async {
        let log = open(BufferedEnv, &rel.join("shard-0"), &small_config()).await;
        let seq = log
            .append(KIND, TimestampMs(5), &[b"relative"])
            .await
            .unwrap();
        log.close().await.unwrap();
        let log = open(BufferedEnv, &rel.join("shard-0"), &small_config()).await;
        assert_eq!(&log.read(seq).unwrap().payload[..], b"relative");
    });
}

#[test]
fn enqueued_records_share_one_commit_and_are_unreadable_until_durable() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &small_config()).await;
        let mut seqs = Vec::new();
        for i in 0..5u64 {
            let p = payload(i, 300);
            seqs.push(
                log.enqueue_with(KIND, TimestampMs(3), p.len(), |_, out| out.put(&p))
                    .await
                    .unwrap(),
            );
        }
        // Queued, not yet committed: nothing is readable or reported durable.
        assert_eq!(seqs, (1..=5).map(Sequence).collect::<Vec<_>>());
        assert!(log.read(seqs[0]).is_err());
        assert_eq!(log.durable_end(), Sequence(1));
        let batches_before = log.stats().batches;
        log.durable(seqs[4]).await.unwrap();
        assert_eq!(log.durable_end(), Sequence(6));
        assert_eq!(
            log.stats().batches - batches_before,
            1,
            "one group commit for all five"
        );
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(log.read(*s).unwrap().payload, payload(i as u64, 300));
        }
        assert!(matches!(
            log.enqueue_with(RecordKind(0xF1), TimestampMs(2), 0, |_, _| {})
                .await,
            Err(Error::ReservedKind(_))
        ));
    });
}
