//! The users file (parse, errors with line numbers, rewrite), verification
//! (good, bad, unknown, other parameters) and the limiter (delay, lockout,
//! window, /64 grouping, the bound).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::Params;

use super::*;
use crate::config::AuthConfig;

/// Password "other-params", hashed elsewhere with m=1 MiB, t=1: parameters
/// unlike ours, carried by the PHC string (and cheap in a debug build).
const OTHER_PARAMS: &str =
    "$argon2id$v=19$m=1024,t=1,p=1$iOgRGNU71UJjqlMU8gySPQ$2VdNJ/u2JSqXD6ZbYir+vYRejODHksjicsq1C9ZnmTU";

fn parse(text: &str) -> Result<Users, AuthError> {
    Users::parse(Path::new("/etc/tern/users"), text)
}

fn syntax_line(text: &str) -> (usize, String) {
    match parse(text) {
        Err(e @ AuthError::Syntax { line, .. }) => (line, e.to_string()),
        other => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn parses_users_comments_and_blank_lines() {
    let text = format!("# tern users\n\n  # indented comment\nalice:{OTHER_PARAMS}\r\nbob@example.com:{OTHER_PARAMS}  \n");
    let users = parse(&text).unwrap();
    assert_eq!(
        users.names().collect::<Vec<_>>(),
        ["alice", "bob@example.com"]
    );
    assert_eq!(users.len(), 2);
    assert!(parse("").unwrap().is_empty());
}

#[test]
fn bad_lines_are_named_with_file_and_line() {
    let h = OTHER_PARAMS;
    let long = "x".repeat(NAME_BYTES_MAX + 1);
    let cases: Vec<(String, usize, &str)> = vec![
        (format!("# ok\nalice {h}\n"), 2, "expected NAME:HASH"),
        (format!("alice:{h}\n:{h}\n"), 2, "empty"),
        (format!("\n\n al:{h}\n"), 3, "' '"),
        (format!("a\tb:{h}\n"), 1, "'\\t'"),
        (format!("a\u{7}b:{h}\n"), 1, "'\\u{7}'"),
        (format!("{long}:{h}\n"), 1, "longer than 255"),
        ("alice:secret\n".into(), 1, "not a PHC string"),
        (format!("alice:{}\n", h.replace("argon2id", "argon2i")), 1, "not argon2id"),
        ("alice:$argon2id$v=19$m=999999999,t=1,p=1$iOgRGNU71UJjqlMU8gySPQ$2VdNJ/u2JSqXD6ZbYir+vYRejODHksjicsq1C9ZnmTU\n".into(), 1, "parameters above"),
        ("alice:$argon2id$v=19$m=1024,t=1,p=1$iOgRGNU71UJjqlMU8gySPQ\n".into(), 1, "no salt or no hash"),
        (format!("alice:{h}\nbob:{h}\nalice:{h}\n"), 3, "again (first on line 1)"),
    ];
    for (text, line, what) in cases {
        let (got, message) = syntax_line(&text);
        assert_eq!(got, line, "{text:?}: {message}");
        assert!(
            message.starts_with(&format!("/etc/tern/users:{line}: ")),
            "{message}"
        );
        assert!(message.contains(what), "{text:?}: {message} lacks {what:?}");
    }
}

#[test]
fn verifies_good_bad_and_unknown_users() {
    let hash = hash_password("correct horse");
    let users = parse(&format!("alice:{hash}\nbob:{OTHER_PARAMS}\n")).unwrap();
    assert!(users.verify("alice", "correct horse"));
    assert!(!users.verify("alice", "correct horse "));
    assert!(!users.verify("Alice", "correct horse"), "names are exact");
    assert!(!users.verify("mallory", "correct horse"));
    // Another user's parameters, carried by its PHC string.
    assert!(users.verify("bob", "other-params"));
    assert!(!users.verify("bob", "other-param"));
}

#[test]
fn new_hashes_and_the_dummy_use_the_chosen_parameters() {
    let params = |h: &str| Params::try_from(&PasswordHash::new(h).unwrap()).unwrap();
    let ours = hash_params();
    for h in [hash_password("x"), users::DUMMY_HASH.to_string()] {
        let p = params(&h);
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert_eq!(
            (p.m_cost(), p.t_cost(), p.p_cost()),
            (ours.m_cost(), ours.t_cost(), ours.p_cost())
        );
    }
    assert_ne!(hash_password("x"), hash_password("x"), "salts are random");
}

#[test]
fn rewrite_adds_replaces_and_removes_keeping_comments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("users");
    assert_eq!(add_user(&path, "alice", OTHER_PARAMS).unwrap(), Added::New);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("# keep me\n{text}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(add_user(&path, "bob", OTHER_PARAMS).unwrap(), Added::New);
    let other = hash_password("new");
    assert_eq!(add_user(&path, "alice", &other).unwrap(), Added::Replaced);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("# keep me\nalice:{other}\nbob:{OTHER_PARAMS}\n")
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "rewritten 0600");
    remove_user(&path, "alice").unwrap();
    let users = Users::load(&path).unwrap();
    assert_eq!(users.names().collect::<Vec<_>>(), ["bob"]);
    let err = remove_user(&path, "alice").unwrap_err();
    assert!(matches!(err, AuthError::NoSuchUser { .. }), "{err}");
    assert!(matches!(
        add_user(&path, "a:b", OTHER_PARAMS),
        Err(AuthError::InvalidUser { .. })
    ));
    assert!(matches!(
        add_user(&path, "carol", "plain"),
        Err(AuthError::InvalidUser { .. })
    ));
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["users"], "no temporary file is left");
}

