//! `tern user add/list/remove` through the built binary, the file they
//! write checked with `Users::load`, and a malformed users file refused by
//! `tern user list` and by `tern serve` at start-up.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tern_engine::auth::Users;

const TERN: &str = env!("CARGO_BIN_EXE_tern");

/// Runs `tern ARGS` with `stdin` on its standard input.
fn tern(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(TERN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "tern failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "tern succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn add_list_verify_replace_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let f = file.to_str().unwrap();
    let said = ok(tern(
        &["user", "add", "alice", "--users-file", f],
        "s3cret\n",
    ));
    assert!(said.starts_with("added alice"), "{said}");
    ok(tern(
        &["user", "add", "bob@example.com", "--users-file", f],
        "pw\r\n",
    ));
    assert_eq!(
        ok(tern(&["user", "list", "--users-file", f], "")),
        "alice\nbob@example.com\n"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let users = Users::load(&file).unwrap();
    assert!(users.verify("alice", "s3cret"));
    assert!(
        users.verify("bob@example.com", "pw"),
        "the CRLF is not the password's"
    );
    assert!(!users.verify("alice", "s3cret\n"));

    let said = ok(tern(
        &["user", "add", "alice", "--users-file", f],
        "changed\n",
    ));
    assert!(said.starts_with("replaced alice"), "{said}");
    assert!(Users::load(&file).unwrap().verify("alice", "changed"));

    ok(tern(&["user", "remove", "alice", "--users-file", f], ""));
    assert_eq!(
        ok(tern(&["user", "list", "--users-file", f], "")),
        "bob@example.com\n"
    );
    let err = failed(tern(&["user", "remove", "alice", "--users-file", f], ""));
    assert!(err.contains("no user \"alice\""), "{err}");
    let err = failed(tern(&["user", "add", "bad name", "--users-file", f], "x\n"));
    assert!(err.contains("whitespace") || err.contains("' '"), "{err}");
    let err = failed(tern(&["user", "add", "carol", "--users-file", f], ""));
    assert!(err.contains("empty password"), "{err}");
}

#[test]
fn the_file_comes_from_the_config_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, "[auth]\nusers_file = \"auth/users\"\n").unwrap();
    let data = dir.path().join("data");
    let args = |cmd: &'static str| {
        vec![
            "user".to_string(),
            cmd.into(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
        ]
    };
    let mut add = args("add");
    add.insert(2, "dave".into());
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    ok(tern(&add, "pw\n"));
    let list = args("list");
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    assert_eq!(ok(tern(&list, "")), "dave\n");
    // Relative to the config file's directory, not to --data-dir (nor to
    // the working directory).
    assert!(Users::load(&dir.path().join("auth/users"))
        .unwrap()
        .verify("dave", "pw"));
    assert!(!data.join("auth/users").exists());
    // Without a file named anywhere: a clear error.
    let err = failed(tern(&["user", "list"], ""));
    assert!(err.contains("--users-file"), "{err}");
}

#[test]
fn a_malformed_file_is_refused_naming_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, "# users\nalice:not-a-hash\n").unwrap();
    let f = file.to_str().unwrap();
    let err = failed(tern(&["user", "list", "--users-file", f], ""));
    assert!(err.contains(&format!("{f}:2: ")), "{err}");
    // `tern serve` stops at start-up, before it binds or writes anything.
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, format!("[auth]\nusers_file = {f:?}\n")).unwrap();
    let data = dir.path().join("data");
    let serve = |config: &Path| {
        tern(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
                "--cores",
                "1",
            ],
            "",
        )
    };
    let err = failed(serve(&config));
    assert!(err.contains(&format!("auth.users_file: {f}:2: ")), "{err}");
    assert!(!data.exists(), "nothing was created");
    std::fs::write(&config, "[auth]\nusers_file = \"missing\"\n").unwrap();
    let err = failed(serve(&config));
    assert!(err.contains("missing"), "{err}");
}
