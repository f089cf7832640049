//! The engine's storage environment: glommio buffered or `O_DIRECT` I/O
//! (`[storage] io`), plus test-only failpoints so integration tests can
//! make the real binary's storage fail. `TERN_FAILPOINT_STORAGE` holds a
//! comma-separated list of:
//!
//! - `fail-sync-after=N`: every fdatasync after the first N fails (EIO;
//!   the log then fails for good: the node answers 421 and exits).
//! - `enospc-allocate-while=PATH`: while PATH exists, preallocation
//!   (`fallocate`: segment creation) fails with ENOSPC, as on a full file
//!   system; the node refuses new mail and takes it again once PATH is gone.
//! - `enospc-write-while=PATH`: while PATH exists, writes fail with ENOSPC
//!   (fatal for the log, as any failed write on the durability path).
//!
//! Unset in production; documented in README.

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

/// The failpoints armed (see the module docs).
#[derive(Clone, Default)]
struct Faults {
    syncs_left: Option<Rc<Cell<u64>>>,
    enospc_allocate_while: Option<Rc<Path>>,
    enospc_write_while: Option<Rc<Path>>,
}

impl Faults {
    fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || {
                format!(
                    "{FAILPOINT_VAR}: expected fail-sync-after=N, enospc-allocate-while=PATH or enospc-write-while=PATH, got {item:?}"
                )
            };
            let (key, value) = item.split_once('=').ok_or_else(bad)?;
            match key {
                "fail-sync-after" => {
                    let n: u64 = value.parse().map_err(|_| bad())?;
                    f.syncs_left = Some(Rc::new(Cell::new(n)));
                }
                "enospc-allocate-while" => f.enospc_allocate_while = Some(Path::new(value).into()),
                "enospc-write-while" => f.enospc_write_while = Some(Path::new(value).into()),
                _ => return Err(bad()),
            }
        }
        Ok(f)
    }

    fn no_space(switch: &Option<Rc<Path>>) -> io::Result<()> {
        match switch {
            Some(path) if path.exists() => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Ok(()),
        }
    }
}

/// Buffered or direct I/O with optional test failpoints.
#[derive(Clone, Default)]
pub struct EngineEnv {
    mode: IoMode,
    faults: Faults,
}

impl EngineEnv {
    /// The environment for `mode`, with the failpoints read from the
    /// process environment (unset = healthy).
    pub fn new(mode: IoMode) -> Result<EngineEnv, String> {
        let Ok(spec) = std::env::var(FAILPOINT_VAR) else {
            return Ok(EngineEnv {
                mode,
                faults: Faults::default(),
            });
        };
        let faults = Faults::parse(&spec)?;
        tracing::warn!(spec, "storage failpoint armed (test only)");
        Ok(EngineEnv { mode, faults })
    }
}

enum Inner {
    Buffered(Buffered),
    Direct(Direct),
}

/// A file of [`EngineEnv`].
pub struct EngineFile {
    inner: Inner,
    faults: Faults,
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
        if let Some(left) = &self.faults.syncs_left {
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
        Faults::no_space(&self.faults.enospc_write_while)?;
        each!(self.write_at(buf, pos))
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.failpoint()?;
        each!(self.sync_data())
    }

    async fn write_all_sync(&self, writes: Vec<(Vec<u8>, u64)>) -> io::Result<()> {
        Faults::no_space(&self.faults.enospc_write_while)?;
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
        Faults::no_space(&self.faults.enospc_allocate_while)?;
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
            faults: self.faults.clone(),
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
