//! Configured certificates (`tls.certificates`) on the real binary (issue
//! 14): a start with a missing certificate, an expired one or an
//! unreadable key stops at once with an error naming the file and the
//! problem; and certificates renewed under a load of STARTTLS sessions
//! (SIGHUP, then the file watcher) are served to new sessions without
//! one session or message failing.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_tests::server::{
    describe, loadgen_bin, tern_bin, wait_until, Options, PortReservation, TernProcess, START_WAIT,
};
use tern_tests::smtp::{dot_stuff, message, Client, Reply};
use tern_tests::tls::{self, CertPair};

/// A child process killed (by PID) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `tern serve` with one `tls.certificates` entry and expects it to
/// exit during start-up (within [`START_WAIT`]); returns how it exited
/// and its stderr.
fn start_fails(cert_file: &Path, key_file: &Path) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nhold = true\n[tls]\ncertificates = [ {{ cert_file = \"{}\", key_file = \"{}\" }} ]\n",
            cert_file.display(),
            key_file.display()
        ),
    )
    .expect("write config");
    let listen = PortReservation::new();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Reaped(
        Command::new(tern_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &listen.addr().to_string()])
            .args(["--admin-listen", "off", "--cores", "1"])
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn tern"),
    );
    let deadline = Instant::now() + START_WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tern still running {START_WAIT:?} after a start that should fail; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("read stderr");
    assert!(
        status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit, got {}; stderr:\n{stderr}",
        describe(status)
    );
    assert!(
        !stderr.contains("listener bound"),
        "a core started listening before the certificate check:\n{stderr}"
    );
    (status, stderr)
}

/// The `error:` line the binary ends with.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error: line in stderr:\n{stderr}"))
}

#[test]
fn a_missing_certificate_file_stops_the_start_naming_it() {
    let pair = CertPair::generate("mx.test");
    let missing = pair.cert_file.with_file_name("missing.crt");
    let (_, stderr) = start_fails(&missing, &pair.key_file);
    let line = error_line(&stderr);
    assert!(
        line.contains(&missing.display().to_string()) && line.contains("No such file"),
        "{line}"
    );
}

#[test]
fn an_expired_certificate_stops_the_start_naming_it() {
    let pair = CertPair::expired("expired.test");
    let (_, stderr) = start_fails(&pair.cert_file, &pair.key_file);
    let line = error_line(&stderr);
    assert!(
        line.contains(&pair.cert_file.display().to_string())
            && line.contains("expired on Sat, 01 Feb 2020"),
        "{line}"
    );
}

#[test]
fn an_unreadable_key_stops_the_start_naming_it() {
    let pair = CertPair::generate("mx.test");
    // A directory where the key should be: unreadable even for root.
    let dir_key = pair.key_file.with_file_name("key-is-a-directory");
    std::fs::create_dir(&dir_key).expect("mkdir");
    let (_, stderr) = start_fails(&pair.cert_file, &dir_key);
    let line = error_line(&stderr);
    assert!(
        line.contains(&dir_key.display().to_string()) && line.contains("Is a directory"),
        "{line}"
    );
    // A key file without read permission (root reads it anyway).
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } == 0 {
        println!("mode 000 key not tried: root may read any file");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pair.key_file, std::fs::Permissions::from_mode(0o000))
        .expect("chmod 000");
    let (_, stderr) = start_fails(&pair.cert_file, &pair.key_file);
    let line = error_line(&stderr);
    assert!(
        line.contains(&pair.key_file.display().to_string()) && line.contains("Permission denied"),
        "{line}"
    );
}

/// Sends `line` and reads the reply, which must have `code`.
fn step(c: &mut Client, line: &str, code: u16) -> Result<Reply, String> {
    c.try_send(format!("{line}\r\n").as_bytes())
        .map_err(|e| format!("send {line:?}: {e}"))?;
    match c.try_reply() {
        Ok(Some(r)) if r.code == code => Ok(r),
        Ok(Some(r)) => Err(format!("{line:?} got {r}")),
        Ok(None) => Err(format!("{line:?}: connection closed")),
        Err(e) => Err(format!("{line:?}: {e}")),
    }
}

