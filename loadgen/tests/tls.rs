//! TLS and AUTH, both real binaries on loopback: `send --starttls` and
//! `--tls` into `sink --starttls` / `--tls`, session resumption on and
//! off, `--tls-verify` against the sink's certificate, STARTTLS refused,
//! `--auth` against `--auth-any`, and the sink's STARTTLS command
//! injection defence seen by a raw client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_tern-loadgen");

mod common;
use common::{Sink, WAIT};

/// Runs `send` (bounded by `--messages` and `--timeout`); its exit code
/// and stdout (the text report).
fn send(target: &str, extra: &[&str], json: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("send")
        .args(["--target", target, "--quiet", "--timeout", "5s", "--json"])
        .arg(json)
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .expect("run send");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("json")
}

/// A certificate for "localhost" and 127.0.0.1 in `dir`: (cert, key) paths
/// and the certificate.
fn cert_files(dir: &std::path::Path) -> (String, String, rcgen::CertifiedKey) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (s(cert), s(key), ck)
}

/// `send` with `send_args` moves 200 messages into a sink started with
/// `sink_args`: every one arrives once, every connection did a TLS
/// handshake (reported by both sides with version and cipher suite, and
/// as the `tls` phase). Returns the sender's report.
fn moves_all_over_tls(sink_args: &[&str], send_args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let sink_json = dir.path().join("sink.json");
    let mut args = vec!["--expect", "200", "--json", sink_json.to_str().unwrap()];
    args.extend_from_slice(sink_args);
    let mut s = Sink::start(&args);
    let send_json = dir.path().join("send.json");
    let mut args = vec![
        "--messages",
        "200",
        "--concurrency",
        "4",
        "--per-conn",
        "10",
    ];
    args.extend_from_slice(send_args);
    let (code, text) = send(&s.addr, &args, &send_json);
    assert_eq!(code, 0, "{text}");
    assert_eq!(s.wait(), 0, "sink saw all 200");
    let sent = json(&send_json);
    let got = json(&sink_json);
    assert_eq!(sent["messages"]["ok"], 200);
    assert_eq!(got["runs"][0]["distinct"], 200);
    assert_eq!(got["runs"][0]["duplicates"], 0);
    let tls = &sent["tls"];
    let handshakes = tls["handshakes"].as_u64().unwrap();
    assert!(handshakes >= 20, "{tls}");
    assert_eq!(tls["failed"], 0);
    assert_eq!(sent["latency_us"]["tls"]["count"], handshakes);
    let suite = &tls["suites"][0];
    assert!(suite["version"].as_str().unwrap().starts_with("TLSv1_"));
    assert!(suite["cipher_suite"].as_str().unwrap().starts_with("TLS"));
    assert_eq!(got["tls"]["handshakes"], handshakes, "{}", got["tls"]);
    assert!(text.contains("tls: ") && text.contains("TLS13_"), "{text}");
    sent
}

#[test]
fn starttls_moves_every_message() {
    let sent = moves_all_over_tls(&["--starttls"], &["--starttls"]);
    // Two EHLOs per connection: before and inside TLS.
    let conns = sent["latency_us"]["connect"]["count"].as_u64().unwrap();
    assert_eq!(sent["latency_us"]["ehlo"]["count"], 2 * conns);
}

#[test]
fn implicit_tls_moves_every_message() {
    let sent = moves_all_over_tls(&["--tls"], &["--tls"]);
    let conns = sent["latency_us"]["connect"]["count"].as_u64().unwrap();
    assert_eq!(sent["latency_us"]["ehlo"]["count"], conns);
}

#[test]
fn verified_tls_with_the_sinks_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path());
    let sink = [
        "--tls",
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];
    // By IP address (the certificate names 127.0.0.1), then by name.
    moves_all_over_tls(&sink, &["--tls", "--tls-verify", "--tls-ca", cert.as_str()]);
    let by_name = [
        "--tls",
        "--tls-verify",
        "--tls-ca",
        &cert,
        "--tls-sni",
        "localhost",
    ];
    moves_all_over_tls(&sink, &by_name);
}

#[test]
fn verification_failure_is_a_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = cert_files(dir.path());
    // The sink's own self-signed certificate is not the one trusted.
    let s = Sink::start(&["--tls"]);
    let send_json = dir.path().join("send.json");
    let args = [
        "--tls",
        "--tls-verify",
        "--tls-ca",
        &cert,
        "--messages",
        "3",
    ];
    let (code, text) = send(&s.addr, &args, &send_json);
    assert_ne!(code, 0);
    let sent = json(&send_json);
    assert_eq!(sent["messages"]["ok"], 0);
    assert_eq!(sent["messages"]["conn_errors"], 3);
    assert!(
        sent["tls"]["failed"].as_u64().unwrap() >= 1,
        "{}",
        sent["tls"]
    );
    assert!(text.contains("TLS handshake"), "{text}");
}

/// Handshakes of 20 connections of one message each: (resumed, full).
fn handshakes(extra: &[&str]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sink::start(&["--starttls"]);
    let send_json = dir.path().join("send.json");
    let mut args = vec!["--messages", "20", "--concurrency", "1", "--per-conn", "1"];
    args.extend_from_slice(extra);
    let (code, text) = send(&s.addr, &args, &send_json);
    assert_eq!(code, 0, "{text}");
    let tls = json(&send_json)["tls"].clone();
    assert_eq!(tls["handshakes"], 20, "{tls}");
    (
        tls["resumed"].as_u64().unwrap(),
        tls["full"].as_u64().unwrap(),
    )
}

