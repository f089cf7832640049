//! The users file: its format, its parser, and its rewriting (add,
//! replace or remove one user, atomically).
//!
//! # Format
//!
//! UTF-8 text, one line per user, read whole at start-up (`tern serve`
//! reads it once: changes take effect at the next start).
//!
//! ```text
//! file    = *( line LF )            ; the last LF may be missing; CRLF accepted
//! line    = blank / comment / user
//! blank   = *WSP
//! comment = *WSP "#" *any           ; kept as written when the file is rewritten
//! user    = name ":" hash *WSP
//! name    = 1*255 octets            ; no ":", no whitespace, no control character
//! hash    = PHC string of argon2id  ; "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH"
//! ```
//!
//! Limits: a name is at most [`NAME_BYTES_MAX`] bytes, a hash at most
//! [`HASH_BYTES_MAX`], the file at most [`FILE_BYTES_MAX`]; a hash's
//! parameters at most `HASH_MEMORY_KIB_MAX`, `HASH_PASSES_MAX` and
//! `HASH_LANES_MAX` (`users.rs`). A name appears once. Every error names
//! the file and the line.
//!
//! # Writing
//!
//! `tern user add/remove` rewrite the whole file, in this order:
//!
//! 1. create the directory if missing (durably), open it, `flock` it
//!    exclusively (one writer at a time; released when the process exits);
//! 2. read and parse the current file (missing: empty);
//! 3. write the new text to `.NAME.tmp` in the same directory, created
//!    with mode 0600 (a stale one is removed first);
//! 4. fsync the temporary file;
//! 5. rename it over the file (readers see the old or the new file whole);
//! 6. fsync the directory (the rename is durable).
//!
//! The file is always 0600 afterwards, whatever its mode was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::users::check_hash;
use super::AuthError;

/// Longest user name: RFC 4616 (SASL PLAIN) section 2 requires servers
/// to accept authentication identities of up to 255 octets.
pub const NAME_BYTES_MAX: usize = 255;

/// Longest hash string: an argon2id PHC string with the largest salt (64
/// bytes) and output (64 bytes) the parser accepts is under 200 bytes.
pub const HASH_BYTES_MAX: usize = 512;

/// Largest users file: it is held in memory whole. 16 MiB is about
/// 100 000 users at their longest hash.
pub const FILE_BYTES_MAX: u64 = 16 << 20;

/// One line of the file, as kept for rewriting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A blank line or a comment, as written (without its line end).
    Other(String),
    /// A user and its hash.
    User { name: String, hash: String },
}

/// Checks a user name against the format: 1..=[`NAME_BYTES_MAX`] bytes,
/// no ':', whitespace or control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!("the name is longer than {NAME_BYTES_MAX} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("the name contains {c:?}"));
    }
    Ok(())
}

/// Parses the text of `path` (named in errors, with the line number).
pub(super) fn parse(path: &Path, text: &str) -> Result<Vec<Line>, AuthError> {
    let mut lines = Vec::new();
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let syntax = |what: String| AuthError::Syntax {
            path: path.to_owned(),
            line: number,
            what,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let bare = line.trim_start();
        if bare.is_empty() || bare.starts_with('#') {
            lines.push(Line::Other(line.to_owned()));
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(syntax("expected NAME:HASH".into()));
        };
        check_name(name).map_err(syntax)?;
        let hash = hash.trim_end();
        if hash.len() > HASH_BYTES_MAX {
            return Err(syntax(format!(
                "the hash is longer than {HASH_BYTES_MAX} bytes"
            )));
        }
        check_hash(hash).map_err(|e| syntax(format!("user {name:?}: {e}")))?;
        if let Some(first) = seen.insert(name, number) {
            return Err(syntax(format!(
                "user {name:?} again (first on line {first})"
            )));
        }
        lines.push(Line::User {
            name: name.to_owned(),
            hash: hash.to_owned(),
        });
    }
    Ok(lines)
}

/// The file's text: each line and a LF.
pub(super) fn encode(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Other(text) => out.push_str(text),
            Line::User { name, hash } => {
                out.push_str(name);
                out.push(':');
                out.push_str(hash);
            }
        }
        out.push('\n');
    }
    out
}

/// Reads `path` whole (at most [`FILE_BYTES_MAX`]).
pub(super) fn read(path: &Path) -> Result<String, AuthError> {
    let io = |e| AuthError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(AuthError::TooLarge {
            path: path.to_owned(),
            max: FILE_BYTES_MAX,
        });
    }
    Ok(text)
}

/// Rewrites `path` with what `change` makes of its lines (a missing file
/// has none), in the order of the module doc, under the directory lock.
pub(super) fn rewrite<T>(
    path: &Path,
    change: impl FnOnce(&mut Vec<Line>) -> Result<T, AuthError>,
) -> Result<T, AuthError> {
    let (dir, name) = split(path)?;
    let io = |e| AuthError::io(path, e);
    tern_storage::log::create_dir_durably(&dir).map_err(|e| AuthError::io(&dir, e))?;
    let dir_file = File::open(&dir).map_err(|e| AuthError::io(&dir, e))?;
    lock(&dir_file).map_err(|e| AuthError::io(&dir, e))?;
    let mut lines = match read(path) {
        Ok(text) => parse(path, &text)?,
        Err(AuthError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let out = change(&mut lines)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, encode(&lines).as_bytes()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        AuthError::io(&tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(io)?;
    dir_file.sync_all().map_err(|e| AuthError::io(&dir, e))?;
    Ok(out)
}

/// The directory of `path` ("." for a bare name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, String), AuthError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AuthError::io(path, std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_owned()))
}

/// Takes the exclusive `flock` of `dir` (waits for another writer).
fn lock(dir: &File) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates `tmp` afresh with mode 0600, writes `bytes`, fsyncs.
fn write_synced(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}
