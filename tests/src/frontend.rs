//! Helpers for the front-end tests (`tests/tests/frontend.rs`): a `tern
//! serve` on a fixed 127.0.0.x address that can be killed and started
//! again there ([`Tern`]), an SMTP client connecting from a chosen
//! loopback address ([`BoundClient`]), a `tern-loadgen send --acked` run
//! ([`Load`]) and `/metrics` samples with their labels ([`samples`]).
//!
//! Every process is killed (SIGKILL by PID) and reaped on drop; every wait
//! is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{loadgen_bin, tern_bin, wait_until, START_WAIT};
use crate::smtp::{dot_stuff, parse_reply, show, Client, Reply, REPLY_WAIT};

/// 127.0.0.`last`.
pub fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa.sin_port = port.to_be();
    sa
}

const SOCKADDR_IN_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// A port on 127.0.0.x held for a server, as
/// [`crate::server::PortReservation`] does on 127.0.0.1: a socket bound
/// with SO_REUSEPORT and never listening, so tern's listeners can bind
/// beside it while nothing else takes the port, and connections to it
/// are refused while no tern listens (a back end that is down).
pub struct Reservation {
    _fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
}

impl Reservation {
    /// A free port on `ip`.
    pub fn on(ip: Ipv4Addr) -> Reservation {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain syscalls on a socket this function owns; the
        // sockaddr structs are initialised and sized correctly.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let raw = fd.as_raw_fd();
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "SO_REUSEPORT: {}", io::Error::last_os_error());
            let mut sa = sockaddr_in(ip, 0);
            let rc = libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                SOCKADDR_IN_LEN,
            );
            assert_eq!(rc, 0, "bind {ip}: {}", io::Error::last_os_error());
            let mut len = SOCKADDR_IN_LEN;
            let rc = libc::getsockname(raw, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
            assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
            Reservation {
                _fd: fd,
                addr: SocketAddr::new(ip.into(), u16::from_be(sa.sin_port)),
            }
        }
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A `tern serve` (one core) on a fixed address and data directory: it
/// comes back where it was after [`Tern::kill`] (a front end's pools and
/// a peer's config name that address). Killed on drop; its stderr is
/// shown when the test is failing.
pub struct Tern {
    /// Its name in messages.
    pub name: &'static str,
    dir: tempfile::TempDir,
    smtp: Reservation,
    admin: SocketAddr,
    /// The config file of the next start.
    pub config: String,
    /// More arguments for `tern serve` (`--role front-end`, `--backend`).
    pub args: Vec<String>,
    child: Option<Child>,
    /// Starts so far (stderr of start n: `stderr-n.log`).
    pub starts: u32,
}

impl Tern {
    /// Starts `tern serve --config` (`config`) with `args` on `smtp` and
    /// waits until it greets.
    pub fn start(name: &'static str, smtp: Reservation, config: String, args: &[&str]) -> Tern {
        let dir = tempfile::Builder::new()
            .prefix("tern-test-")
            .tempdir()
            .expect("tempdir");
        let mut t = Tern {
            name,
            dir,
            smtp,
            admin: crate::server::free_addr(),
            config,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            starts: 0,
        };
        t.launch();
        t
    }

