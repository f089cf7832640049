//! The operator side of a running server (issue 15): the admin HTTP API
//! with its bearer token ([`Admin`]), the `tern queue` / `tern destination`
//! / `tern resubmit` commands run as processes ([`Cli`]), RFC 3339 times
//! for resubmission windows, and small readers of the JSON answers.
//!
//! The token is `DATA_DIR/admin-token` (64 hex digits, maybe a trailing
//! newline), written by the server at its first start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::server::{tern_bin, TernProcess};
use crate::sink::SinkMessage;

/// Bound on one admin request.
pub const REQUEST_WAIT: Duration = Duration::from_secs(15);

/// Path of the admin token in a data directory.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// The admin token of the server on `data_dir` (trimmed). Waits (bounded)
/// for the file to appear; panics unless it is 64 hex digits.
#[track_caller]
pub fn token(data_dir: &Path) -> String {
    let path = token_path(data_dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                let t = t.trim().to_string();
                assert!(
                    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{} is not 64 hex digits: {t:?}",
                    path.display()
                );
                return t;
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(t) => panic!("{} is empty: {t:?}", path.display()),
            Err(e) => panic!("no admin token at {}: {e}", path.display()),
        }
    }
}

/// One admin answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status code.
    pub code: u16,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The body as JSON; panics (showing it) when it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "admin answer {} is not JSON ({e}): {}",
                self.code, self.body
            )
        })
    }

    /// Panics unless the code is 2xx; the body as JSON.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert!(
            (200..300).contains(&self.code),
            "admin request failed: {} {}",
            self.code,
            self.body
        );
        self.json()
    }
}

/// A client of one admin listener, with a token or without.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The listener.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer TOKEN` when set.
    pub token: Option<String>,
}

impl Admin {
    /// With the server's own token.
    #[track_caller]
    pub fn of(tern: &TernProcess) -> Admin {
        Admin::at(tern.admin_addr(), &tern.data_dir())
    }

    /// The listener at `addr` with the token of `data_dir`.
    #[track_caller]
    pub fn at(addr: SocketAddr, data_dir: &Path) -> Admin {
        Admin {
            addr,
            token: Some(token(data_dir)),
        }
    }

    /// Without a token.
    pub fn anonymous(addr: SocketAddr) -> Admin {
        Admin { addr, token: None }
    }

    /// With this (maybe wrong) token.
    pub fn with_token(addr: SocketAddr, token: &str) -> Admin {
        Admin {
            addr,
            token: Some(token.to_string()),
        }
    }

    /// `METHOD path` with `body` (sent as JSON when it parses as JSON,
    /// else as text); any status code is returned, transport errors panic.
    #[track_caller]
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_WAIT).build();
        let url = format!("http://{}{path}", self.addr);
        let mut req = agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let sent = match body {
            Some(b) => {
                let ctype = if serde_json::from_str::<Value>(b).is_ok() {
                    "application/json"
                } else {
                    "text/plain"
                };
                req.set("Content-Type", ctype).send_string(b)
            }
            None => req.call(),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let code = resp.status();
        let body = resp
            .into_string()
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        Response { code, body }
    }

    /// `GET path`.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    #[track_caller]
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(&body.to_string()))
    }

    /// `GET /queue/summary` (2xx required).
    #[track_caller]
    pub fn summary(&self) -> Value {
        self.get("/queue/summary").ok()
    }

    /// The `/queue/summary` entry of `destination` (`pool:NAME`,
    /// `mx:DOMAIN`), if listed.
    #[track_caller]
    pub fn summary_of(&self, destination: &str) -> Option<Value> {
        destination_entry(&self.summary(), destination)
    }

    /// Destinations `GET /destinations` lists as suspended.
    #[track_caller]
    pub fn suspended(&self) -> Vec<String> {
        let v = self.get("/destinations").ok();
        v["suspended"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"suspended\" array in {v}"))
            .iter()
            .map(|s| {
                s["destination"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no destination in {s}"))
                    .to_string()
            })
            .collect()
    }

    /// `GET /resubmit`: the requests.
    #[track_caller]
    pub fn resubmit_requests(&self) -> Vec<Value> {
        let v = self.get("/resubmit").ok();
        v["requests"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"requests\" array in {v}"))
            .clone()
    }
}

