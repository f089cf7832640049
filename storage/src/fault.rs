//! A fault-injecting [`Env`] for tests: real files in a directory, written
//! with plain synchronous syscalls, plus switches that tear writes, shorten
//! them, fail fdatasync, and simulate a power loss that throws away (or
//! tears block by block) everything written since the last successful
//! fdatasync of each file.
//!
//! It is part of the public API so integration tests, benches and the
//! engine's own tests can use it; it is never used by production code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::env::{Env, LogFile};

/// What happens to unsynced writes at a simulated power loss.
#[derive(Clone, Copy, Debug)]
pub enum PowerLoss {
    /// Everything written since the last fdatasync is lost.
    DropUnsynced,
    /// Everything written reached the disk (a process crash: the page cache
    /// survives).
    KeepUnsynced,
    /// Each unsynced 4 KiB block independently survives or not, chosen by
    /// this seed (the disk may persist blocks in any order).
    TearBlocks(u64),
}

#[derive(Default)]
struct Faults {
    dead: bool,
    fail_sync: bool,
    /// `allocate` fails with ENOSPC (a full file system).
    no_space: bool,
    /// Next write lands only this many bytes and then reports an error.
    short_write: Option<usize>,
    /// Next write lands only this many bytes, then the machine "dies".
    torn_write: Option<usize>,
    /// Per file: (offset, previous bytes) of writes not yet covered by a
    /// successful fdatasync, oldest first.
    unsynced: HashMap<PathBuf, Vec<(u64, Vec<u8>)>>,
    syncs: u64,
    writes: u64,
    /// fdatasync calls wait while set (to hold a flush in flight)...
    hold_syncs: bool,
    /// ...except this many, which pass.
    pass_syncs: u64,
    held: Vec<std::task::Waker>,
}

/// Test environment; clones share the same switches.
#[derive(Clone, Default)]
pub struct FaultEnv {
    faults: Rc<RefCell<Faults>>,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected failure: {what}"))
}

impl FaultEnv {
    /// A healthy environment.
    pub fn new() -> FaultEnv {
        FaultEnv::default()
    }

    /// Makes every following fdatasync fail (and keep failing).
    pub fn fail_syncs(&self) {
        self.faults.borrow_mut().fail_sync = true;
    }

    /// While `full`, preallocation fails with ENOSPC, as on a full file
    /// system (writes into space already allocated still work).
    pub fn set_full(&self, full: bool) {
        self.faults.borrow_mut().no_space = full;
    }

    /// The next write stores only `bytes` bytes and returns an error.
    pub fn short_next_write(&self, bytes: usize) {
        self.faults.borrow_mut().short_write = Some(bytes);
    }

    /// The next write stores only `bytes` bytes, then power is lost
    /// (unsynced writes before it are kept; every later call fails).
    pub fn tear_next_write(&self, bytes: usize) {
        self.faults.borrow_mut().torn_write = Some(bytes);
    }

    /// Makes fdatasync calls wait (the flush stays in flight) until
    /// [`FaultEnv::release_syncs`].
    pub fn hold_syncs(&self) {
        self.faults.borrow_mut().hold_syncs = true;
    }

    /// Lets held and later fdatasync calls proceed.
    pub fn release_syncs(&self) {
        let mut f = self.faults.borrow_mut();
        f.hold_syncs = false;
        for w in f.held.drain(..) {
            w.wake();
        }
    }

    /// Lets exactly `n` more fdatasync calls through, then holds again.
    pub fn pass_syncs(&self, n: u64) {
        let mut f = self.faults.borrow_mut();
        f.pass_syncs += n;
        for w in f.held.drain(..) {
            w.wake();
        }
    }

    /// Successful fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.faults.borrow().syncs
    }

    /// Write calls so far.
    pub fn writes(&self) -> u64 {
        self.faults.borrow().writes
    }

    /// Simulates a power loss now: applies `mode` to unsynced writes and
    /// makes every later operation of this environment fail. Reopen the log
    /// with a fresh environment afterwards.
    pub fn power_loss(&self, mode: PowerLoss) -> io::Result<()> {
        let mut f = self.faults.borrow_mut();
        f.dead = true;
        // Deterministic per seed.
        let mut rng = StdRng::seed_from_u64(match mode {
            PowerLoss::TearBlocks(seed) => seed,
            _ => 1,
        });
        let mut coin = move || rng.gen::<bool>();
        for (path, writes) in f.unsynced.drain() {
            let file = OpenOptions::new().write(true).open(&path)?;
            for (pos, old) in writes.iter().rev() {
                for (i, block) in old.chunks(4096).enumerate() {
                    let revert = match mode {
                        PowerLoss::DropUnsynced => true,
                        PowerLoss::KeepUnsynced => false,
                        PowerLoss::TearBlocks(_) => coin(),
                    };
                    if revert {
                        file.write_all_at(block, pos + (i * 4096) as u64)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.faults.borrow().dead {
            return Err(eio("power is off"));
        }
        Ok(())
    }
}

/// A [`FaultEnv`] file.
pub struct FaultFile {
    path: PathBuf,
    file: File,
    env: FaultEnv,
}

impl LogFile for FaultFile {
    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        self.env.check_alive()?;
        let mut old = vec![0u8; buf.len()];
        let mut got = 0;
        while got < old.len() {
            match self.file.read_at(&mut old[got..], pos + got as u64)? {
                0 => break, // past EOF: previous content reads as zeros
                n => got += n,
            }
        }
        let (short, torn) = {
            let mut f = self.env.faults.borrow_mut();
            f.writes += 1;
            f.unsynced
                .entry(self.path.clone())
                .or_default()
                .push((pos, old));
            (f.short_write.take(), f.torn_write.take())
        };
        if let Some(n) = short.or(torn) {
            self.file.write_all_at(&buf[..n.min(buf.len())], pos)?;
            if torn.is_some() {
                self.env.faults.borrow_mut().dead = true;
            }
            return Err(eio("short or torn write"));
        }
        self.file.write_all_at(&buf, pos)
    }

    async fn sync_data(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut f = self.env.faults.borrow_mut();
            if !f.hold_syncs {
                std::task::Poll::Ready(())
            } else if f.pass_syncs > 0 {
                f.pass_syncs -= 1;
                std::task::Poll::Ready(())
            } else {
                f.held.push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        self.env.check_alive()?;
        if self.env.faults.borrow().fail_sync {
            return Err(eio("fdatasync"));
        }
        self.file.sync_data()?;
        let mut f = self.env.faults.borrow_mut();
        f.syncs += 1;
        f.unsynced.remove(&self.path);
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.env.check_alive()?;
        if self.env.faults.borrow().no_space {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.env.check_alive()?;
        self.file.set_len(len)
    }
}

impl Env for FaultEnv {
    type File = FaultFile;

    async fn create(&self, path: &Path) -> io::Result<FaultFile> {
        self.check_alive()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(FaultFile {
            path: path.to_owned(),
            file,
            env: self.clone(),
        })
    }

    async fn open(&self, path: &Path) -> io::Result<FaultFile> {
        self.check_alive()?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(FaultFile {
            path: path.to_owned(),
            file,
            env: self.clone(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.check_alive()?;
        std::fs::remove_file(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_alive()?;
        std::fs::rename(from, to)?;
        let mut f = self.faults.borrow_mut();
        if let Some(writes) = f.unsynced.remove(from) {
            f.unsynced.insert(to.to_owned(), writes);
        }
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check_alive()?;
        File::open(dir)?.sync_all()
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        glommio::spawn_local(task).detach();
    }
}
