//! Inbound TLS and SMTP AUTH on the real binary (issue 14): STARTTLS with
//! the self-signed certificate of a default start, the session restart
//! and the command-injection defence, implicit TLS, the `Received:` trace,
//! AUTH only after TLS, relaying for authenticated users, bounded password
//! guessing; and a real client (swaks) where installed.

use std::path::Path;
use std::process::{Command, Stdio};

use tern_tests::server::{Options, PortReservation, TernProcess};
use tern_tests::smtp::{dot_stuff, message, Client};
use tern_tests::tls;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The sum of `name{...}` samples whose labels include `result="<result>"`.
fn by_result(tern: &TernProcess, name: &str, result: &str) -> u64 {
    let want = format!("result=\"{result}\"");
    tern.metrics()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Writes a users file with `user` / `password` in `dir`.
fn users_file(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("users");
    let hash = tern_engine::auth::hash_password(password);
    std::fs::write(&path, format!("{user}:{hash}\n")).expect("write users file");
    path
}

/// A relay that lets nobody relay by address (so only AUTH can), with
/// bob/secret as its one user.
fn auth_server(dir: &Path, extra: &str) -> TernProcess {
    let users = users_file(dir, "bob", "secret");
    TernProcess::start(Options::with_config(&format!(
        "[server]\nhostname = \"mx.test\"\n[delivery]\nhold = true\n\
         [relay]\nclient_networks = []\nrecipient_domains = [\"local.test\"]\n\
         [auth]\nusers_file = \"{}\"\nfailure_delay = \"0s\"\nfailures_max = 3\n{extra}",
        users.display()
    )))
}

#[test]
fn starttls_with_the_self_signed_certificate_then_a_message_in_tls() {
    let tern = TernProcess::start(Options::with_config(
        "[server]\nhostname = \"mx.test\"\n[delivery]\nhold = true\n",
    ));
    assert!(
        tern.data_dir().join("tls/self-signed.crt").exists(),
        "a default start generates a certificate in the data directory"
    );
    assert!(tern.stderr().contains("self-signed"), "{}", tern.stderr());
    let mut c = Client::ehlo(tern.addr());
    c.starttls(tls::anonymous_client());
    let (version, _cipher) = c.tls_state().expect("in TLS");
    assert!(version.contains("TLSv1_3"), "{version}");
    // The session restarted: no transaction before a new EHLO.
    c.cmd("MAIL FROM:<a@example.org>").expect(503, "5.5.1");
    let r = c.cmd("EHLO client.test");
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r}");
    let id = c.send_message("a@example.org", &["b@example.com"], &message("t", &["x"]));
    c.quit();
    let shown = tern.queue_show(&id);
    let received = String::from_utf8_lossy(shown.received()).to_string();
    assert!(
        received.contains("(using TLSv1.3 with cipher") && received.contains("with ESMTPS id"),
        "{received}"
    );
    assert!(tern.counter("tern_tls_sessions_total") >= 1);
}

#[test]
fn commands_pipelined_behind_starttls_are_not_run_in_tls() {
    let tern = TernProcess::start(Options::with_config("[delivery]\nhold = true\n"));
    let mut c = Client::ehlo(tern.addr());
    // CVE-2011-0411: MAIL/RCPT injected after STARTTLS in clear text.
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.com>\r\n");
    c.reply().expect(220, "2.0.0");
    c.handshake(tls::anonymous_client()).expect("handshake");
    c.cmd("EHLO client.test").assert(250, None);
    // Had the injected MAIL run, this RCPT would be accepted.
    c.cmd("RCPT TO:<b@example.com>").expect(503, "5.5.1");
    c.quit();
    assert!(tern.queue_ids().is_empty());
}