    /// Its SMTP address (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.smtp.addr()
    }

    /// Its admin listener (a new port at every start).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// stderr of start `start` (1 = the first).
    pub fn stderr_of(&self, start: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("stderr-{start}.log")))
            .unwrap_or_default()
    }

    /// stderr of every start.
    pub fn all_stderr(&self) -> String {
        (1..=self.starts).map(|s| self.stderr_of(s)).collect()
    }

    /// stderr of the current start.
    pub fn stderr(&self) -> String {
        self.stderr_of(self.starts)
    }

    fn launch(&mut self) {
        for attempt in 0..3 {
            self.starts += 1;
            if self.starts > 1 {
                self.admin = crate::server::free_addr();
            }
            let path = self.dir.path().join("config.toml");
            std::fs::write(&path, &self.config).expect("write config");
            let stderr =
                std::fs::File::create(self.dir.path().join(format!("stderr-{}.log", self.starts)))
                    .expect("create stderr log");
            let child = Command::new(tern_bin())
                .arg("serve")
                .arg("--listen")
                .arg(self.addr().to_string())
                .current_dir(self.dir.path())
                .args(["--data-dir", "data", "--cores", "1"])
                .arg("--admin-listen")
                .arg(self.admin.to_string())
                .arg("--config")
                .arg(&path)
                .args(&self.args)
                .env("RUST_LOG", "info")
                .env("RUST_BACKTRACE", "0")
                .env_remove(tern_engine::shard::failpoint::FAILPOINT_VAR)
                .env_remove("TERN_SPIN_US")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", tern_bin().display()));
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(why) => {
                    self.kill();
                    let stderr = self.stderr();
                    if !stderr.contains("in use") || attempt == 2 {
                        panic!("{} did not start ({why}); stderr:\n{stderr}", self.name);
                    }
                }
            }
        }
    }

    /// Ready: its listener is bound and a connection gets 220.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("started")
                .try_wait()
                .expect("try_wait")
            {
                return Err(format!("exited during start-up: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {START_WAIT:?}"));
            }
            if self.stderr().contains("listener bound") {
                if let Ok(mut c) = Client::connect(self.addr()) {
                    match c.try_reply() {
                        Ok(Some(r)) if r.code == 220 => {
                            let _ = c.try_send(b"QUIT\r\n");
                            let _ = c.try_reply();
                            return Ok(());
                        }
                        Ok(Some(r)) => return Err(format!("probe connection got {r}")),
                        Ok(None) | Err(_) => {}
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Running (not killed)?
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Again on the same address and data directory, once the dead
    /// process's listener is gone (connections refused).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        wait_until("the old listener to go", Duration::from_secs(10), || {
            matches!(
                TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
            )
        });
        self.launch();
    }

    /// `GET /metrics` of the current start (the body).
    pub fn metrics(&self) -> String {
        let response = crate::server::admin_get(self.admin, "/metrics");
        match response.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_owned(),
            None => response,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`
    /// (every core), since the current start.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum(&self.metrics(), name, labels)
    }

    /// `tern` admin commands against this server (the token from its data
    /// directory).
    pub fn cli(&self) -> crate::admin::Cli {
        crate::admin::Cli::at(self.admin, &self.data_dir())
    }

    /// Queued messages by id (read from the data directory, as `tern
    /// queue` does; also while it runs or after it was killed).
    pub fn stored(&self) -> BTreeMap<String, Vec<u8>> {
        crate::queue::stored(&self.data_dir())
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let stderr = self.all_stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("--- {} stderr (last {} lines) ---", self.name, tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One sample of a `/metrics` text: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The samples of metric `name` (exactly that name: not its `_bucket`s).
pub fn samples(metrics: &str, name: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((labels, value)) = inner.rsplit_once("} ") else {
                continue;
            };
            (parse_labels(labels), value)
        } else if let Some(value) = rest.strip_prefix(' ') {
            (BTreeMap::new(), value)
        } else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// `a="x",b="y"` (values with `\"` and `\\` escapes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(metrics, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A blocking SMTP connection from a chosen local address (the helpers'
/// [`Client`] connects from whatever the kernel picks: 127.0.0.1).
pub struct BoundClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl BoundClient {
    /// Connects from `from` (any port) to `to` and reads the greeting,
    /// which must be 220.
    #[track_caller]
    pub fn open(from: Ipv4Addr, to: SocketAddr) -> BoundClient {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(to4) = to else {
            panic!("IPv4 only: {to}");
        };
        // SAFETY: plain syscalls on a socket this function owns; the
        // sockaddr structs are initialised and sized correctly; the fd is
        // handed to the TcpStream, which closes it.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let local = sockaddr_in(from, 0);
            let rc = libc::bind(
                fd,
                (&local as *const libc::sockaddr_in).cast(),
                SOCKADDR_IN_LEN,
            );
            assert_eq!(rc, 0, "bind {from}: {}", io::Error::last_os_error());
            let remote = sockaddr_in(*to4.ip(), to4.port());
            let rc = libc::connect(
                fd,
                (&remote as *const libc::sockaddr_in).cast(),
                SOCKADDR_IN_LEN,
            );
            assert_eq!(rc, 0, "connect {to}: {}", io::Error::last_os_error());
            stream
        };
        stream
            .set_read_timeout(Some(REPLY_WAIT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(REPLY_WAIT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = BoundClient {
            stream,
            buf: Vec::new(),
        };
        c.reply().assert(220, None);
        c
    }

    /// The local address (what the server sees as the client).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {:?}: {e}", show(bytes)));
    }

    /// The next reply; panics on end of stream, timeout or garbage.
    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return reply;
                }
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "no reply within {REPLY_WAIT:?}");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed while a reply was expected: {:?}", show(&self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a reply: {e}"),
            }
        }
    }

    /// Sends `line` + CRLF and reads one reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends `line`; the reply must be `code` `enhanced`.
    #[track_caller]
    pub fn expect(&mut self, line: &str, code: u16, enhanced: &str) -> Reply {
        let r = self.cmd(line);
        r.expect(code, enhanced);
        r
    }

    /// DATA (354), the dot-stuffed content and its end; the final reply.
    #[track_caller]
    pub fn data(&mut self, content: &[u8]) -> Reply {
        self.cmd("DATA").assert(354, None);
        self.send(&dot_stuff(content));
        self.reply()
    }
}

