//! The engine's storage environment: glommio buffered or `O_DIRECT` I/O
//! (`[storage] io`), plus one test-only failpoint so integration tests can make the real binary's log
//! fail: `TERN_FAILPOINT_STORAGE=fail-sync-after=N` makes every fdatasync
//! after the first N fail (the log then fails for good and sessions get
//! 452 4.3.1). Unset in production; documented in README.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;

use tern_storage::env::{Buffered, Direct};
use tern_storage::{BufferedEnv, DirectEnv, Env, LogFile};

pub use crate::config::IoMode;

/// Environment variable holding the failpoint.
pub const FAILPOINT_VAR: &str = "TERN_FAILPOINT_STORAGE";

/// Resolves `Auto` by trying an `O_DIRECT` open in `dir`.
pub fn resolve(mode: IoMode, dir: &Path) -> IoMode {
    {
        if mode != IoMode::Auto {
            return mode;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let probe = dir.join(".odirect-probe");
        let ok = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        if ok {
            IoMode::Direct
        } else {
            tracing::warn!(dir = %dir.display(), "O_DIRECT not supported here; using buffered I/O");
            IoMode::Buffered
        }
    }
}

/// Buffered or direct I/O with an optional fdatasync failpoint.
#[derive(Clone, Default)]
pub struct EngineEnv {
    mode: IoMode,
    syncs_left: Option<Rc<Cell<u64>>>,
}

impl EngineEnv {
    /// The environment for `mode`, with the failpoint read from the
    /// process environment (unset = healthy).
    pub fn new(mode: IoMode) -> Result<EngineEnv, String> {
        let Ok(spec) = std::env::var(FAILPOINT_VAR) else {
            return Ok(EngineEnv {
                mode,
                syncs_left: None,
            });
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
            mode,
            syncs_left: Some(Rc::new(Cell::new(n))),
        })
    }
}

enum Inner {
    Buffered(Buffered),
    Direct(Direct),
}

/// A file of [`EngineEnv`].
pub struct EngineFile {
    inner: Inner,
    syncs_left: Option<Rc<Cell<u64>>>,
}

macro_rules! each {
    ($self:ident . $call:ident ( $($arg:expr),* )) => {
        match &$self.inner {
            Inner::Buffered(f) => f.$call($($arg),*).await,
            Inner::Direct(f) => f.$call($($arg),*).await,
        }
    };
}

impl EngineFile {
    /// Counts one fdatasync against the failpoint; `Err` once it is spent.
    fn failpoint(&self) -> io::Result<()> {
        if let Some(left) = &self.syncs_left {
            if left.get() == 0 {
                return Err(io::Error::other("failpoint: fdatasync failed"));
            }
            left.set(left.get() - 1);
        }
        Ok(())
    }
}

impl LogFile for EngineFile {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        each!(self.write_at(buf, pos))
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.failpoint()?;
        each!(self.sync_data())
    }

    async fn write_all_sync(&self, writes: Vec<(Vec<u8>, u64)>) -> io::Result<()> {
        if let Err(e) = self.failpoint() {
            // The writes happen; the fdatasync fails.
            for (buf, pos) in writes {
                each!(self.write_at(buf, pos))?;
            }
            return Err(e);
        }
        each!(self.write_all_sync(writes))
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        each!(self.allocate(len))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        each!(self.truncate(len))
    }
}

impl EngineEnv {
    async fn wrap(&self, path: &Path, create: bool) -> io::Result<EngineFile> {
        let inner = match (self.mode, create) {
            (IoMode::Buffered | IoMode::Auto, true) => {
                Inner::Buffered(BufferedEnv.create(path).await?)
            }
            (IoMode::Buffered | IoMode::Auto, false) => {
                Inner::Buffered(BufferedEnv.open(path).await?)
            }
            (IoMode::Direct, true) => Inner::Direct(DirectEnv.create(path).await?),
            (IoMode::Direct, false) => Inner::Direct(DirectEnv.open(path).await?),
        };
        Ok(EngineFile {
            inner,
            syncs_left: self.syncs_left.clone(),
        })
    }
}

impl Env for EngineEnv {
    type File = EngineFile;

    async fn create(&self, path: &Path) -> io::Result<EngineFile> {
        self.wrap(path, true).await
    }

    async fn open(&self, path: &Path) -> io::Result<EngineFile> {
        self.wrap(path, false).await
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
