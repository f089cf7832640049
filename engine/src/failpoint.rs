//! The engine's storage environment: glommio buffered I/O, plus one
//! test-only failpoint so integration tests can make the real binary's log
//! fail: `TERN_FAILPOINT_STORAGE=fail-sync-after=N` makes every fdatasync
//! after the first N fail (the log then fails for good and sessions get
//! 452 4.3.1). Unset in production; documented in README.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;

use tern_storage::env::Buffered;
use tern_storage::{BufferedEnv, Env, LogFile};

/// Environment variable holding the failpoint.
pub const FAILPOINT_VAR: &str = "TERN_FAILPOINT_STORAGE";

/// Buffered I/O with an optional fdatasync failpoint.
#[derive(Clone, Default)]
pub struct EngineEnv {
    syncs_left: Option<Rc<Cell<u64>>>,
}

impl EngineEnv {
    /// Reads the failpoint from the environment (`None` = healthy).
    pub fn from_env() -> Result<EngineEnv, String> {
        let Ok(spec) = std::env::var(FAILPOINT_VAR) else {
            return Ok(EngineEnv::default());
        };
        let n = spec
            .strip_prefix("fail-sync-after=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{FAILPOINT_VAR}: expected fail-sync-after=N, got {spec:?}"))?;
        tracing::warn!(
            after = n,
            "storage failpoint armed: fdatasync will fail (test only)"
        );
        Ok(EngineEnv {
            syncs_left: Some(Rc::new(Cell::new(n))),
        })
    }
}

/// A file of [`EngineEnv`].
pub struct EngineFile {
    inner: Buffered,
    syncs_left: Option<Rc<Cell<u64>>>,
}

impl LogFile for EngineFile {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        self.inner.write_at(buf, pos).await
    }

    async fn sync_data(&self) -> io::Result<()> {
        if let Some(left) = &self.syncs_left {
            if left.get() == 0 {
                return Err(io::Error::other("failpoint: fdatasync failed"));
            }
            left.set(left.get() - 1);
        }
        self.inner.sync_data().await
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len).await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len).await
    }
}

impl Env for EngineEnv {
    type File = EngineFile;

    async fn create(&self, path: &Path) -> io::Result<EngineFile> {
        Ok(EngineFile {
            inner: BufferedEnv.create(path).await?,
            syncs_left: self.syncs_left.clone(),
        })
    }

    async fn open(&self, path: &Path) -> io::Result<EngineFile> {
        Ok(EngineFile {
            inner: BufferedEnv.open(path).await?,
            syncs_left: self.syncs_left.clone(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        BufferedEnv.remove(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        BufferedEnv.sync_dir(dir).await
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        BufferedEnv.spawn(task)
    }
}