/// One whole session: greeting, EHLO, STARTTLS with a fresh client
/// configuration (a full handshake), EHLO, one message, QUIT. Returns
/// the fingerprint of the certificate the server showed.
fn tls_session(addr: std::net::SocketAddr, n: u64) -> Result<String, String> {
    let mut c = Client::connect(addr).map_err(|e| format!("connect: {e}"))?;
    match c.try_reply() {
        Ok(Some(r)) if r.code == 220 => {}
        other => return Err(format!("greeting: {other:?}")),
    }
    step(&mut c, "EHLO client.test", 250)?;
    step(&mut c, "STARTTLS", 220)?;
    let (config, seen) = tls::recording_client();
    c.handshake(config).map_err(|e| format!("handshake: {e}"))?;
    step(&mut c, "EHLO client.test", 250)?;
    step(&mut c, "MAIL FROM:<reload@example.org>", 250)?;
    step(&mut c, "RCPT TO:<rcpt@example.com>", 250)?;
    step(&mut c, "DATA", 354)?;
    let body = dot_stuff(&message(&format!("session {n}"), &["x"]));
    c.try_send(&body)
        .map_err(|e| format!("send the message: {e}"))?;
    match c.try_reply() {
        Ok(Some(r)) if r.code == 250 => {}
        other => return Err(format!("end of data: {other:?}")),
    }
    step(&mut c, "QUIT", 221)?;
    seen.last().ok_or_else(|| "no certificate seen".to_string())
}

/// Sessions run by [`SessionLoop`]: how many succeeded, the failures,
/// and the fingerprints seen in order.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    fingerprints: Mutex<Vec<String>>,
}

/// Runs [`tls_session`] back to back on a thread until stopped, or
/// until [`SessionLoop::MAX`] sessions or [`SessionLoop::LIMIT`].
struct SessionLoop {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Outcomes>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SessionLoop {
    const MAX: u64 = 2_000;
    const LIMIT: Duration = Duration::from_secs(120);

    fn start(addr: std::net::SocketAddr) -> SessionLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Outcomes::default());
        let (s, o) = (stop.clone(), outcomes.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + SessionLoop::LIMIT;
            for n in 0..SessionLoop::MAX {
                if s.load(Ordering::Relaxed) || Instant::now() > end {
                    return;
                }
                match tls_session(addr, n) {
                    Ok(fp) => {
                        o.fingerprints.lock().unwrap().push(fp);
                        o.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => o.failures.lock().unwrap().push(format!("session {n}: {e}")),
                }
            }
        });
        SessionLoop {
            stop,
            outcomes,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        self.outcomes.ok.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further sessions completed.
    #[track_caller]
    fn wait_for_more(&self, more: u64) {
        let want = self.ok() + more;
        wait_until("test client sessions", Duration::from_secs(30), || {
            self.ok() >= want || !self.outcomes.failures.lock().unwrap().is_empty()
        });
    }

    fn finish(mut self) -> Arc<Outcomes> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("session thread");
        }
        self.outcomes.clone()
    }
}

impl Drop for SessionLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fingerprint a new session is shown.
fn served_now(addr: std::net::SocketAddr) -> String {
    tls_session(addr, u64::MAX).unwrap_or_else(|e| panic!("probe session: {e}"))
}

/// The number after `"key":` in a JSON text (the first occurrence after
/// `within`, a key that opens an object).
fn json_u64(json: &str, within: &str, key: &str) -> u64 {
    let from = json
        .find(&format!("\"{within}\""))
        .unwrap_or_else(|| panic!("no {within:?} in {json}"));
    let rest = &json[from..];
    let at = rest
        .find(&format!("\"{key}\""))
        .unwrap_or_else(|| panic!("no {within}.{key} in {json}"));
    let value = rest[at + key.len() + 2..]
        .trim_start_matches([':', ' ', '\n'])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{within}.{key} is not a number in {json}"))
}

