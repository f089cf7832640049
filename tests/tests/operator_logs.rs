//! What an operator reads, against the real binary: the accept and
//! delivery log lines (Postfix's field names, valid logfmt), the JSON log
//! format, the log level changed at run time, and a config reload (SIGHUP
//! and `tern reload`) re-pointing a pool while sessions are open.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use tern_tests::admin::Admin;
use tern_tests::server::{tern_bin, wait_until, Options, TernProcess};
use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::Client;

const WAIT: Duration = Duration::from_secs(20);

fn sink_on(last: u8) -> TestSink {
    TestSink::start(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

/// One logfmt line as key -> value (quoted values unescaped). Panics on
/// a line that is not valid logfmt.
#[track_caller]
fn logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|&c| c != '=' && c != ' ')).collect();
        assert_eq!(
            chars.next(),
            Some('='),
            "key {key:?} without a value: {line}"
        );
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().expect("escape at the end")),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unterminated quote: {line}"),
                }
            }
            let next = chars.peek();
            assert!(
                next.is_none() || next == Some(&' '),
                "junk after a quote: {line}"
            );
        } else {
            value = std::iter::from_fn(|| chars.next_if(|&c| c != ' ')).collect();
            assert!(!value.contains('"'), "unquoted value with a quote: {line}");
        }
        assert!(!key.is_empty(), "empty key: {line}");
        out.insert(key, value);
    }
}

/// The parsed lines of `stderr` whose `message` is `message`.
fn lines_with(stderr: &str, message: &str) -> Vec<BTreeMap<String, String>> {
    stderr
        .lines()
        .map(logfmt)
        .filter(|l| l.get("message").map(String::as_str) == Some(message))
        .collect()
}

fn relay_config(sink: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nrelay_to = \"{sink}\"\n[delivery]\nretry_initial = \"1h\"\nmaintenance_interval = \"200ms\"\n{extra}"
    )
}

fn content(name: &str) -> Vec<u8> {
    format!("Subject: {name}\r\nMessage-ID: <{name}@logs.test>\r\n\r\nbody of {name}\r\n")
        .into_bytes()
}

#[test]
fn accept_and_delivery_lines_carry_postfix_fields_in_valid_logfmt() {
    let sink = sink_on(61);
    sink.set_behavior(Behavior {
        rcpt: vec![
            (
                "later@x.test".into(),
                451,
                "4.2.0 mailbox busy, try later".into(),
            ),
            ("gone@x.test".into(), 550, "5.1.1 no such user here".into()),
        ],
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&relay_config(sink.addr(), "")));
    let mut c = tern.ehlo();
    let rcpts = ["a@x.test", "b@x.test", "later@x.test", "gone@x.test"];
    let id = c.send_message("s@y.test", &rcpts, &content("one"));
    c.quit();
    let arrived = sink.wait_for(1, WAIT);
    wait_until("the delivery lines", WAIT, || {
        let e = tern.stderr();
        ["message=sent", "message=deferred", "message=bounced"]
            .iter()
            .all(|m| e.contains(m))
    });
    let stderr = tern.stderr();
    // Every line is valid logfmt.
    for l in stderr.lines() {
        logfmt(l);
    }
    let accepted = lines_with(&stderr, "accepted");
    let a = accepted
        .iter()
        .find(|l| l["id"] == id)
        .expect("accept line");
    assert_eq!(a["message_id"], "<one@logs.test>");
    assert_eq!(a["from"], "<s@y.test>");
    assert_eq!(a["nrcpt"], "4");
    assert_eq!(
        a["size"],
        arrived[0].content.len().to_string(),
        "size as stored"
    );
    assert!(a["client"].starts_with("127.0.0.1:"), "{a:?}");

    let relay = format!(
        "{}[{}]:{}",
        sink.addr().ip(),
        sink.addr().ip(),
        sink.addr().port()
    );
    let sent = &lines_with(&stderr, "sent")[0];
    assert_eq!(sent["id"], id);
    assert_eq!(sent["to"], "<a@x.test>,<b@x.test>", "one line per group");
    assert_eq!(sent["relay"], relay);
    assert_eq!(sent["status"], "sent");
    assert_eq!(sent["dsn"], "2.0.0");
    assert!(sent["reply"].starts_with("250 "), "{sent:?}");
    assert_eq!(sent["tls"], "none");
    assert_eq!(sent["attempts"], "1");
    let delay: f64 = sent["delay"].parse().expect("delay in seconds");
    let parts: Vec<f64> = sent["delays"]
        .split('/')
        .map(|p| p.parse().expect("a number of seconds"))
        .collect();
    assert_eq!(parts.len(), 4, "delays=a/b/c/d: {sent:?}");
    assert!(parts.iter().sum::<f64>() <= delay + 0.05, "{sent:?}");

    let deferred = &lines_with(&stderr, "deferred")[0];
    assert_eq!(deferred["to"], "<later@x.test>");
    assert_eq!(deferred["status"], "deferred");
    assert_eq!(deferred["dsn"], "4.2.0");
    assert_eq!(deferred["reply"], "451 4.2.0 mailbox busy, try later");
    assert_eq!(deferred["relay"], relay);
    // Quoted because of the spaces: the raw line shows it.
    assert!(stderr.contains("reply=\"451 4.2.0 mailbox busy, try later\""));

    let bounced = &lines_with(&stderr, "bounced")[0];
    assert_eq!(bounced["to"], "<gone@x.test>");
    assert_eq!(bounced["dsn"], "5.1.1");
    assert_eq!(
        bounced["reply"], "550 5.1.1 no such user here",
        "the remote code kept"
    );
}

