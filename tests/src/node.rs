//! A `tern serve` that comes back on the same address with the same data
//! directory ([`Node`]): `TernProcess::restart` picks new ports, but a
//! peer's config names the old one. Killed on drop (and its stderr shown
//! if the test is panicking).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_addr, tern_bin, wait_until, PortReservation, START_WAIT};
use crate::smtp::Client;

/// A `tern serve` on a fixed address and data directory (the harness's
/// `TernProcess::restart` picks new ports; a peer's config names the old
/// one). Killed on drop.
pub struct Node {
    /// Its name in messages.
    pub name: &'static str,
    /// Its directory (data dir, config, stderr logs).
    pub dir: tempfile::TempDir,
    smtp: PortReservation,
    admin: SocketAddr,
    /// The config file for the next start.
    pub config: String,
    /// `--cores` for the next start (0: automatic).
    pub cores: usize,
    child: Option<Child>,
    /// Starts so far (stderr of start n: `stderr-n.log`).
    pub starts: u32,
}

impl Node {
    /// Starts `tern serve` with `config` and `cores` on `smtp`.
    pub fn start(name: &'static str, smtp: PortReservation, cores: usize, config: String) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("tern-test-")
            .tempdir()
            .expect("tempdir");
        let mut n = Node {
            name,
            dir,
            smtp,
            admin: free_addr(),
            config,
            cores,
            child: None,
            starts: 0,
        };
        n.launch();
        n
    }

    /// Its SMTP address (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.smtp.addr()
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

    fn launch(&mut self) {
        for attempt in 0..3 {
            self.starts += 1;
            if self.starts > 1 {
                self.admin = free_addr();
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
                .arg("--data-dir")
                .arg("data")
                .arg("--cores")
                .arg(self.cores.to_string())
                .arg("--admin-listen")
                .arg(self.admin.to_string())
                .arg("--config")
                .arg(&path)
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
                    let stderr = self.stderr_of(self.starts);
                    if !stderr.contains("in use") || attempt == 2 {
                        panic!("{} did not start ({why}); stderr:\n{stderr}", self.name);
                    }
                }
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                return Err(format!("exited during start-up: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {START_WAIT:?}"));
            }
            let opened = self.cores == 1
                || self
                    .stderr_of(self.starts)
                    .matches("listener bound")
                    .count()
                    >= self.cores;
            if opened {
                if let Ok(mut c) = Client::connect(self.addr()) {
                    if let Ok(Some(r)) = c.try_reply() {
                        if r.code == 220 {
                            let _ = c.try_send(b"QUIT\r\n");
                            return Ok(());
                        }
                        return Err(format!("probe connection got {r}"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// stderr of the current (last) start.
    pub fn stderr(&self) -> String {
        self.stderr_of(self.starts)
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
    /// process's listeners are gone.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        wait_until("the old listeners to go", Duration::from_secs(10), || {
            matches!(
                std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        });
        self.launch();
    }

    /// `GET /shadow` of the current start (`tern shadow status`).
    pub fn shadow_status(&self) -> String {
        crate::server::admin_get(self.admin, "/shadow")
    }

    /// `GET /metrics` of the current start.
    pub fn metrics(&self) -> String {
        crate::server::admin_get(self.admin, "/metrics")
    }

    /// Sum over cores of `name{...}` since the current start.
    pub fn counter(&self, name: &str) -> u64 {
        crate::server::sum_samples(&self.metrics(), &format!("{name}{{"))
    }

    /// Copies held for primary `node` (the `tern_shadow_queue_messages`
    /// gauge, published by each core's maintenance).
    pub fn held_for(&self, node: &str) -> u64 {
        crate::server::sum_samples(
            &self.metrics(),
            &format!("tern_shadow_queue_messages{{primary=\"{node}\""),
        )
    }
}

impl Drop for Node {
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
