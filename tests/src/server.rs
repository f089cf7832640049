//! The real `tern` binary as a child process: built once per test binary
//! (escargot, same profile as the tests), started on a free loopback port
//! with a temporary data directory, stderr captured to a file, and always
//! killed (SIGKILL by PID) and reaped when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::smtp::Client;

/// Bound on a server becoming ready (all cores listening).
pub const START_WAIT: Duration = Duration::from_secs(20);
/// Bound on a graceful stop (SIGTERM to exit).
pub const STOP_WAIT: Duration = Duration::from_secs(20);

/// Path of the `tern` binary, built on first use with the tests' profile.
///
/// Not `--target` (escargot's `current_target`): that would build the
/// whole dependency tree a second time into `target/<triple>/`; the host
/// build shares `target/debug` with `cargo test --workspace`, which has
/// built `tern` already.
pub fn tern_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let run = escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .package("tern-engine")
            .bin("tern")
            .current_release()
            .run()
            .unwrap_or_else(|e| panic!("cannot build the tern binary: {e}"));
        run.path().to_path_buf()
    })
}

/// Path of the `tern-loadgen` binary, built on first use like
/// [`tern_bin`].
pub fn loadgen_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let run = escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .package("tern-loadgen")
            .bin("tern-loadgen")
            .current_release()
            .run()
            .unwrap_or_else(|e| panic!("cannot build the tern-loadgen binary: {e}"));
        run.path().to_path_buf()
    })
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// A loopback port held for a server: a socket bound with SO_REUSEPORT
/// and never listening. tern's listeners (SO_REUSEPORT, same user) can bind
/// the port beside it, while every other bind, including another test's
/// [`free_addr`], fails, so two test servers never share a port. It
/// receives no connections (only listening sockets do).
pub struct PortReservation {
    fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
}