#[test]
fn a_message_with_no_next_hop_is_logged_with_relay_none() {
    // A smarthost that refuses connections: every host down.
    let mut sink = sink_on(62);
    let addr = sink.addr();
    sink.stop();
    let tern = TernProcess::start(Options::with_config(&relay_config(addr, "")));
    let mut c = tern.ehlo();
    let id = c.send_message("s@y.test", &["a@x.test"], &content("nohop"));
    c.quit();
    wait_until("a deferral", WAIT, || {
        tern.stderr().contains("message=deferred")
    });
    let stderr = tern.stderr();
    let d = &lines_with(&stderr, "deferred")[0];
    assert_eq!(d["id"], id);
    assert_eq!(d["relay"], "none");
    assert!(d["reply"].starts_with("451 4.4.1"), "{d:?}");
}

#[test]
fn json_log_lines_parse_and_carry_the_same_fields() {
    let sink = sink_on(63);
    let tern = TernProcess::start(Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Options::with_config(&relay_config(sink.addr(), ""))
    });
    let mut c = tern.ehlo();
    let id = c.send_message("s@y.test", &["a@x.test"], &content("json"));
    c.quit();
    sink.wait_for(1, WAIT);
    wait_until("the sent line", WAIT, || tern.stderr().contains("\"sent\""));
    let lines: Vec<serde_json::Value> = tern
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {message} line for {id}"))
    };
    let a = find("accepted");
    assert_eq!(a["message_id"], "<json@logs.test>");
    assert_eq!(a["nrcpt"], 1);
    assert_eq!(a["level"], "INFO");
    let s = find("sent");
    assert_eq!(s["to"], "<a@x.test>");
    assert_eq!(s["status"], "sent");
    assert_eq!(s["dsn"], "2.0.0");
    assert!(s["relay"]
        .as_str()
        .unwrap()
        .ends_with(&format!("]:{}", sink.addr().port())));
}