/// A `tern-loadgen send --acked FILE` run (killed by PID on drop).
pub struct Load {
    child: Child,
    acked: PathBuf,
    _dir: tempfile::TempDir,
}

impl Load {
    /// `tern-loadgen send --target TARGET --quiet --acked FILE ARGS`.
    pub fn start(target: SocketAddr, args: &[&str]) -> Load {
        let dir = tempfile::tempdir().expect("tempdir");
        let acked = dir.path().join("acked.txt");
        let child = Command::new(loadgen_bin())
            .arg("send")
            .arg("--target")
            .arg(target.to_string())
            .args(args)
            .arg("--quiet")
            .arg("--acked")
            .arg(&acked)
            .stdout(std::fs::File::create(dir.path().join("stdout.txt")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.path().join("stderr.txt")).expect("stderr file"))
            .spawn()
            .expect("start tern-loadgen");
        Load {
            child,
            acked,
            _dir: dir,
        }
    }

    /// Has it exited?
    pub fn done(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits (at most `limit`) for the run to end; its run id and the
    /// acknowledged sequence numbers.
    #[track_caller]
    pub fn finish(&mut self, limit: Duration) -> (String, BTreeSet<u64>) {
        let deadline = Instant::now() + limit;
        while !self.done() {
            assert!(
                Instant::now() < deadline,
                "tern-loadgen did not finish within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        crate::acked::read(&self.acked)
    }

    /// What it printed so far (stdout, then stderr): its report.
    pub fn output(&self) -> String {
        let dir = self.acked.parent().expect("in its directory");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stdout.txt"), read("stderr.txt"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_labels() {
        let text = "# HELP x y\n# TYPE m counter\nm{a=\"1\",b=\"q\\\"x\"} 3\nm{a=\"2\"} 4\nm 5\nm_bucket{le=\"1\"} 9\nmore{a=\"1\"} 7\n";
        let s = samples(text, "m");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0.get("b").map(String::as_str), Some("q\"x"));
        assert_eq!(sum(text, "m", &[("a", "1")]), 3.0);
        assert_eq!(sum(text, "m", &[]), 12.0);
        assert_eq!(sum(text, "m_bucket", &[]), 9.0);
    }
}
