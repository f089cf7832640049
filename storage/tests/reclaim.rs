//! Reclamation: segments go only when every cursor passed them and the
//! retention age elapsed; copy-forward keeps a pinned record readable.

mod common;

use std::path::Path;

use common::{fast_tempdir, open, payload, run, KIND};
use tern_storage::{BufferedEnv, Error, LogConfig, RecordKind, Sequence, TimestampMs};

fn cfg() -> LogConfig {
    LogConfig {
        record_bytes_max: 2048,
        segment_bytes_max: 8 << 10,
        retention_min_ms: 0,
        ..LogConfig::default()
    }
}

fn seg_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

#[test]
fn segments_go_only_when_every_cursor_passed_them() {
    let dir = fast_tempdir();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg()).await;
        for i in 0..100 {
            log.append(KIND, TimestampMs(100), &[&payload(i, 500)])
                .await
                .unwrap();
        }
        let segs = log.segments();
        assert!(segs.len() >= 6, "{}", segs.len());
        assert_eq!(seg_files(dir.path()), segs.len());
        let now = TimestampMs(1_000_000);
        assert!(log.reclaim(now).await.unwrap().deleted.is_empty());
        log.set_cursor("queue", Sequence(101)).await.unwrap();
        log.set_cursor("shadow", Sequence(101)).await.unwrap();
        assert!(
            log.reclaim(now).await.unwrap().deleted.is_empty(),
            "safety-net still at 1"
        );
        let mid = segs[3].first.0 + 1; // inside the fourth segment
        log.set_cursor("safety-net", Sequence(mid)).await.unwrap();
        let report = log.reclaim(now).await.unwrap();
        assert_eq!(
            report.deleted,
            vec![segs[0].first, segs[1].first, segs[2].first]
        );
        assert!(report.bytes > 0);
        assert_eq!(seg_files(dir.path()), segs.len() - 3);
        assert_eq!(log.first_sequence(), segs[3].first);
        assert!(matches!(log.read(Sequence(1)), Err(Error::NotFound(_))));
        assert_eq!(log.read(segs[3].first).unwrap().payload.len(), 500);
        // The active segment is never deleted, even when all passed it.
        log.set_cursor("safety-net", Sequence(101)).await.unwrap();
        log.reclaim(now).await.unwrap();
        assert_eq!(log.segments().len(), 1);
        assert_eq!(log.durable_end(), Sequence(101));
        // A cursor cannot move back behind the retained log.
        assert!(matches!(
            log.set_cursor("queue", Sequence(1)).await,
            Err(Error::InvalidCursor(_))
        ));
        log.close().await.unwrap();
        // After reopening, sequences continue; nothing comes back.
        let log = open(BufferedEnv, dir.path(), &cfg()).await;
        assert_eq!(log.segments().len(), 1);
        assert_eq!(log.append(KIND, now, &[b"x"]).await.unwrap(), Sequence(101));
        log.close().await.unwrap();
    });
}

#[test]
fn retention_age_is_respected() {
    let dir = fast_tempdir();
    let config = LogConfig {
        retention_min_ms: 60_000,
        ..cfg()
    };
    run(async {
        let log = open(BufferedEnv, dir.path(), &config).await;
        for i in 0..40 {
            log.append(KIND, TimestampMs(1_000 + i), &[&payload(i, 500)])
                .await
                .unwrap();
        }
        for c in ["queue", "shadow", "safety-net"] {
            log.set_cursor(c, Sequence(41)).await.unwrap();
        }
        assert!(log
            .reclaim(TimestampMs(30_000))
            .await
            .unwrap()
            .deleted
            .is_empty());
        assert!(!log
            .reclaim(TimestampMs(100_000))
            .await
            .unwrap()
            .deleted
            .is_empty());
    });
}

#[test]
fn copy_forward_unpins_old_segments() {
    let dir = fast_tempdir();
    run(async {
        let log = open(BufferedEnv, dir.path(), &cfg()).await;
        // A long-deferred message at the very start of the log.
        let pinned = log
            .append(RecordKind(3), TimestampMs(10), &[b"deferred message"])
            .await
            .unwrap();
        let mut live = pinned;
        let now = TimestampMs(1_000_000);
        // Many rounds of traffic; each round everything but the pinned
        // message is done. Without copy-forward every segment would stay.
        for round in 0..20u64 {
            for i in 0..30 {
                log.append(KIND, TimestampMs(20 + round), &[&payload(i, 600)])
                    .await
                    .unwrap();
            }
            let oldest = log.segments()[0].clone();
            if live < oldest.next {
                live = log
                    .copy_forward(live, TimestampMs(20 + round))
                    .await
                    .unwrap();
            }
            // The engine treats the old copy as passed: cursors stop at the
            // live copy.
            for c in ["queue", "shadow", "safety-net"] {
                log.set_cursor(c, live).await.unwrap();
            }
            log.reclaim(now).await.unwrap();
            let segs = log.segments().len();
            assert!(segs <= 4, "round {round}: {segs} segments kept");
            let rec = log.read(live).unwrap();
            assert_eq!(&rec.payload[..], b"deferred message");
            assert_eq!(rec.kind, RecordKind(3));
            assert_eq!(rec.origin, (live != pinned).then_some(pinned));
        }
        assert!(live > pinned);
        assert!(matches!(log.read(pinned), Err(Error::NotFound(_))));
        log.close().await.unwrap();
        let log = open(BufferedEnv, dir.path(), &cfg()).await;
        let rec = log.read(live).unwrap();
        assert_eq!(
            (&rec.payload[..], rec.origin),
            (&b"deferred message"[..], Some(pinned))
        );
        log.close().await.unwrap();
    });
}