/// The entry for `destination` in a `/queue/summary` answer.
pub fn destination_entry(summary: &Value, destination: &str) -> Option<Value> {
    summary["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["destination"].as_str() == Some(destination))
        .cloned()
}

/// A count field of a JSON object (a number; `true`/`false` read as 1/0);
/// panics when absent.
#[track_caller]
pub fn count(v: &Value, field: &str) -> u64 {
    match &v[field] {
        Value::Number(n) => n
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not a count in {v}")),
        Value::Bool(b) => u64::from(*b),
        _ => panic!("no count {field:?} in {v}"),
    }
}

/// The `messages` list (queue ids) of an action's answer, sorted.
#[track_caller]
pub fn message_ids(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"messages\" list in {answer}"))
        .iter()
        .map(|id| {
            id.as_str()
                .unwrap_or_else(|| panic!("queue id {id} is not a string in {answer}"))
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// `tern` admin commands against one server: every command gets
/// `--admin ADDR --data-dir DIR` (the token is found there) unless
/// [`Cli::token_file`] replaces the data directory.
#[derive(Clone, Debug)]
pub struct Cli {
    /// The admin listener.
    pub admin: SocketAddr,
    /// Passed as `--data-dir`.
    pub data_dir: PathBuf,
    /// Passed as `--token-file` (instead of `--data-dir`) when set.
    pub token_file: Option<PathBuf>,
}

impl Cli {
    /// For `tern`.
    pub fn of(tern: &TernProcess) -> Cli {
        Cli::at(tern.admin_addr(), &tern.data_dir())
    }

    /// For the server at `admin` on `data_dir`.
    pub fn at(admin: SocketAddr, data_dir: &Path) -> Cli {
        Cli {
            admin,
            data_dir: data_dir.to_path_buf(),
            token_file: None,
        }
    }

    /// `tern ARGS --admin ADDR --data-dir DIR` (or `--token-file FILE`).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tern_bin());
        cmd.args(args).arg("--admin").arg(self.admin.to_string());
        match &self.token_file {
            Some(f) => cmd.arg("--token-file").arg(f),
            None => cmd.arg("--data-dir").arg(&self.data_dir),
        };
        cmd.env("RUST_BACKTRACE", "0")
            .env("USER", "tern-tests")
            .output()
            .unwrap_or_else(|e| panic!("run tern {args:?}: {e}"))
    }

    /// [`Cli::run`] that must exit 0; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tern {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// [`Cli::ok`] with `--json`; stdout parsed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("tern {all:?} --json printed no JSON ({e}):\n{out}"))
    }

    /// [`Cli::run`] that must fail; (stdout, stderr).
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "tern {args:?} should fail; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (stdout, stderr)
    }

    /// `tern resubmit list --json`: the requests.
    #[track_caller]
    pub fn resubmit_list(&self) -> Vec<Value> {
        let v = self.json(&["resubmit", "list"]);
        match &v {
            Value::Array(a) => a.clone(),
            _ => v["requests"]
                .as_array()
                .unwrap_or_else(|| panic!("no \"requests\" in tern resubmit list --json: {v}"))
                .clone(),
        }
    }
}

/// `t` as RFC 3339 in UTC with milliseconds (`2026-12-03T13:45:10.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The id of a resubmission request as the CLI takes it (a JSON string or
/// number).
#[track_caller]
pub fn request_id(request: &Value) -> String {
    match &request["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => panic!("no id in resubmission request {request}"),
    }
}

/// The value of the first `Message-ID:` header of a delivered message,
/// without `<>` ("" if none).
pub fn message_id(m: &SinkMessage) -> String {
    let text = String::from_utf8_lossy(&m.content);
    let header_end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..header_end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("message-id").then(|| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
        .unwrap_or_default()
}