#[test]
fn certificates_renewed_under_starttls_load_without_a_failed_session() {
    // tern-loadgen: fixed rate, a new connection (STARTTLS, full
    // handshake) every 5 messages.
    const MESSAGES: u64 = 600;
    let served = CertPair::generate("old.test");
    let renewed = CertPair::generate("new.test");
    let renewed_again = CertPair::generate("newer.test");
    let mut tern = TernProcess::start(Options {
        cores: 2,
        ..Options::with_config(&format!(
            "[server]\nhostname = \"mx.test\"\n[delivery]\nhold = true\n{}reload_check_interval = \"1s\"\n",
            served.tls_section()
        ))
    });
    let addr = tern.addr();
    // Each probe is a session with a message too.
    let probes = AtomicU64::new(0);
    let probe = || {
        probes.fetch_add(1, Ordering::Relaxed);
        served_now(addr)
    };
    assert_eq!(probe(), served.fingerprint);

    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("send.json");
    let mut sender = Reaped(
        Command::new(loadgen_bin())
            .arg("send")
            .args([
                "--target",
                &addr.to_string(),
                "--starttls",
                "--tls-no-resume",
            ])
            .args(["--messages", &MESSAGES.to_string(), "--rate", "60"])
            .args(["--concurrency", "4", "--per-conn", "5", "--timeout", "20s"])
            .args(["--size", "2048", "--quiet", "--json"])
            .arg(&report_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tern-loadgen"),
    );
    let sessions = SessionLoop::start(addr);
    sessions.wait_for_more(3);
    wait_until("load accepted", Duration::from_secs(30), || {
        tern.counter("tern_messages_accepted_total") >= 30
    });

    // 1: SIGHUP after the renewal.
    renewed.install_over(&served);
    tern.signal(libc::SIGHUP);
    wait_until(
        "the renewed certificate served",
        Duration::from_secs(20),
        || probe() == renewed.fingerprint,
    );
    sessions.wait_for_more(3);
    // 2: no signal, the file watcher (checks every second).
    renewed_again.install_over(&served);
    wait_until(
        "the certificate renewed again served (file watcher)",
        Duration::from_secs(30),
        || probe() == renewed_again.fingerprint,
    );
    sessions.wait_for_more(3);
    let loadgen_ran_across = matches!(sender.0.try_wait(), Ok(None));
    let outcomes = sessions.finish();

    let stderr = tern.stderr();
    let reloaded = |why: &str, fp: &str| {
        stderr
            .lines()
            .any(|l| l.contains("TLS certificate reloaded") && l.contains(why) && l.contains(fp))
    };
    assert!(reloaded("SIGHUP", &renewed.fingerprint), "{stderr}");
    assert!(
        reloaded("file changed", &renewed_again.fingerprint),
        "{stderr}"
    );

    // Every test-client session succeeded, before and after each reload.
    let failures = outcomes.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed sessions: {failures:?}");
    let seen = outcomes.fingerprints.lock().unwrap().clone();
    for (name, pair) in [
        ("old", &served),
        ("renewed", &renewed),
        ("renewed again", &renewed_again),
    ] {
        assert!(
            seen.contains(&pair.fingerprint),
            "no test session saw the {name} certificate"
        );
    }
    let first = |fp: &str| seen.iter().position(|s| s == fp).unwrap();
    let last = |fp: &str| seen.iter().rposition(|s| s == fp).unwrap();
    assert!(
        last(&served.fingerprint) < first(&renewed_again.fingerprint)
            && last(&renewed.fingerprint) < first(&renewed_again.fingerprint),
        "a session was shown an older certificate after a newer one: {seen:?}"
    );

    // The load generator: every message accepted, no connection error,
    // no failed handshake.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = sender.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tern-loadgen did not finish within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut o) = sender.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = sender.0.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    assert!(
        status.success(),
        "tern-loadgen: {}\n{out}",
        describe(status)
    );
    let report = std::fs::read_to_string(&report_path).expect("the JSON report");
    assert_eq!(json_u64(&report, "messages", "ok"), MESSAGES, "{report}");
    for key in ["temp_fail", "perm_fail", "conn_errors"] {
        assert_eq!(json_u64(&report, "messages", key), 0, "{key}: {report}");
    }
    assert_eq!(json_u64(&report, "tls", "failed"), 0, "{report}");
    assert!(json_u64(&report, "tls", "full") >= MESSAGES / 5, "{report}");

    // tern's side: nothing failed, and every message is queued.
    assert_eq!(tern.counter("tern_tls_handshake_failures_total"), 0);
    let test_sessions = outcomes.ok.load(Ordering::Relaxed);
    let probes = probes.load(Ordering::Relaxed);
    let queued = tern.queue_list().len() as u64;
    assert_eq!(
        queued,
        MESSAGES + test_sessions + probes,
        "queued vs {MESSAGES} from tern-loadgen, {test_sessions} test sessions, {probes} probes"
    );
    eprintln!(
        "reload under load: {MESSAGES} tern-loadgen messages (still sending after both reloads: \
         {loadgen_ran_across}), {test_sessions} test-client sessions, {queued} queued, 0 failed"
    );
    tern.stop_gracefully();
}
