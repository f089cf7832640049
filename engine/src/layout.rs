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
