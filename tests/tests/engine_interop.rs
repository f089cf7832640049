//! Interoperability with SMTP clients nobody here wrote: Python's
//! `smtplib` (in clear text and with `starttls()`), and `swaks` and
//! Postfix's `smtp-source` when they are installed (`.ci/run` installs
//! them; skipped with a message otherwise).

use std::path::Path;
use std::process::{Command, Output};

use tern_tests::server::{Options, TernProcess};

const PYTHON_SCRIPT: &str = r#"
import smtplib, sys
from email.message import EmailMessage

host, port, plain_path, utf8_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with smtplib.SMTP(host, port, timeout=15) as s:
    code, _ = s.ehlo("python.test")
    assert code == 250, code
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking"):
        assert s.has_extn(ext), ext
    # 1: sendmail with a str using bare LF line ends (smtplib makes them
    # CRLF) and a line starting with a dot (smtplib dot-stuffs it).
    with open(plain_path, encoding="ascii", newline="") as f:
        plain = f.read()
    refused = s.sendmail("py@example.test", ["one@example.test", "two@example.test"], plain)
    assert refused == {}, refused
    # 2: send_message with an EmailMessage.
    m = EmailMessage()
    m["From"] = "py@example.test"
    m["To"] = "three@example.test"
    m["Subject"] = "from send_message"
    m.set_content("Hello from email.message.\n.leading dot\n")
    refused = s.send_message(m)
    assert refused == {}, refused
    # 3: SMTPUTF8 to a UTF-8 address, UTF-8 content as bytes.
    with open(utf8_path, "rb") as f:
        utf8 = f.read()
    refused = s.sendmail("pý@example.test", ["δοκιμή@παράδειγμα.test"], utf8,
                         mail_options=["SMTPUTF8"])
    assert refused == {}, refused
print("sent 3")
"#;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file()
}

fn program_path(program: &str) -> String {
    let sbin = Path::new("/usr/sbin").join(program);
    if sbin.is_file() {
        sbin.display().to_string()
    } else {
        program.to_string()
    }
}

#[test]
fn python_smtplib_sends_three_messages() {
    let tern = TernProcess::start(Options::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_lf = "From: py@example.test\nSubject: from sendmail\n\nline one\n.leading dot\n..two dots\n.\nlast\n";
    let plain_path = dir.path().join("plain.txt");
    std::fs::write(&plain_path, plain_lf).unwrap();
    let utf8 = "From: pý@example.test\r\nSubject: Grüße\r\n\r\nΚαλημέρα κόσμε\r\n";
    let utf8_path = dir.path().join("utf8.txt");
    std::fs::write(&utf8_path, utf8).unwrap();

    let out = run(Command::new("python3")
        .arg("-c")
        .arg(PYTHON_SCRIPT)
        .arg(tern.addr().ip().to_string())
        .arg(tern.addr().port().to_string())
        .arg(&plain_path)
        .arg(&utf8_path));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent 3");

    let list = tern.queue_list();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0].from, "py@example.test");
    assert_eq!(
        list[0].recipients,
        vec!["one@example.test", "two@example.test"]
    );
    assert_eq!(
        tern.queue_show(&list[0].id).content(),
        plain_lf.replace('\n', "\r\n").as_bytes()
    );
    assert_eq!(list[1].recipients, vec!["three@example.test"]);
    let second = tern.queue_show(&list[1].id);
    let text = String::from_utf8(second.content().to_vec()).expect("ASCII");
    assert!(
        text.contains("Subject: from send_message\r\n")
            && text.ends_with("\r\n\r\nHello from email.message.\r\n.leading dot\r\n"),
        "{text:?}"
    );
    assert_eq!(list[2].from, "pý@example.test");
    assert_eq!(list[2].recipients, vec!["δοκιμή@παράδειγμα.test"]);
    let third = tern.queue_show(&list[2].id);
    assert_eq!(third.content(), utf8.as_bytes());
    assert!(String::from_utf8_lossy(third.received()).contains("with UTF8SMTP id"));
}

