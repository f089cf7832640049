//! Recovery: torn tails cut at every byte, bit flips always detected,
//! indexes rebuilt, torn segment creation, cursors.

mod common;

use std::path::Path;

use futures_lite::future::zip;

use common::{copy_dir, fast_tempdir, last_segment, open, payload, run, small_config, KIND};
use tern_storage::{BufferedEnv, Error, Log, LogConfig, Sequence, TimestampMs};

const DURABLE: u64 = 5;
const TAIL_LENS: [usize; 3] = [20, 300, 4200];

/// Builds a log whose last segment holds `DURABLE` indexed records followed
/// by the `TAIL_LENS` records written but not indexed (their fdatasync
/// "never completed"). Returns the directory, the offset where the tail
/// starts, and the end offset of each tail record.
fn log_with_unacknowledged_tail(cfg: &LogConfig) -> (tempfile::TempDir, u64, Vec<u64>) {
    let dir = fast_tempdir();
    let (tail_start, idx_at_durable) = run(async {
        let log = open(BufferedEnv, dir.path(), cfg).await;
        for i in 0..DURABLE {
            log.append(KIND, TimestampMs(100 + i), &[&payload(i, 100 + i as usize)])
                .await
                .unwrap();
        }
        let end = log.segments().last().unwrap().bytes;
        log.close().await.unwrap();
        (end, std::fs::read(last_segment(dir.path()).1).unwrap())
    });
    run(async {
        let log = open(BufferedEnv, dir.path(), cfg).await;
        // One batch (all queued in one poll): none of them was durable
        // before the others were queued, as in a real unacknowledged tail.
        let p: Vec<_> = (0..3)
            .map(|i| payload(DURABLE + i as u64, TAIL_LENS[i]))
            .collect();
        let (a, (b, c)) = zip(
            log.append(KIND, TimestampMs(200), &[&p[0]]),
            zip(
                log.append(KIND, TimestampMs(200), &[&p[1]]),
                log.append(KIND, TimestampMs(200), &[&p[2]]),
            ),
        )
        .await;
        assert_eq!(
            [a.unwrap(), b.unwrap(), c.unwrap()],
            [Sequence(6), Sequence(7), Sequence(8)]
        );
        log.close().await.unwrap();
    });
    // The index as it was before the tail: the tail was never acknowledged.
    std::fs::write(last_segment(dir.path()).1, idx_at_durable).unwrap();
    let mut ends = Vec::new();
    let mut at = tail_start;
    for len in TAIL_LENS {
        at += (tern_storage::record::HEADER_LEN + len) as u64;
        ends.push(at);
    }
    (dir, tail_start, ends)
}

/// Opens `dir`, checks the first `keep` records are the expected ones and
/// that exactly those are present, and that appending continues after them.
async fn expect_prefix(dir: &Path, cfg: &LogConfig, keep: u64) -> tern_storage::RecoveryReport {
    let (log, report) = Log::open(BufferedEnv, dir, cfg.clone(), TimestampMs(1))
        .await
        .unwrap();
    assert_eq!(log.durable_end(), Sequence(1 + keep), "records kept");
    for n in 0..keep {
        let len = if n < DURABLE {
            100 + n as usize
        } else {
            TAIL_LENS[(n - DURABLE) as usize]
        };
        let rec = log.read(Sequence(1 + n)).unwrap();
        assert_eq!(rec.payload, payload(n, len), "record {n}");
    }
    let next = log
        .append(KIND, TimestampMs(300), &[b"next"])
        .await
        .unwrap();
    assert_eq!(next, Sequence(1 + keep));
    log.close().await.unwrap();
    report
}