#[test]
fn sessions_resume_unless_told_not_to() {
    let (resumed, full) = handshakes(&["--starttls"]);
    assert!(resumed > 0, "resumed {resumed}, full {full}");
    assert!(full >= 1);
    assert_eq!(handshakes(&["--starttls", "--tls-no-resume"]), (0, 20));
}

#[test]
fn starttls_not_offered_fails_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink_json = dir.path().join("sink.json");
    let mut s = Sink::start(&["--json", sink_json.to_str().unwrap()]);
    let send_json = dir.path().join("send.json");
    let (code, text) = send(&s.addr, &["--starttls", "--messages", "5"], &send_json);
    assert_ne!(code, 0);
    assert!(text.contains("STARTTLS not offered"), "{text}");
    let sent = json(&send_json);
    assert_eq!(sent["messages"]["ok"], 0);
    assert_eq!(sent["messages"]["conn_errors"], 5);
    assert_eq!(sent["tls"], serde_json::Value::Null);
    assert_eq!(s.terminate(), 0);
    let got = json(&sink_json);
    assert_eq!(got["messages"], 0);
    assert_eq!(got["tls"], serde_json::Value::Null);
}

#[test]
fn auth_against_auth_any() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sink::start(&["--starttls", "--auth-any"]);
    let send_json = dir.path().join("send.json");
    let args = ["--starttls", "--auth", "bob:secret", "--messages", "50"];
    let (code, text) = send(&s.addr, &args, &send_json);
    assert_eq!(code, 0, "{text}");
    let sent = json(&send_json);
    assert_eq!(sent["messages"]["ok"], 50);
    let conns = &sent["latency_us"]["connect"]["count"];
    assert_eq!(&sent["latency_us"]["auth"]["count"], conns);
    assert_eq!(&sent["replies"]["235"], conns);
    // Without --auth-any the sink does not know AUTH: every message fails.
    let s = Sink::start(&[]);
    let (code, text) = send(&s.addr, &["--auth", "bob:x", "--messages", "3"], &send_json);
    assert_ne!(code, 0);
    assert!(text.contains("AUTH PLAIN: 502"), "{text}");
    assert_eq!(json(&send_json)["messages"]["conn_errors"], 3);
}

/// Reads one reply line byte by byte (so nothing behind it is consumed).
fn line(s: &mut impl Read) -> String {
    let mut l = Vec::new();
    let mut b = [0u8];
    while l.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF after {l:?}");
        l.push(b[0]);
    }
    String::from_utf8(l).unwrap()
}

/// Reads a (multi-line) reply; its last line.
fn reply(s: &mut impl Read) -> String {
    loop {
        let l = line(s);
        if l.as_bytes().get(3) != Some(&b'-') {
            return l;
        }
    }
}

#[test]
fn commands_injected_behind_starttls_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ck) = cert_files(dir.path());
    let s = Sink::start(&["--starttls", "--tls-cert", &cert, "--tls-key", &key]);
    let mut tcp = TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    assert!(reply(&mut tcp).starts_with("220 "));
    tcp.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(reply(&mut tcp).starts_with("250 "));
    // The injected NOOP rides in the same write as STARTTLS.
    tcp.write_all(b"STARTTLS\r\nNOOP\r\n").unwrap();
    assert!(reply(&mut tcp).starts_with("220 "));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Inside TLS: back to before EHLO (MAIL refused), and the first reply
    // is MAIL's: a 250 for the injected NOOP would come first.
    tls.write_all(b"MAIL FROM:<a@x.test>\r\n").unwrap();
    let first = reply(&mut tls);
    assert!(first.starts_with("503 "), "{first:?}");
    tls.write_all(b"QUIT\r\n").unwrap();
    assert!(reply(&mut tls).starts_with("221 "));
    let mut rest = String::new();
    let _ = tls.read_to_string(&mut rest);
    assert_eq!(rest, "");
}

#[test]
fn sink_offers_starttls_only_outside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ck) = cert_files(dir.path());
    let s = Sink::start(&["--starttls", "--tls-cert", &cert, "--tls-key", &key]);
    let mut tcp = TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    reply(&mut tcp);
    tcp.write_all(b"EHLO client.test\r\n").unwrap();
    let mut ehlo = Vec::new();
    loop {
        let l = line(&mut tcp);
        ehlo.push(l.clone());
        if l.as_bytes()[3] != b'-' {
            break;
        }
    }
    assert!(ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    tcp.write_all(b"STARTTLS\r\n").unwrap();
    assert!(reply(&mut tcp).starts_with("220 "));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"EHLO client.test\r\n").unwrap();
    let mut ehlo = Vec::new();
    loop {
        let l = line(&mut tls);
        ehlo.push(l.clone());
        if l.as_bytes()[3] != b'-' {
            break;
        }
    }
    assert!(ehlo.last().unwrap().starts_with("250 "), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    // STARTTLS inside TLS is the session's: not implemented.
    tls.write_all(b"STARTTLS\r\n").unwrap();
    assert!(reply(&mut tls).starts_with("502 "));
}
