//! The runtime boundary: every file operation on the durability path goes
//! through [`Env`] / [`LogFile`], so tests can tear writes, shorten them and
//! fail fdatasync (see [`crate::fault`]), and the engine can pick the I/O
//! flavour.
//!
//! Two production environments (they must be used from inside a glommio
//! executor):
//!
//! * [`BufferedEnv`]: page-cache writes + `fdatasync` through glommio's
//!   io_uring reactor. Works on any file system (tmpfs included); the type
//!   default of `Log`.
//! * [`DirectEnv`]: `O_DIRECT` writes from a page-aligned buffer +
//!   `fdatasync`, run on the executor's blocking thread, one hand-off per
//!   group commit ([`LogFile::write_all_sync`]). Why not glommio's
//!   `DmaFile`: see [`DirectEnv`]. The `tern` server uses it where the file
//!   system supports `O_DIRECT` (zero-fill ahead keeps each commit an
//!   overwrite: without it, every direct write into preallocated extents
//!   converts them synchronously and is several times slower).
//!
//! The log always writes whole 4 KiB blocks at block-aligned offsets (it
//! rewrites the partial last block from memory), so both work unchanged.
//!
//! Reads do not go through this trait: segments and indexes are read through
//! read-only memory maps (memmap2) of the same files.

use std::future::Future;
use std::io;
use std::path::Path;

use glommio::io::{BufferedFile, OpenOptions};

/// One segment or cursor file, open for writing.
#[allow(async_fn_in_trait)]
pub trait LogFile: 'static {
    /// Writes all of `buf` at `pos`; a short write that cannot be completed
    /// is an error. `pos` and `buf.len()` are multiples of 4096.
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()>;
    /// `fdatasync(2)`. An error here is fatal to the log.
    async fn sync_data(&self) -> io::Result<()>;
    /// Writes each `(buf, pos)` in order (as [`LogFile::write_at`]), then
    /// `fdatasync(2)`: one group-commit step as one call, so a file that
    /// hands its I/O to another thread does it in one hand-off. An error in
    /// any part is the call's error.
    async fn write_all_sync(&self, writes: Vec<(Vec<u8>, u64)>) -> io::Result<()> {
        for (buf, pos) in writes {
            self.write_at(buf, pos).await?;
        }
        self.sync_data().await
    }
    /// Reserves space so the file is `len` bytes long (`fallocate`).
    async fn allocate(&self, len: u64) -> io::Result<()>;
    /// `ftruncate(2)` to `len` bytes.
    async fn truncate(&self, len: u64) -> io::Result<()>;
}

/// File system and task spawning, as seen by the log.
#[allow(async_fn_in_trait)]
pub trait Env: Clone + 'static {
    /// The file type.
    type File: LogFile;
    /// Creates `path` (failing if it exists) open for writing.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for writing.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Deletes a file.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (made durable by [`Env::sync_dir`]).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    /// `fsync` of a directory, making creations, renames and deletions in it
    /// durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Runs a background task on the current core (the log's flusher).
    fn spawn(&self, task: impl Future<Output = ()> + 'static);
}

/// Buffered I/O through the page cache, fdatasync through io_uring.
#[derive(Clone, Copy, Debug, Default)]
pub struct BufferedEnv;

/// A [`BufferedEnv`] file.
pub struct Buffered(BufferedFile);

impl LogFile for Buffered {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let want = buf.len();
        // The buffer is moved into the ring. A short write (a full disk or a
        // signal; the segment is preallocated, so neither is expected) is an
        // error: the log treats it as fatal rather than resubmitting.
        let written = self.0.write_at(buf, pos).await?;
        short_write_check(written, want)
    }

    async fn sync_data(&self) -> io::Result<()> {
        Ok(self.0.fdatasync().await?)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.pre_allocate(len, false).await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.truncate(len).await?)
    }
}

fn short_write_check(written: usize, want: usize) -> io::Result<()> {
    if written == want {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::WriteZero,
        format!("short write: {written} of {want} bytes"),
    ))
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await?;
    d.sync().await?;
    Ok(d.close().await?)
}

async fn remove(path: &Path) -> io::Result<()> {
    // Unlink is metadata only; std is fine and is made durable by sync_dir.
    std::fs::remove_file(path)
}

