//! The data directory's layout: where each core's log shard lives. The one
//! place that names and parses shard directories (the server, `cores = 0`
//! resolution and the queue tools all go through it, so they cannot
//! disagree about which directories are shards).
//!
//! ```text
//! data_dir/shard-N/      the log of core N (N decimal, digits only)
//! data_dir/database-id   the transport database id (`cluster.rs`)
//! ```

use std::path::{Path, PathBuf};

/// Why a directory cannot be used as a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// It does not exist (the queue tools read an existing one).
    #[error("{0}: no such data directory (point --data-dir or server.data_dir at the one `tern serve` uses)")]
    Missing(PathBuf),
    /// It holds nothing of tern's (other files, or nothing at all for a
    /// reader).
    #[error("{0} is not a tern data directory: no database-id and no shard-N in it (point --data-dir or server.data_dir at the one `tern serve` uses; `tern serve` itself wants an empty, new or tern directory)")]
    Foreign(PathBuf),
    /// A file, not a directory.
    #[error("{0} is not a directory (server.data_dir must name a directory)")]
    NotADirectory(PathBuf),
    /// Cannot be read, made or written.
    #[error("cannot {what} {path}: {source} (tern needs to read and write its data directory; check its owner and mode, or choose another server.data_dir)")]
    Access {
        /// What was tried.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
}

/// What tern keeps in a data directory besides the shards.
const TERN_ENTRIES: &[&str] = &[
    "database-id",
    "admin-token",
    "tls",
    "operator",
    "mta-sts",
    "tern.lock",
];

/// What `dir` holds: (one of tern's entries, something else). Hidden
/// files and `lost+found` (a fresh file system) are neither.
fn scan(dir: &Path) -> std::io::Result<(bool, bool)> {
    let (mut tern, mut other) = (false, false);
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if TERN_ENTRIES.contains(&name.as_ref()) || parse_shard_name(&name).is_some() {
            tern = true;
        } else if name != "lost+found" && !name.starts_with('.') {
            other = true;
        }
    }
    Ok((tern, other))
}

/// For the tools that read the data directory: it must exist and be
/// tern's.
pub fn check_readable(dir: &Path) -> Result<(), DataDirError> {
    let access = |what, source| DataDirError::Access {
        what,
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::Missing(dir.to_owned()))
        }
        Err(e) => return Err(access("read", e)),
        Ok(m) if !m.is_dir() => return Err(DataDirError::NotADirectory(dir.to_owned())),
        Ok(_) => {}
    }
    match scan(dir) {
        Ok((true, _)) => Ok(()),
        Ok((false, _)) => Err(DataDirError::Foreign(dir.to_owned())),
        Err(e) => Err(access("read", e)),
    }
}

/// For `tern serve`, before anything is written: `dir` is a directory
/// that is empty, new, or tern's, and can be written.
pub fn check_writable(dir: &Path) -> Result<(), DataDirError> {
    let access = |what, path: &Path, source| DataDirError::Access {
        what,
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(DataDirError::NotADirectory(dir.to_owned())),
        Ok(_) => {
            if let (false, true) = scan(dir).map_err(|e| access("read", dir, e))? {
                return Err(DataDirError::Foreign(dir.to_owned()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| access("create", dir, e))?
        }
        Err(e) => return Err(access("read", dir, e)),
    }
    let probe = dir.join(format!(".tern-write-check.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| access("write in", dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The directory of shard `n`'s log.
pub fn shard_dir(data_dir: &Path, n: usize) -> PathBuf {
    data_dir.join(format!("shard-{n}"))
}

/// The shard number a directory name stands for: `shard-` and decimal
/// digits only (`shard-+7`, `shard-`, `shard-x1` are not shards).
pub fn parse_shard_name(name: &str) -> Option<u16> {
    name.strip_prefix("shard-")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// The shard directories in `data_dir`, by shard number.
pub fn shard_dirs(data_dir: &Path) -> std::io::Result<Vec<(u16, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_shard_name) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One more than the highest shard number in `data_dir` (0 when there is
/// none or the directory cannot be read).
pub fn existing_shards(data_dir: &Path) -> usize {
    shard_dirs(data_dir)
        .unwrap_or_default()
        .last()
        .map_or(0, |(n, _)| usize::from(*n) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_shards(dir.path()), 0);
        for name in [
            "shard-0",
            "shard-2",
            "shard-+7",
            "shard-",
            "shard-x1",
            "shard-99999999",
            "database-id",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(existing_shards(dir.path()), 3, "shard-2 is the highest");
        let found: Vec<u16> = shard_dirs(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, vec![0, 2], "the queue tools see the same shards");
        assert_eq!(existing_shards(&dir.path().join("missing")), 0);
        assert_eq!(shard_dir(dir.path(), 2), dir.path().join("shard-2"));
    }
}
