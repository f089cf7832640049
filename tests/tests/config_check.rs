//! Config checking against the real `tern` binary: every mistake of a
//! file reported at once with its line, `tern check-config` printing the
//! effective configuration as TOML (and `--diff`), paths relative to the
//! config file, and the warnings `tern serve` logs at start.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_tests::server::{tern_bin, Options, TernProcess};

/// Runs `tern ARGS` in `dir` to completion (check-config never listens).
fn tern(dir: &Path, args: &[&str]) -> Output {
    Command::new(tern_bin())
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run tern")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Five different mistakes, one per kind: a misspelt key, a key in the
/// wrong section, an unknown section, a value of the wrong type, a value
/// out of range.
const FIVE_MISTAKES: &str = r#"[server]
listen = "127.0.0.1:2525"
hostnme = "mx.example.net"

[smtp]
recipients_max = 5
hostname = "mx.example.net"

[delivery]
retry_initial = 30

[smpt]
errors_max = 3
"#;

#[test]
fn five_mistakes_are_reported_together_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tern.toml"), FIVE_MISTAKES).unwrap();
    let out = tern(dir.path(), &["check-config", "--config", "tern.toml"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no config printed: {}",
        text(&out.stdout)
    );
    let expect = [
        "invalid configuration in tern.toml (5 problems):",
        "  line 3: server.hostnme is an unknown key (did you mean `hostname`?)",
        "  line 6: smtp.recipients_max must be 100..=100000 (RFC 5321 4.5.3.1.8 requires at least 100), got 5",
        "  line 7: smtp.hostname is an unknown key (it belongs in [server])",
        "  line 10: delivery.retry_initial: invalid type: integer `30`, expected a duration such as \"30s\", \"5m\" or \"2d\"",
        "  line 12: smpt is an unknown section (did you mean [smtp]?)",
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    for e in expect {
        assert!(
            lines.iter().any(|l| l.ends_with(e)),
            "no {e:?} in:\n{stderr}"
        );
    }

    // `tern serve` refuses the same file with the same list, before it
    // binds anything.
    let data = dir.path().join("data");
    let mut serve = Command::new(tern_bin())
        .args(["serve", "--config", "tern.toml", "--data-dir"])
        .arg(&data)
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!("tern serve did not refuse an invalid config");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut serve_err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut serve_err).unwrap();
    assert!(!status.success());
    for e in expect {
        assert!(serve_err.contains(e), "no {e:?} in:\n{serve_err}");
    }
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn a_syntax_error_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tern.toml"), "[server]\ncores = = 2\n").unwrap();
    let out = tern(dir.path(), &["check-config", "--config", "tern.toml"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("(1 problem):\n  line 2, column 9: TOML syntax: "),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_a_config_that_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("tern.toml"),
        "[server]\nhostname = \"mx.example.net\"\ndata_dir = \"spool\"\n\
         [smtp]\nmessage_size_max = \"10MiB\"\nrecipients_max = 1000\n\
         [relay]\nclient_networks = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    // Run from another directory: paths are relative to the file.
    let out = tern(dir.path(), &["check-config", "--config", "etc/tern.toml"]);
    let all = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "no warnings: {}", text(&out.stderr));
    let spool = conf.join("spool");
    let expect = [
        format!("data_dir = \"{}\"", spool.display()),
        "hostname = \"mx.example.net\"".into(),
        "message_size_max = \"10MiB\"".into(),
        "recipients_max = 1000  # default".into(),
        "segment_size = \"128MiB\"  # default".into(),
        "# relay_to: unset (default)".into(),
        "client_networks = [\"10.0.0.0/8\"]".into(),
    ];
    for e in &expect {
        assert!(all.lines().any(|l| l == e), "no {e:?} in:\n{all}");
    }

    // Fed back in (from elsewhere), the output is a fixed point.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &all).unwrap();
    let again = tern(
        Path::new("/"),
        &["check-config", "--config", copy.to_str().unwrap()],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), all);

    // --diff: only what differs from the defaults.
    let diff = tern(
        dir.path(),
        &["check-config", "--config", "etc/tern.toml", "--diff"],
    );
    assert!(diff.status.success(), "{}", text(&diff.stderr));
    let keys: Vec<String> = text(&diff.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.is_empty())
        .map(|l| l.split(" = ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "hostname",
            "data_dir",
            "message_size_max",
            "client_networks"
        ],
        "{}",
        text(&diff.stdout)
    );
}

#[test]
fn suspicious_values_are_warned_by_check_config_and_at_start() {
    let config = "[server]\nhostname = \"mx\"\n[relay]\nclient_networks = [\"0.0.0.0/0\"]\n\
                  [delivery]\nmessage_expiration_timeout = \"0s\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tern.toml"), config).unwrap();
    let out = tern(dir.path(), &["check-config", "--config", "tern.toml"]);
    assert!(out.status.success(), "warnings do not refuse");
    let stderr = text(&out.stderr);
    let expect = [
        "warning: line 2: server.hostname \"mx\" is not a fully qualified domain name",
        "warning: line 4: relay.client_networks contains 0.0.0.0/0: every client may relay to any domain (an open relay)",
        "warning: line 6: delivery.message_expiration_timeout = 0s: ",
    ];
    for e in expect {
        assert!(
            stderr.lines().any(|l| l.starts_with(e)),
            "no {e:?} in:\n{stderr}"
        );
    }

    let tern = TernProcess::start(Options::with_config(config));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = tern.stderr();
        let warned = log
            .lines()
            .filter(|l| l.contains("level=warn") && l.contains("config: line "))
            .count();
        if warned >= 3 && log.contains("(an open relay)") {
            break;
        }
        assert!(Instant::now() < deadline, "no start-up warnings in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