impl PortReservation {
    /// Reserves a free port on 127.0.0.1.
    pub fn new() -> PortReservation {
        PortReservation::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Reserves `addr` again (to start a node where another one was).
    pub fn at(addr: SocketAddr) -> PortReservation {
        PortReservation::bind(addr)
    }

    fn bind(want: SocketAddr) -> PortReservation {
        let SocketAddr::V4(want) = want else {
            panic!("IPv4 only: {want}");
        };
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls on a socket this function owns; the
        // sockaddr structs are fully initialised and sized correctly.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "SO_REUSEPORT: {}", std::io::Error::last_os_error());
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(*want.ip()).to_be();
            sa.sin_port = want.port().to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let rc = libc::getsockname(raw, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            let port = u16::from_be(sa.sin_port);
            PortReservation {
                fd,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }
        }
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for PortReservation {
    fn default() -> Self {
        PortReservation::new()
    }
}

impl std::fmt::Debug for PortReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortReservation({}, {:?})", self.addr, self.fd)
    }
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--cores`.
    pub cores: usize,
    /// TOML written to `config.toml` and passed as `--config`.
    pub config: Option<String>,
    /// Extra environment (e.g. the storage failpoint).
    pub env: Vec<(String, String)>,
    /// Data directory to use instead of `data` in the test's directory
    /// (a small file system the test mounted, say).
    pub data_dir: Option<PathBuf>,
    /// More arguments for `tern serve` (e.g. `--log-format json`).
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cores: 1,
            config: None,
            env: Vec::new(),
            data_dir: None,
            args: Vec::new(),
        }
    }
}

impl Options {
    /// One core with this config file.
    pub fn with_config(toml: &str) -> Options {
        Options {
            config: Some(toml.to_string()),
            ..Options::default()
        }
    }
}

/// A running (or stopped) `tern serve`.
pub struct TernProcess {
    dir: tempfile::TempDir,
    options: Options,
    child: Option<Child>,
    status: Option<ExitStatus>,
    smtp: PortReservation,
    admin: SocketAddr,
    stderr_path: PathBuf,
    starts: u32,
}

impl TernProcess {
    /// Starts a server on a fresh data directory and waits until it is
    /// ready.
    pub fn start(options: Options) -> TernProcess {
        TernProcess::start_on(options, PortReservation::new())
    }

    /// [`TernProcess::start`] on a port reserved beforehand (to name this
    /// node in another node's config before either starts).
    pub fn start_on(options: Options, smtp: PortReservation) -> TernProcess {
        let dir = tempfile::Builder::new()
            .prefix("tern-test-")
            .tempdir()
            .expect("tempdir");
        let mut p = TernProcess {
            stderr_path: dir.path().join("stderr-0.log"),
            dir,
            options,
            child: None,
            status: None,
            smtp,
            admin: free_addr(),
            starts: 0,
        };
        p.launch();
        p
    }

    /// The data directory (`shard-N/` inside).
    pub fn data_dir(&self) -> PathBuf {
        match &self.options.data_dir {
            Some(d) => d.clone(),
            None => self.dir.path().join("data"),
        }
    }

    /// The SMTP address (a new one after every restart).
    pub fn addr(&self) -> SocketAddr {
        self.smtp.addr()
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// PID of the current child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server was started").id()
    }

    /// What the current child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Starts the child with the current options on new ports (retrying
    /// when the admin port was taken in the meantime).
    ///
    /// New ports on every start, not the previous ones: after a SIGKILL
    /// the kernel tears glommio's io_uring down asynchronously, and for a
    /// few milliseconds the dead server's listeners still complete
    /// handshakes (then reset them); on the same SO_REUSEPORT port they
    /// would take some of the new server's connections.
    fn launch(&mut self) {
        assert!(self.running().is_none(), "server is still running");
        for attempt in 0..3 {
            self.starts += 1;
            self.stderr_path = self.dir.path().join(format!("stderr-{}.log", self.starts));
            if self.starts > 1 {
                self.smtp = PortReservation::new();
                self.admin = free_addr();
            }
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(why) => {
                    let status = self.kill();
                    let stderr = self.stderr();
                    if !stderr.contains("in use") || attempt == 2 {
                        panic!(
                            "tern did not start ({why}; {status}); stderr:\n{stderr}",
                            status = describe(status)
                        );
                    }
                }
            }
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(tern_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.smtp.addr().to_string())
            // Relative, as with the default `./tern-data`: the server runs
            // in the test's directory (a relative data directory once kept
            // it from starting).
            .current_dir(self.dir.path())
            .arg("--data-dir")
            .arg(
                self.options
                    .data_dir
                    .as_deref()
                    .unwrap_or(Path::new("data")),
            )
            .arg("--cores")
            .arg(self.options.cores.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .args(&self.options.args);
        // Unless the test sets up delivery, messages stay queued (tests of
        // the receiving side inspect the queue).
        let mut toml = self.options.config.clone().unwrap_or_default();
        if !toml.contains("[delivery]") && !toml.contains("relay_to") && !toml.contains("[routes]")
        {
            toml.push_str("\n[delivery]\nhold = true\n");
        }
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, toml).expect("write config");
        cmd.arg("--config").arg(path);
        cmd.env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env_remove(tern_engine::shard::failpoint::FAILPOINT_VAR)
            .env_remove("TERN_SPIN_US");
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let stderr = File::create(&self.stderr_path).expect("create stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tern_bin().display()));
        self.child = Some(child);
        self.status = None;
    }

    /// Ready = every core bound its listener (its "listener bound" line)
    /// and a connection gets the 220 greeting. Connections that are
    /// reset or closed before a reply are retried until [`START_WAIT`].
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!("exited during start-up: {}", describe(status)));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {START_WAIT:?}"));
            }
            // One core: the greeting proves it. More: each logs "listener
            // bound" once it listens, and a connection reaches only one of
            // them.
            let opened = self.options.cores == 1
                || self.stderr().matches("listener bound").count() >= self.options.cores;
            if opened {
                if let Ok(mut c) = Client::connect(self.smtp.addr()) {
                    match c.try_reply() {
                        Ok(Some(r)) if r.code == 220 => {
                            let _ = c.try_send(b"QUIT\r\n");
                            let _ = c.try_reply();
                            return Ok(());
                        }
                        Ok(Some(r)) => return Err(format!("probe connection got {r}")),
                        // Reset or closed: not serving yet; try again.
                        Ok(None) | Err(_) => {}
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `None` while running; the exit status (reaped) once it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = &mut self.child {
                self.status = child.try_wait().expect("try_wait");
            }
        }
        self.status
    }

    /// `Some(pid)` while the child runs.
    fn running(&mut self) -> Option<u32> {
        let pid = self.child.as_ref()?.id();
        self.try_wait().is_none().then_some(pid)
    }

    /// Is the child still running (it did not exit by itself)?
    pub fn is_running(&mut self) -> bool {
        self.running().is_some()
    }

    /// Sends `signal` to the child (unless it was reaped already: its PID
    /// may have been reused since).
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(pid) = self.running() {
            // SAFETY: plain syscall; the child is not reaped, so the PID
            // is still ours.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Waits (bounded) for the child to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; panics (after a
    /// SIGKILL) when the server does not stop in time.
    pub fn stop_gracefully(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_WAIT) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "tern did not exit within {STOP_WAIT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL (unless it exited already) and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let Some(child) = &mut self.child else {
            panic!("server was never started");
        };
        if self.status.is_none() {
            // SAFETY: as in `signal`: not reaped, the PID is ours.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        }
        let status = child.wait().expect("wait");
        self.status = Some(status);
        status
    }

    /// Starts the server again on the same data directory (new ports) with
    /// the same options. It must have stopped (or been killed) first.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// [`TernProcess::restart`] with other options (e.g. without the
    /// failpoint).
    pub fn restart_with(&mut self, options: Options) {
        self.options = options;
        self.launch();
    }

    /// A new connection with the greeting read (must be 220).
    #[track_caller]
    pub fn client(&self) -> Client {
        Client::open(self.addr())
    }

    /// A new connection after a successful EHLO.
    #[track_caller]
    pub fn ehlo(&self) -> Client {
        Client::ehlo(self.addr())
    }

    /// `GET /metrics` on the admin listener.
    pub fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
    }

    /// Sum over cores of counter (or gauge) `name` from `/metrics`.
    pub fn counter(&self, name: &str) -> u64 {
        sum_samples(&self.metrics(), &format!("{name}{{"))
    }

    /// `tern queue list` on this data directory.
    pub fn queue_list(&self) -> Vec<crate::queue::Entry> {
        crate::queue::list(&self.data_dir())
    }

    /// `tern queue show ID` on this data directory.
    pub fn queue_show(&self, id: &str) -> crate::queue::Shown {
        crate::queue::show(&self.data_dir(), id)
    }

    /// Queue ids, in `tern queue list` order.
    pub fn queue_ids(&self) -> Vec<String> {
        self.queue_list().into_iter().map(|e| e.id).collect()
    }
}

/// "exit code 0", "signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{status:?}"),
    }
}

impl Drop for TernProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("--- tern stderr (last {} lines) ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Reads whatever reply a fresh connection gets first: `Ok(None)` when
/// the connection is refused, reset or closed without a reply.
pub fn first_reply(addr: SocketAddr) -> Option<crate::smtp::Reply> {
    let mut c = Client::connect(addr).ok()?;
    c.try_reply().ok().flatten()
}

/// Sum of the samples in a `/metrics` text whose line starts with
/// `prefix` (e.g. `tern_messages_accepted_total{`: every core).
pub fn sum_samples(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after
/// `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on an admin listener; the whole HTTP response.
pub fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write admin");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read admin");
    out
}
