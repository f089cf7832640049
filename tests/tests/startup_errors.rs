//! Start-up and CLI errors name the thing and say what to do, against the
//! real binary: a data directory that is a file, another program's
//! directory, a missing one for the queue tools, one tern may not write
//! in, and a file system too small for the cores' log segments.

use std::path::Path;
use std::process::{Command, Output};

use tern_tests::server::{free_addr, tern_bin};

fn tern(dir: &Path, args: &[&str]) -> Output {
    Command::new(tern_bin())
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .args(args)
        .output()
        .expect("run tern")
}

/// `tern serve` on `data_dir` (one core, free ports): must fail; stderr.
#[track_caller]
fn serve_fails(dir: &Path, data_dir: &str, extra: &[&str]) -> String {
    let listen = free_addr().to_string();
    let mut args = vec![
        "serve",
        "--data-dir",
        data_dir,
        "--listen",
        &listen,
        "--admin-listen",
        "off",
        "--cores",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = tern(dir, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started:\n{stderr}");
    assert!(
        !stderr.contains("Stack backtrace"),
        "a backtrace:\n{stderr}"
    );
    stderr
}

#[test]
fn a_data_directory_that_is_a_file_or_someone_elses_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "x").unwrap();
    let e = serve_fails(dir.path(), "afile", &[]);
    assert!(e.contains("error: afile is not a directory"), "{e}");

    std::fs::create_dir(dir.path().join("home")).unwrap();
    std::fs::write(dir.path().join("home/notes.txt"), "mine").unwrap();
    let e = serve_fails(dir.path(), "home", &[]);
    assert!(e.contains("home is not a tern data directory"), "{e}");
    assert!(e.contains("server.data_dir"), "{e}");
    // Nothing of tern's was put there.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("home"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
}

#[test]
fn the_queue_tools_name_a_wrong_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = tern(dir.path(), &["queue", "list", "--data-dir", "nowhere"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("nowhere: no such data directory"), "{e}");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = tern(dir.path(), &["queue", "list", "--data-dir", "empty"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("empty is not a tern data directory"), "{e}");
}

fn is_root() -> bool {
    // SAFETY: a plain syscall.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_data_directory_tern_may_not_write_in_is_named() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run tern as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listen = free_addr().to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tern_bin())
        .args(["serve", "--data-dir"])
        .arg(&locked)
        .args(["--listen", &listen, "--admin-listen", "off", "--cores", "1"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains(&format!("cannot write in {}", locked.display())),
        "{e}"
    );
    assert!(e.contains("Permission denied"), "{e}");
}

#[test]
fn a_file_system_too_small_for_the_segments_says_how_much_is_needed() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8M", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let e = serve_fails(dir.path(), "small/data", &[]);
    assert!(
        e.contains("no space left on the file system of small/data/shard-0"),
        "{e}"
    );
    assert!(e.contains("per log segment (storage.segment_size)"), "{e}");
    assert!(e.contains("is free"), "{e}");
}