#[test]
fn torn_tail_cut_at_every_byte_offset() {
    let cfg = small_config();
    let (base, tail_start, ends) = log_with_unacknowledged_tail(&cfg);
    let (seg, _) = last_segment(base.path());
    let full = std::fs::read(&seg).unwrap();
    let work = fast_tempdir();
    run(async {
        for cut in tail_start..=*ends.last().unwrap() {
            for zero_fill in [true, false] {
                for e in std::fs::read_dir(work.path()).unwrap() {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
                copy_dir(base.path(), work.path());
                let target = work.path().join(seg.file_name().unwrap());
                if zero_fill {
                    // Preallocated file: the unwritten part reads as zeros.
                    let mut bytes = full.clone();
                    bytes[cut as usize..*ends.last().unwrap() as usize].fill(0);
                    std::fs::write(&target, bytes).unwrap();
                } else {
                    std::fs::write(&target, &full[..cut as usize]).unwrap();
                }
                let whole = ends.iter().filter(|&&end| end <= cut).count() as u64;
                let report = expect_prefix(work.path(), &cfg, DURABLE + whole).await;
                let torn = cut != tail_start && !ends.contains(&cut);
                assert_eq!(report.truncated.is_some(), torn, "cut at {cut}");
            }
        }
    });
}

#[test]
fn bit_flips_in_unacknowledged_tail_are_cut() {
    let cfg = small_config();
    let (base, tail_start, ends) = log_with_unacknowledged_tail(&cfg);
    let (seg, _) = last_segment(base.path());
    let full = std::fs::read(&seg).unwrap();
    let work = fast_tempdir();
    let target = work.path().join(seg.file_name().unwrap());
    copy_dir(base.path(), work.path());
    run(async {
        // Every bit of the first two tail records, every 13th of the third.
        for bit in (tail_start * 8..ends[2] * 8).filter(|b| *b < ends[1] * 8 || b % 13 == 0) {
            let mut bytes = full.clone();
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            std::fs::write(&target, bytes).unwrap();
            let hit = ends.iter().filter(|&&end| end * 8 <= bit).count() as u64;
            let report = expect_prefix(work.path(), &cfg, DURABLE + hit).await;
            assert!(report.truncated.is_some(), "bit {bit}");
            // expect_prefix appended one record: restore the index too.
            copy_dir(base.path(), work.path());
        }
    });
}

/// Outcome of reopening a log after damaging it.
enum Seen {
    OpenFailed,
    ReadFailed,
    Intact,
}

/// Opens and reads everything; never accepts wrong data or a silent loss.
async fn check_all(dir: &Path, cfg: &LogConfig, want: &[Vec<u8>]) -> Seen {
    let log = match Log::open(BufferedEnv, dir, cfg.clone(), TimestampMs(1)).await {
        Err(Error::Corruption { .. }) => return Seen::OpenFailed,
        Err(e) => panic!("unexpected error {e}"),
        Ok((log, _)) => log,
    };
    assert_eq!(
        log.durable_end(),
        Sequence(1 + want.len() as u64),
        "silent loss"
    );
    let mut seen = Seen::Intact;
    for (i, rec) in log.iter_from(Sequence(1)).enumerate() {
        match rec {
            Ok(rec) => assert_eq!(rec.payload, want[i], "wrong data for record {i}"),
            Err(Error::Corruption { .. }) => seen = Seen::ReadFailed,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    log.close().await.unwrap();
    seen
}

#[test]
fn bit_flips_in_acknowledged_records_are_always_detected() {
    let cfg = LogConfig {
        record_bytes_max: 2048,
        segment_bytes_max: 8 << 10,
        ..small_config()
    };
    let base = fast_tempdir();
    let want: Vec<Vec<u8>> = (0..40)
        .map(|i| payload(i, 100 + (i as usize * 37) % 700))
        .collect();
    let ranges = run(async {
        let log = open(BufferedEnv, base.path(), &cfg).await;
        for p in &want {
            log.append(KIND, TimestampMs(5), &[p]).await.unwrap();
        }
        let segs = log.segments();
        log.close().await.unwrap();
        segs
    });
    assert!(ranges.len() >= 3, "several segments");
    let work = fast_tempdir();
    copy_dir(base.path(), work.path());
    let (mut open_failed, mut read_failed) = (0, 0);
    run(async {
        for seg in &ranges {
            let name = seg.path.file_name().unwrap();
            let original = std::fs::read(&seg.path).unwrap();
            let target = work.path().join(name);
            // The segment header and every byte holding records (one bit per
            // byte, rotating through the bit positions).
            let offsets = (0..36u64).chain(4096..seg.bytes);
            for offset in offsets {
                let mut bytes = original.clone();
                bytes[offset as usize] ^= 1 << (offset % 8);
                std::fs::write(&target, &bytes).unwrap();
                match check_all(work.path(), &cfg, &want).await {
                    Seen::OpenFailed => open_failed += 1,
                    Seen::ReadFailed => read_failed += 1,
                    Seen::Intact => panic!("flip at {name:?}:{offset} not detected"),
                }
                // Reopening may have rewritten indexes: start clean again.
                copy_dir(base.path(), work.path());
            }
        }
    });
    assert!(
        open_failed > 0 && read_failed > 0,
        "{open_failed} {read_failed}"
    );
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt_from_the_log() {
    let cfg = LogConfig {
        record_bytes_max: 2048,
        segment_bytes_max: 8 << 10,
        ..small_config()
    };
    let base = fast_tempdir();
    let want: Vec<Vec<u8>> = (0..60).map(|i| payload(i, 300)).collect();
    run(async {
        let log = open(BufferedEnv, base.path(), &cfg).await;
        for p in &want {
            log.append(KIND, TimestampMs(5), &[p]).await.unwrap();
        }
        log.close().await.unwrap();
    });
    let idx_files: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    assert!(idx_files.len() >= 3);
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
        ("emptied", |p| std::fs::write(p, b"").unwrap()),
        ("garbage", |p| {
            let len = std::fs::metadata(p).unwrap().len() as usize;
            std::fs::write(
                p,
                (0..len).map(|i| (i * 131 % 251) as u8).collect::<Vec<_>>(),
            )
            .unwrap()
        }),
        ("entry offsets shifted", |p| {
            let mut b = std::fs::read(p).unwrap();
            for i in 0..3 {
                b[64 + 16 * (2 + i)] ^= 0x10;
            }
            std::fs::write(p, b).unwrap()
        }),
    ];
    for (what, damage) in damages {
        for idx in &idx_files {
            let work = fast_tempdir();
            copy_dir(base.path(), work.path());
            damage(&work.path().join(idx.file_name().unwrap()));
            run(async {
                let (log, report) =
                    Log::open(BufferedEnv, work.path(), cfg.clone(), TimestampMs(1))
                        .await
                        .unwrap();
                assert_eq!(report.indexes_rebuilt, 1, "{what} {idx:?}");
                let got: Vec<_> = log
                    .iter_from(Sequence(1))
                    .map(|r| r.unwrap().payload)
                    .collect();
                assert_eq!(got, want, "{what} {idx:?}");
                log.close().await.unwrap();
                // The rebuilt index is used next time without rebuilding.
                let (log, report) =
                    Log::open(BufferedEnv, work.path(), cfg.clone(), TimestampMs(1))
                        .await
                        .unwrap();
                assert_eq!(report.indexes_rebuilt, 0, "{what} {idx:?}");
                log.close().await.unwrap();
            });
        }
    }
}

#[test]
fn segment_torn_at_creation_is_removed_but_a_damaged_one_is_an_error() {
    let cfg = LogConfig {
        record_bytes_max: 2048,
        segment_bytes_max: 8 << 10,
        ..small_config()
    };
    let base = fast_tempdir();
    let want: Vec<Vec<u8>> = (0..30).map(|i| payload(i, 500)).collect();
    run(async {
        let log = open(BufferedEnv, base.path(), &cfg).await;
        for p in &want {
            log.append(KIND, TimestampMs(5), &[p]).await.unwrap();
        }
        log.close().await.unwrap();
    });
    // A new segment whose header never reached the disk and no index: as
    // left by a crash inside segment creation.
    let work = fast_tempdir();
    copy_dir(base.path(), work.path());
    let torn = work.path().join("00000000000000000031.seg");
    std::fs::write(&torn, vec![0u8; 8 << 10]).unwrap();
    run(async {
        let (log, report) = Log::open(BufferedEnv, work.path(), cfg.clone(), TimestampMs(1))
            .await
            .unwrap();
        assert_eq!(report.removed_torn_segment.as_deref(), Some(torn.as_path()));
        assert_eq!(log.durable_end(), Sequence(31));
        assert_eq!(
            log.append(KIND, TimestampMs(6), &[b"x"]).await.unwrap(),
            Sequence(31)
        );
        log.close().await.unwrap();
    });
    assert!(
        torn.with_extension("torn").exists(),
        "set aside, not deleted"
    );
    // The header of the last real segment damaged while it holds records:
    // corruption, never a silent removal, with or without its index.
    for keep_index in [true, false] {
        let work = fast_tempdir();
        copy_dir(base.path(), work.path());
        let (seg, idx) = last_segment(work.path());
        if !keep_index {
            std::fs::remove_file(idx).unwrap();
        }
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&seg, bytes).unwrap();
        run(async {
            let err = Log::open(BufferedEnv, work.path(), cfg.clone(), TimestampMs(1))
                .await
                .err();
            assert!(
                matches!(err, Some(Error::Corruption { offset: 0, .. })),
                "{err:?}"
            );
        });
    }
    let work = fast_tempdir();
    copy_dir(base.path(), work.path());
    let (seg, _) = last_segment(work.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    run(async {
        let err = Log::open(BufferedEnv, work.path(), cfg.clone(), TimestampMs(1))
            .await
            .err();
        assert!(
            matches!(err, Some(Error::Corruption { offset: 0, .. })),
            "{err:?}"
        );
    });
}

#[test]
fn cursors_survive_reopen_and_a_torn_slot() {
    let dir = fast_tempdir();
    let cfg = small_config();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        assert_eq!(log.cursor("queue"), Some(Sequence(1)));
        for i in 0..10 {
            log.append(KIND, TimestampMs(5), &[&payload(i, 10)])
                .await
                .unwrap();
        }
        log.set_cursor("queue", Sequence(4)).await.unwrap();
        log.set_cursor("queue", Sequence(7)).await.unwrap();
        log.set_cursor("shadow", Sequence(3)).await.unwrap();
        assert!(matches!(
            log.set_cursor("queue", Sequence(12)).await,
            Err(Error::InvalidCursor(_))
        ));
        assert!(matches!(
            log.set_cursor("nope", Sequence(2)).await,
            Err(Error::InvalidCursor(_))
        ));
        log.close().await.unwrap();
    });
    let bytes = std::fs::read(dir.path().join("cursors")).unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        assert_eq!(log.cursor("queue"), Some(Sequence(7)));
        assert_eq!(log.cursor("shadow"), Some(Sequence(3)));
        assert_eq!(log.cursor("safety-net"), Some(Sequence(1)));
        log.close().await.unwrap();
    });
    // Tear the newest slot: the previous durable state comes back.
    let newest = tern_storage::cursor::load(Some(&bytes));
    let tern_storage::cursor::LoadedCursors::Found(snap) = newest else {
        panic!()
    };
    let slot = snap.slot() as usize * 4096;
    let mut torn = bytes.clone();
    torn[slot + 100] ^= 0xff;
    std::fs::write(dir.path().join("cursors"), &torn).unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        assert_eq!(log.cursor("queue"), Some(Sequence(7)));
        assert_eq!(log.cursor("shadow"), Some(Sequence(1)), "previous slot");
        log.close().await.unwrap();
    });
    // Both slots bad: an error, not a silent reset.
    let mut both = torn;
    let other = 4096 - slot;
    both[other + 100] ^= 0xff;
    std::fs::write(dir.path().join("cursors"), &both).unwrap();
    run(async {
        let err = Log::open(BufferedEnv, dir.path(), cfg.clone(), TimestampMs(1))
            .await
            .err();
        assert!(matches!(err, Some(Error::Corruption { .. })), "{err:?}");
    });
}