impl Env for BufferedEnv {
    type File = Buffered;

    async fn create(&self, path: &Path) -> io::Result<Buffered> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        Ok(Buffered(opts.buffered_open(path).await?))
    }

    async fn open(&self, path: &Path) -> io::Result<Buffered> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        Ok(Buffered(opts.buffered_open(path).await?))
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        remove(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir).await
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        glommio::spawn_local(task).detach();
    }
}

/// `O_DIRECT` writes and fdatasync on the executor's blocking thread.
///
/// Not glommio's `DmaFile`: glommio sends `DmaFile` reads and writes to its
/// `IOPOLL` ring whenever a probe read on the device succeeds, and a
/// virtual disk without poll queues (`/sys/block/*/queue/io_poll` = 0)
/// passes that probe. Completions on that ring are only reaped by polling,
/// so the executor spins in `io_uring_enter` for as long as a write is in
/// flight (measured: about 28 reactor passes per shadow copy on the
/// shadow, 3.2-4.4 s of its CPU per 20 000 copies; BENCHMARKS.md, "Shadow
/// redundancy"). Here a group commit's `pwrite`s (from a reused,
/// page-aligned buffer) and its `fdatasync` are one job on glommio's
/// blocking thread (`spawn_blocking`, via [`LogFile::write_all_sync`]);
/// the core sleeps until the kernel finishes them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectEnv;

/// A [`DirectEnv`] file.
pub struct Direct {
    file: std::sync::Arc<std::fs::File>,
    /// Page-aligned staging buffer (`O_DIRECT` needs aligned memory), lent
    /// to the blocking thread for each write and handed back; grown to the
    /// largest write seen.
    staging: std::cell::Cell<Option<memmap2::MmapMut>>,
}

/// Runs `f` on this executor's blocking thread.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

impl Direct {
    fn open_with(path: &Path, create: bool) -> io::Result<Direct> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Direct {
            file: std::sync::Arc::new(file),
            staging: std::cell::Cell::new(None),
        })
    }

    /// Copies `writes` into the staging buffer, then on the blocking
    /// thread writes them in order and (if `sync`) fdatasyncs: one
    /// hand-off.
    async fn stage_and_run(&self, writes: Vec<(Vec<u8>, u64)>, sync: bool) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let total: usize = writes.iter().map(|(b, _)| b.len()).sum();
        let mut staging = match self.staging.take() {
            Some(m) if m.len() >= total => m,
            _ => memmap2::MmapMut::map_anon(total.next_power_of_two().max(64 << 10))?,
        };
        let mut spans = Vec::with_capacity(writes.len());
        let mut at = 0;
        for (buf, pos) in writes {
            staging[at..at + buf.len()].copy_from_slice(&buf);
            spans.push((at, buf.len(), pos));
            at += buf.len();
        }
        let file = self.file.clone();
        let (staging, res) = blocking(move || {
            let run = || {
                for &(from, len, pos) in &spans {
                    file.write_all_at(&staging[from..from + len], pos)?;
                }
                if sync {
                    file.sync_data()?;
                }
                Ok(())
            };
            let res = run();
            (staging, res)
        })
        .await;
        self.staging.set(Some(staging));
        res
    }
}

impl LogFile for Direct {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        self.stage_and_run(vec![(buf, pos)], false).await
    }

    async fn sync_data(&self) -> io::Result<()> {
        let file = self.file.clone();
        blocking(move || file.sync_data()).await
    }

    async fn write_all_sync(&self, writes: Vec<(Vec<u8>, u64)>) -> io::Result<()> {
        self.stage_and_run(writes, true).await
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = self.file.clone();
        blocking(move || {
            // SAFETY: plain syscall on an open descriptor owned by `file`.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
        .await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let file = self.file.clone();
        blocking(move || file.set_len(len)).await
    }
}

impl Env for DirectEnv {
    type File = Direct;

    async fn create(&self, path: &Path) -> io::Result<Direct> {
        let path = path.to_owned();
        blocking(move || Direct::open_with(&path, true)).await
    }

    async fn open(&self, path: &Path) -> io::Result<Direct> {
        let path = path.to_owned();
        blocking(move || Direct::open_with(&path, false)).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        remove(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir).await
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        glommio::spawn_local(task).detach();
    }
}
