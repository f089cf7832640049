//! The sink process for integration tests: started on an OS-chosen
//! loopback port, found through its "listening on" line, killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// The sink process, killed on drop.
pub struct Sink {
    pub child: Child,
    pub addr: String,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    pub fn start(args: &[&str]) -> Sink {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
            .arg("sink")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sink");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let mut sink = Sink {
            child,
            addr: String::new(),
        };
        sink.addr = rx.recv_timeout(WAIT).expect("sink did not start listening");
        sink
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> i32 {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait()
    }

    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().expect("exit code");
            }
            assert!(Instant::now() < deadline, "sink did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A tiny blocking SMTP client for the sink tests.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert_eq!(c.reply(), 220);
        c
    }

    /// Reads one (possibly multi-line) reply; its code, or 0 on EOF.
    pub fn reply(&mut self) -> u16 {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).expect("read reply") == 0 {
                return 0;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line[..3].parse().expect("reply code");
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> u16 {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// Writes `pieces` as separate reads on the sink's side (a pause
    /// between them), then reads one reply.
    pub fn split(&mut self, pieces: &[&[u8]]) -> u16 {
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
            self.w.write_all(p).unwrap();
            self.w.flush().unwrap();
        }
        self.reply()
    }

    /// MAIL, RCPT, DATA, content: the code at each step (stops at the
    /// first refusal).
    pub fn send(&mut self, content: &[u8]) -> Vec<u16> {
        let mut codes = Vec::new();
        for (line, ok) in [
            ("MAIL FROM:<a@x.test>", 250),
            ("RCPT TO:<b@y.test>", 250),
            ("DATA", 354),
        ] {
            let code = self.cmd(line);
            codes.push(code);
            if code != ok {
                return codes;
            }
        }
        let mut data = Vec::new();
        tern_smtp::client::dot_stuff(&mut data, content);
        self.w.write_all(&data).unwrap();
        codes.push(self.reply());
        codes
    }
    /// EHLO, then [`Client::send`]: every code.
    pub fn ehlo_send(&mut self, content: &[u8]) -> Vec<u16> {
        let mut codes = vec![self.cmd("EHLO client.test")];
        codes.extend(self.send(content));
        codes
    }

    /// QUIT (221), then the rest of the connection.
    pub fn quit(mut self) {
        assert_eq!(self.cmd("QUIT"), 221);
        let mut rest = Vec::new();
        let _ = self.r.read_to_end(&mut rest);
    }
}

/// A JSON report written by the sink.
pub fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json report")).expect("json")
}