#[test]
fn a_rewrite_refuses_a_malformed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(&path, "alice:nohash\n").unwrap();
    let err = add_user(&path, "bob", OTHER_PARAMS).unwrap_err();
    assert!(err.to_string().contains(":1: "), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "alice:nohash\n");
    let missing = Users::load(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

fn limits() -> AuthConfig {
    AuthConfig {
        users_file: None,
        cleartext_on_loopback: false,
        failures_max: 5,
        failure_window: Duration::from_secs(600),
        lockout: Duration::from_secs(900),
        failure_delay: Duration::from_secs(1),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_delay_grows_with_failures_then_the_client_is_refused() {
    let mut l = Limiter::new(&limits());
    let (t0, a) = (Instant::now(), ip("192.0.2.1"));
    assert_eq!(l.check(a, t0), Verdict::Allow);
    for n in 1..5u32 {
        l.failed(a, t0);
        assert_eq!(
            l.check(a, t0),
            Verdict::Delay(Duration::from_secs(n.into()))
        );
    }
    l.failed(a, t0);
    assert_eq!(l.check(a, t0), Verdict::Refuse);
    assert_eq!(l.check(ip("192.0.2.2"), t0), Verdict::Allow, "per IP");
    // More failures while locked out do not extend the lockout.
    l.failed(a, t0 + Duration::from_secs(800));
    let end = t0 + Duration::from_secs(900);
    assert_eq!(l.check(a, end - Duration::from_millis(1)), Verdict::Refuse);
    assert_eq!(l.check(a, end), Verdict::Allow, "lockout over");
    assert_eq!(l.tracked(), 0, "and forgotten");
    l.failed(a, end);
    assert_eq!(
        l.check(a, end),
        Verdict::Delay(Duration::from_secs(1)),
        "afresh"
    );
}

#[test]
fn the_delay_is_capped() {
    let mut l = Limiter::new(&AuthConfig {
        failures_max: 100,
        failure_delay: Duration::from_secs(3),
        ..limits()
    });
    let (t0, a) = (Instant::now(), ip("192.0.2.1"));
    for _ in 0..10 {
        l.failed(a, t0);
    }
    assert_eq!(
        l.check(a, t0),
        Verdict::Delay(crate::config::AUTH_DELAY_MAX)
    );
    let mut none = Limiter::new(&AuthConfig {
        failure_delay: Duration::ZERO,
        ..limits()
    });
    none.failed(a, t0);
    assert_eq!(none.check(a, t0), Verdict::Allow);
}

#[test]
fn failures_expire_with_their_window() {
    let mut l = Limiter::new(&limits());
    let (t0, a) = (Instant::now(), ip("192.0.2.1"));
    for _ in 0..4 {
        l.failed(a, t0);
    }
    // The window runs from the first failure; the fifth failure after it
    // is a first one again.
    let later = t0 + Duration::from_secs(600);
    l.failed(a, later);
    assert_eq!(l.check(a, later), Verdict::Delay(Duration::from_secs(1)));
    assert_eq!(l.check(a, later + Duration::from_secs(600)), Verdict::Allow);
    assert_eq!(l.tracked(), 0);
}

#[test]
fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
    let mut l = Limiter::new(&limits());
    let t0 = Instant::now();
    for i in 0..5 {
        l.failed(ip(&format!("2001:db8:1:2::{i:x}")), t0);
    }
    assert_eq!(l.check(ip("2001:db8:1:2:ffff::1"), t0), Verdict::Refuse);
    assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Verdict::Allow);
    l.failed(ip("::ffff:192.0.2.9"), t0);
    assert_eq!(
        l.check(ip("192.0.2.9"), t0),
        Verdict::Delay(Duration::from_secs(1))
    );
    assert_eq!(l.check(ip("192.0.2.10"), t0), Verdict::Allow);
}

#[test]
fn tracked_clients_are_bounded_and_the_oldest_goes_first() {
    let mut l = Limiter::new(&limits());
    let t0 = Instant::now();
    let nth = |i: usize| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
    for i in 0..TRACKED_MAX {
        l.failed(nth(i), t0 + Duration::from_millis(i as u64));
    }
    // The first client fails again: now the most recent.
    let now = t0 + Duration::from_secs(60);
    l.failed(nth(0), now);
    l.failed(nth(TRACKED_MAX), now);
    assert_eq!(l.tracked(), TRACKED_MAX);
    assert_eq!(
        l.check(nth(1), now),
        Verdict::Allow,
        "the oldest was forgotten"
    );
    assert_eq!(l.check(nth(0), now), Verdict::Delay(Duration::from_secs(2)));
    assert_eq!(l.check(nth(2), now), Verdict::Delay(Duration::from_secs(1)));
    assert_eq!(
        l.check(nth(TRACKED_MAX), now),
        Verdict::Delay(Duration::from_secs(1))
    );
}

#[test]
fn cleartext_only_on_loopback_and_only_when_configured() {
    let on = AuthConfig {
        cleartext_on_loopback: true,
        ..limits()
    };
    for (addr, allowed) in [
        ("127.0.0.1", true),
        ("127.3.2.1", true),
        ("::1", true),
        ("::ffff:127.0.0.1", true),
        ("192.0.2.1", false),
        ("::2", false),
        ("2001:db8::1", false),
    ] {
        assert_eq!(cleartext_allowed(&on, ip(addr)), allowed, "{addr}");
        assert!(
            !cleartext_allowed(&limits(), ip(addr)),
            "{addr}: off by default"
        );
    }
}

#[test]
fn debug_output_shows_no_hash() {
    let users = parse(&format!("alice:{OTHER_PARAMS}\n")).unwrap();
    assert_eq!(format!("{users:?}"), "Users { users: 1 }");
}