const PYTHON_STARTTLS_SCRIPT: &str = r#"
import smtplib, ssl, sys

host, port = sys.argv[1], int(sys.argv[2])
# tern's certificate is self-signed: no verification (as Postfix's
# "encrypt"), the handshake itself is still real.
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(host, port, timeout=15) as s:
    code, _ = s.ehlo("python.test")
    assert code == 250, code
    assert s.has_extn("starttls"), s.esmtp_features
    code, reply = s.starttls(context=context)
    assert code == 220, (code, reply)
    # starttls() forgets the EHLO answer; say it again inside TLS.
    code, _ = s.ehlo("python.test")
    assert code == 250, code
    assert not s.has_extn("starttls"), "STARTTLS offered inside TLS"
    refused = s.sendmail("py@example.test", ["tls@example.test"],
                         "Subject: from smtplib over TLS\r\n\r\nsecret\r\n")
    assert refused == {}, refused
    print(s.sock.version())
"#;

#[test]
fn python_smtplib_starttls_sends_a_message() {
    if !on_path("python3") {
        println!("skipped: python3 is not installed");
        return;
    }
    let tern = TernProcess::start(Options::default());
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(PYTHON_STARTTLS_SCRIPT)
        .arg(tern.addr().ip().to_string())
        .arg(tern.addr().port().to_string()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(version.starts_with("TLSv1."), "{version:?}");

    let list = tern.queue_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].from, "py@example.test");
    assert_eq!(list[0].recipients, vec!["tls@example.test"]);
    let shown = tern.queue_show(&list[0].id);
    assert_eq!(shown.field("helo"), "python.test");
    assert_eq!(
        shown.content(),
        b"Subject: from smtplib over TLS\r\n\r\nsecret\r\n"
    );
    let received = String::from_utf8_lossy(shown.received()).into_owned();
    let using = format!("(using {version} with cipher");
    assert!(
        received.contains(&using) && received.contains("with ESMTPS id"),
        "{received}"
    );
    assert!(tern.counter("tern_tls_sessions_total") >= 1);
}

#[test]
fn swaks_sends_a_message() {
    if !on_path("swaks") {
        println!("skipped: swaks is not installed (apt-get install swaks)");
        return;
    }
    let tern = TernProcess::start(Options::default());
    let server = tern.addr().to_string();
    let out = run(Command::new("swaks")
        .args(["--server", &server, "--from", "swaks@example.test"])
        .args(["--to", "rcpt@example.test", "--helo", "swaks.test"])
        .args([
            "--header",
            "Subject: from swaks",
            "--body",
            "Hello from swaks.\n.dot",
        ])
        .arg("--pipeline"));
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let list = tern.queue_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].from, "swaks@example.test");
    let shown = tern.queue_show(&list[0].id);
    assert_eq!(shown.field("helo"), "swaks.test");
    let text = String::from_utf8_lossy(shown.content()).into_owned();
    assert!(
        text.contains("Subject: from swaks\r\n") && text.contains("Hello from swaks.\r\n.dot\r\n"),
        "{text:?}"
    );
}

#[test]
fn postfix_smtp_source_sends_messages() {
    if !on_path("smtp-source") {
        println!("skipped: smtp-source is not installed (apt-get install postfix)");
        return;
    }
    let tern = TernProcess::start(Options::default());
    let server = tern.addr().to_string();
    // 2 sessions in parallel, 20 messages of 2 KiB; with and without a
    // disconnect after each message.
    for extra in [&[][..], &["-d"][..]] {
        run(Command::new(program_path("smtp-source"))
            .args(["-s", "2", "-m", "20", "-l", "2048"])
            .args(["-f", "source@example.test", "-t", "sink@example.test"])
            .args(extra)
            .arg(&server));
    }
    let list = tern.queue_list();
    assert_eq!(list.len(), 40, "{list:?}");
    assert!(list.iter().all(|e| e.from == "source@example.test"));
}