#[test]
fn implicit_tls_listener() {
    let implicit = PortReservation::new();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[delivery]\nhold = true\n[tls]\nimplicit_listen = \"{}\"\n",
        implicit.addr()
    )));
    let mut c = Client::open_tls(implicit.addr(), tls::anonymous_client());
    let r = c.cmd("EHLO client.test");
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r}");
    let id = c.send_message("a@example.org", &["b@example.com"], &message("i", &["x"]));
    c.quit();
    let received = String::from_utf8_lossy(tern.queue_show(&id).received()).to_string();
    assert!(received.contains("with ESMTPS id"), "{received}");
    // Clear text on the implicit port is a failed handshake, counted.
    let mut raw = Client::connect(implicit.addr()).expect("connect");
    raw.send(b"EHLO client.test\r\n");
    assert!(raw.try_reply().map_or(true, |r| r.is_none()));
    tern_tests::server::wait_until(
        "failed handshake counted",
        std::time::Duration::from_secs(5),
        || tern.counter("tern_tls_handshake_failures_total") >= 1,
    );
}

#[test]
fn auth_only_after_tls_and_an_authenticated_client_may_relay() {
    let dir = tempfile::tempdir().unwrap();
    let tern = auth_server(dir.path(), "");
    let mut c = Client::ehlo(tern.addr());
    // Not offered in clear text, and refused.
    let plain = format!("AUTH PLAIN {}", b64(b"\0bob\0secret"));
    c.cmd(&plain).expect(538, "5.7.11");
    // Without AUTH, relaying is refused.
    c.expect("MAIL FROM:<bob@example.org>", 250, "2.1.0");
    let r = c.cmd("RCPT TO:<x@elsewhere.example>");
    assert_eq!(r.code, 554, "{r}");
    c.cmd("RSET");
    c.starttls(tls::anonymous_client());
    let r = c.cmd("EHLO client.test");
    assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{r}");
    c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0wrong")))
        .expect(535, "5.7.8");
    c.cmd(&plain).expect(235, "2.7.0");
    c.expect(
        "MAIL FROM:<bob@example.org> AUTH=bob@example.org",
        250,
        "2.1.0",
    );
    c.expect("RCPT TO:<x@elsewhere.example>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&dot_stuff(&message("auth", &["x"])));
    let id = c.reply().queue_id();
    c.quit();
    let received = String::from_utf8_lossy(tern.queue_show(&id).received()).to_string();
    assert!(
        received.contains("(Authenticated sender: bob AUTH=<bob@example.org>)")
            && received.contains("with ESMTPSA id"),
        "{received}"
    );
    assert_eq!(by_result(&tern, "tern_auth_total", "success"), 1);
    assert_eq!(by_result(&tern, "tern_auth_total", "failure"), 1);
}

#[test]
fn password_guessing_is_refused_after_failures_max() {
    let dir = tempfile::tempdir().unwrap();
    // Clear text allowed on loopback: this test is about the limiter.
    let tern = auth_server(dir.path(), "cleartext_on_loopback = true\n");
    let mut c = Client::ehlo(tern.addr());
    for i in 0..3 {
        let r = c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(format!("\0bob\0guess{i}").as_bytes())
        ));
        r.expect(535, "5.7.8");
    }
    // The limit is reached: the session ends with 421.
    let r = c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0secret")));
    assert_eq!(r.code, 421, "{r}");
    c.expect_closed();
    // A new connection from the same address is refused too, even with
    // the right password.
    let mut c = Client::ehlo(tern.addr());
    let r = c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0secret")));
    assert_eq!(r.code, 421, "{r}");
    assert!(by_result(&tern, "tern_auth_total", "refused") >= 2);
}

/// Runs a command with stdin; `None` (and a printed reason) if the tool
/// is not installed.
fn run_tool(tool: &str, args: &[&str], stdin: &[u8]) -> Option<std::process::Output> {
    if Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("SKIP: {tool} is not installed");
        return None;
    }
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    // Bounded: a tool that hangs is killed and the test fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{tool} did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(child.wait_with_output().expect("output"))
}

#[test]
fn swaks_sends_with_starttls_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let tern = auth_server(dir.path(), "");
    let addr = tern.addr();
    let Some(out) = run_tool(
        "swaks",
        &[
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--from",
            "bob@example.org",
            "--to",
            "x@elsewhere.example",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "bob",
            "--auth-password",
            "secret",
            "--timeout",
            "20",
        ],
        b"",
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("235 2.7.0") && stdout.contains("queued as"),
        "{stdout}"
    );
    assert_eq!(tern.queue_ids().len(), 1);
}
