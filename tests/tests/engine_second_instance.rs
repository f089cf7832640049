//! A second `tern serve` on an address or a data directory a running one
//! holds is refused at start, naming what is taken and what to do; the
//! first one goes on taking mail. (With `SO_REUSEPORT` alone the second
//! process would share the SMTP port and take part of the mail.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern_tests::server::{free_addr, tern_bin, Options, PortReservation, TernProcess};
use tern_tests::smtp::message;

/// Bound on the refused process exiting.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A child killed (by PID) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tern serve` with these addresses and data directory; it must
/// exit non-zero within [`EXIT_WAIT`]. Returns its stderr.
fn refused(dir: &Path, listen: SocketAddr, admin: SocketAddr, data_dir: &Path) -> String {
    let stderr_path = dir.join(format!("second-{}.log", listen.port()));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = Command::new(tern_bin())
        .arg("serve")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cores")
        .arg("1")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn tern");
    let mut guard = Guard(child);
    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break status;
        }
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the second tern on {listen} (admin {admin}, {}) is still running; stderr:\n{text}",
            data_dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        !status.success(),
        "the second tern exited 0; stderr:\n{text}"
    );
    text
}

#[test]
fn a_second_instance_is_refused_and_the_first_keeps_taking_mail() {
    let first = TernProcess::start(Options {
        cores: 2,
        ..Options::default()
    });
    let dir = tempfile::Builder::new()
        .prefix("tern-test-")
        .tempdir()
        .expect("tempdir");
    let other_data = dir.path().join("data");

    // The same SMTP address, another data directory and admin address.
    let text = refused(dir.path(), first.addr(), free_addr(), &other_data);
    let want = format!(
        "{} is already in use by another process (another tern?); stop it or choose another server.listen",
        first.addr()
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");
    // Refused before it bound anything or opened a log.
    assert!(!text.contains("listener bound"), "{text}");
    assert!(!other_data.join("shard-0").exists());

    // The same admin address.
    let spare = PortReservation::new();
    let text = refused(dir.path(), spare.addr(), first.admin_addr(), &other_data);
    let want = format!(
        "{} is already in use by another process (another tern?); stop it or choose another server.admin_listen",
        first.admin_addr()
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");

    // The same data directory, other addresses.
    let text = refused(dir.path(), spare.addr(), free_addr(), &first.data_dir());
    let want = format!(
        "{} is in use by another tern serve ({} is locked); stop it or choose another data_dir",
        first.data_dir().display(),
        first.data_dir().join("tern.lock").display()
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");

    // The first one takes every message, on every core.
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut c = first.ehlo();
        let content = message(&format!("after the second start {i}"), &["body"]);
        ids.push(c.send_message("a@example.test", &["b@example.test"], &content));
        c.quit();
    }
    assert_eq!(first.counter("tern_messages_accepted_total"), 8);
    let queued = first.queue_ids();
    for id in &ids {
        assert!(queued.contains(id), "{id} not queued on the first tern");
    }
}