#[test]
fn damaged_record_with_lost_index_is_corruption_when_later_batches_prove_it() {
    // Power loss can lose the (never fsynced) index. Records queued after a
    // record was durable say so (`durable_before`), so damage to that
    // record is still reported, not cut as a torn tail.
    let cfg = small_config();
    let base = fast_tempdir();
    run(async {
        let log = open(BufferedEnv, base.path(), &cfg).await;
        for i in 0..50 {
            log.append(KIND, TimestampMs(5), &[&payload(i, 200)])
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    });
    let (seg, idx) = last_segment(base.path());
    std::fs::remove_file(&idx).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let record4 = 4096 + 3 * (tern_storage::record::HEADER_LEN + 200) + 50;
    bytes[record4] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    run(async {
        let err = Log::open(BufferedEnv, base.path(), cfg.clone(), TimestampMs(1))
            .await
            .err();
        assert!(matches!(err, Some(Error::Corruption { .. })), "{err:?}");
    });
}

#[test]
fn lowering_record_bytes_max_keeps_old_records_readable() {
    let big = LogConfig {
        record_bytes_max: 64 << 10,
        ..small_config()
    };
    let small = LogConfig {
        record_bytes_max: 32 << 10,
        ..small_config()
    };
    let dir = fast_tempdir();
    let p = payload(1, 60_000);
    run(async {
        let log = open(BufferedEnv, dir.path(), &big).await;
        log.append(KIND, TimestampMs(5), &[&p]).await.unwrap();
        log.append(KIND, TimestampMs(5), &[b"after"]).await.unwrap();
        log.close().await.unwrap();
    });
    for drop_index in [false, true] {
        if drop_index {
            std::fs::remove_file(last_segment(dir.path()).1).unwrap();
        }
        run(async {
            let log = open(BufferedEnv, dir.path(), &small).await;
            assert_eq!(log.durable_end(), Sequence(3));
            assert_eq!(log.read(Sequence(1)).unwrap().payload, p);
            assert!(matches!(
                log.append(KIND, TimestampMs(5), &[&p]).await,
                Err(Error::RecordTooLarge { .. })
            ));
            log.close().await.unwrap();
        });
    }
}

#[test]
fn torn_first_cursor_write_is_not_corruption() {
    let dir = fast_tempdir();
    let cfg = small_config();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        log.append(KIND, TimestampMs(5), &[b"x"]).await.unwrap();
        log.set_cursor("queue", Sequence(2)).await.unwrap();
        log.close().await.unwrap();
    });
    // The first update went to slot 1; tear it.
    let path = dir.path().join("cursors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 600..].fill(0xAA);
    std::fs::write(&path, bytes).unwrap();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg).await;
        assert_eq!(log.cursor("queue"), Some(Sequence(1)), "initial slot 0");
        log.close().await.unwrap();
    });
}
