//! The runtime boundary: every file operation on the durability path goes
//! through [`Env`] / [`LogFile`], so tests can tear writes, shorten them and
//! fail fdatasync (see [`crate::fault`]), and the engine can pick the I/O
//! flavour.
//!
//! Two production environments, both on glommio's io_uring reactor (they
//! must be used from inside a glommio executor):
//!
//! * [`BufferedEnv`]: page-cache writes + `fdatasync`. Works on any file
//!   system (tmpfs included); the type default of `Log`.
//! * [`DirectEnv`]: `O_DIRECT` writes from aligned DMA buffers + `fdatasync`.
//!   Measured here (BENCHMARKS.md): as fast as buffered with one appender
//!   and about 2x with 64, *with* zero-fill ahead; without it, every direct
//!   write into preallocated extents converts them synchronously and is
//!   several times slower. The `tern` server uses it where supported.
//!
//! The log always writes whole 4 KiB blocks at block-aligned offsets (it
//! rewrites the partial last block from memory), so both work unchanged.
//!
//! Reads do not go through this trait: segments and indexes are read through
//! read-only memory maps (memmap2) of the same files.

use std::future::Future;
use std::io;
use std::path::Path;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

/// One segment or cursor file, open for writing.
#[allow(async_fn_in_trait)]
pub trait LogFile: 'static {
    /// Writes all of `buf` at `pos`; a short write that cannot be completed
    /// is an error. `pos` and `buf.len()` are multiples of 4096.
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()>;
    /// `fdatasync(2)`. An error here is fatal to the log.
    async fn sync_data(&self) -> io::Result<()>;
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

/// `O_DIRECT` I/O from DMA buffers, fdatasync through io_uring.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectEnv;

/// A [`DirectEnv`] file.
pub struct Direct(DmaFile);

impl LogFile for Direct {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let mut dma = self.0.alloc_dma_buffer(buf.len());
        dma.as_bytes_mut().copy_from_slice(&buf);
        let written = self.0.write_at(dma, pos).await?;
        short_write_check(written, buf.len())
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

impl Env for DirectEnv {
    type File = Direct;

    async fn create(&self, path: &Path) -> io::Result<Direct> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        Ok(Direct(opts.dma_open(path).await?))
    }

    async fn open(&self, path: &Path) -> io::Result<Direct> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        Ok(Direct(opts.dma_open(path).await?))
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