#[test]
fn the_log_level_changes_at_run_time() {
    let sink = sink_on(66);
    let tern = TernProcess::start(Options::with_config(&relay_config(sink.addr(), "")));
    let admin = Admin::of(&tern);
    assert_eq!(admin.request("GET", "/log-level", None).body.trim(), "info");
    // A typo is refused, not taken as a target filter that silences all.
    let bad = admin.request("PUT", "/log-level", Some("debgu"));
    assert_eq!(bad.code, 400, "{}", bad.body);
    assert!(bad.body.contains("not a log level"), "{}", bad.body);
    assert!(!tern.stderr().contains("level=debug"));
    let ok = admin.request("PUT", "/log-level", Some("debug"));
    assert_eq!(ok.code, 200, "{}", ok.body);
    // A debug line now: delivery logs its connections at debug.
    let mut c = tern.ehlo();
    c.send_message("s@y.test", &["a@x.test"], &content("debug"));
    c.quit();
    sink.wait_for(1, WAIT);
    wait_until("a debug line", WAIT, || {
        tern.stderr().contains("level=debug")
    });
    // The CLI asks the same endpoint.
    let out = Command::new(tern_bin())
        .args(["log-level", "warn", "--admin"])
        .arg(tern.admin_addr().to_string())
        .arg("--data-dir")
        .arg(tern.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(admin.request("GET", "/log-level", None).body.trim(), "warn");
}

/// `tern reload` against `tern`'s admin listener: (success, stdout+stderr).
fn tern_reload(tern: &TernProcess) -> (bool, String) {
    let out = Command::new(tern_bin())
        .args(["reload", "--admin"])
        .arg(tern.admin_addr().to_string())
        .arg("--data-dir")
        .arg(tern.data_dir())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn pool_config(host: SocketAddr, recipients_max: u32) -> String {
    format!(
        "[smtp]\nrecipients_max = {recipients_max}\n[pools.out]\nhosts = [ {{ address = \"{host}\" }} ]\n[routes]\n\"*\" = \"out\"\n[delivery]\nconnection_idle = \"100ms\"\n"
    )
}

#[test]
fn a_reload_repoints_a_pool_without_dropping_open_sessions() {
    let before = sink_on(64);
    let after = sink_on(65);
    let mut tern = TernProcess::start(Options::with_config(&pool_config(before.addr(), 100)));
    let config = tern.data_dir().parent().unwrap().join("config.toml");
    // Sessions opened before the reload go on sending after it.
    let mut sessions: Vec<Client> = (0..3).map(|_| tern.ehlo()).collect();
    let mut sent = 0;
    for (i, c) in sessions.iter_mut().enumerate() {
        c.send_message("s@y.test", &["a@x.test"], &content(&format!("before-{i}")));
        sent += 1;
    }
    before.wait_for(3, WAIT);
    // New pool host, and a key that cannot change at run time.
    let mut text = pool_config(after.addr(), 200);
    text.push_str("[storage]\nsegment_size = \"128MiB\"\n");
    std::fs::write(&config, text).unwrap();
    tern.signal(libc::SIGHUP);
    wait_until("the reload", WAIT, || {
        tern.stderr().contains("config reloaded")
    });
    let stderr = tern.stderr();
    assert!(stderr.contains("applied=\"smtp, pools\""), "{stderr}");
    assert!(
        stderr.contains("take effect only at the next start"),
        "{stderr}"
    );
    for round in 0..3 {
        for (i, c) in sessions.iter_mut().enumerate() {
            c.send_message(
                "s@y.test",
                &["a@x.test"],
                &content(&format!("after-{round}-{i}")),
            );
            sent += 1;
        }
    }
    for c in sessions {
        c.quit();
    }
    after.wait_for(9, WAIT);
    assert_eq!(
        before.messages().len(),
        3,
        "nothing new went to the old host"
    );
    assert_eq!(sent, 12);
    // The new limit applies to new sessions: 150 recipients now fit.
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<s@y.test>", 250, "2.1.0");
    for n in 0..150 {
        c.expect(&format!("RCPT TO:<r{n}@x.test>"), 250, "2.1.5");
    }
    c.quit();
    // `tern reload` does the same, and reports what it did.
    let (ok, text) = tern_reload(&tern);
    assert!(ok, "{text}");
    assert!(text.contains("applied: nothing changed"), "{text}");
    assert!(
        text.contains("needs a restart (kept as before): storage"),
        "{text}"
    );
    // A broken file changes nothing and says why.
    std::fs::write(&config, "[smtp]\nrecipients_max = 5\n").unwrap();
    let (ok, text) = tern_reload(&tern);
    assert!(!ok, "{text}");
    assert!(text.contains("smtp.recipients_max"), "{text}");
    let mut c = tern.ehlo();
    c.send_message("s@y.test", &["a@x.test"], &content("still"));
    c.quit();
    after.wait_for(10, WAIT);
}
