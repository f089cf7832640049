//! The HA boundary: the `[cluster]` settings (this node's name and site,
//! its peers, the shadow settings of SPEC sections 2-3 and the choice of
//! shadow peers for one message) are defined in `crate::config::cluster`
//! and re-exported here; this module holds the transport database id
//! (SPEC section 1): a random id created with a new data directory, which
//! peers compare to notice that a node came back with a new store.
//!
//! # The database id file
//!
//! ```text
//! data_dir/database-id   32 lowercase hex digits (16 random bytes) | "\n"
//! ```
//!
//! Created once, when the data directory has none, in this order:
//! 1. write `database-id.tmp.PID`, fsync it;
//! 2. hard-link it to `database-id` (atomic, and never replaces a file a
//!    concurrent creator made: then that one is read instead);
//! 3. fsync the directory (the new name is durable), then remove the temp
//!    file (a crash before that leaves a stray temp file, nothing worse).
//!
//! A file that exists but does not hold an id is an error, never replaced:
//! a new id makes every peer take over this node's shadowed messages
//! (SPEC section 4), so only an operator may decide that.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

// The cluster settings are config (the bottom of the engine): they live in
// `crate::config::cluster` and are re-exported here.
pub use crate::config::cluster::{
    is_token, ClusterConfig, Peer, ShadowPreference, RETRIES_MAX, TOKEN_BYTES_MAX,
};

/// Name of the database id file inside the data directory.
pub const DATABASE_ID_FILE: &str = "database-id";

/// A transport database id: 16 random bytes, shown as 32 lowercase hex
/// digits. A wiped or replaced store has a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatabaseId([u8; 16]);

/// Text that is not 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a database id is 32 lowercase hex digits")]
pub struct InvalidDatabaseId;

impl DatabaseId {
    /// A new id from `rng`.
    pub fn generate(rng: &mut impl rand::RngCore) -> DatabaseId {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        DatabaseId(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseId({self})")
    }
}

impl FromStr for DatabaseId {
    type Err = InvalidDatabaseId;
    fn from_str(s: &str) -> Result<Self, InvalidDatabaseId> {
        let hex = s.as_bytes();
        if hex.len() != 32 {
            return Err(InvalidDatabaseId);
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(InvalidDatabaseId),
        };
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = digit(hex[2 * i])? << 4 | digit(hex[2 * i + 1])?;
        }
        Ok(DatabaseId(bytes))
    }
}

/// Reads the id of the store in `data_dir`, or creates one (durably, see
/// the module doc) when the directory has none. Returns the id and whether
/// it was created now. A malformed id file is an error naming the file.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<(DatabaseId, bool)> {
    tern_storage::log::create_dir_durably(data_dir)?;
    let path = data_dir.join(DATABASE_ID_FILE);
    if let Some(id) = read_id(&path)? {
        return Ok((id, false));
    }
    let id = DatabaseId::generate(&mut rand::thread_rng());
    let tmp = data_dir.join(format!("{DATABASE_ID_FILE}.tmp.{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {
            File::open(data_dir)?.sync_all()?;
            std::fs::remove_file(&tmp)?;
            Ok((id, true))
        }
        // Another process created it first: its id is the store's.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            let id = read_id(&path)?.ok_or(e)?;
            Ok((id, false))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The id of the store in `data_dir` without creating one (read-only, for
/// the inspection commands); `None` when it has none yet.
pub fn load(data_dir: &Path) -> std::io::Result<Option<DatabaseId>> {
    read_id(&data_dir.join(DATABASE_ID_FILE))
}

/// The id in `path`; `None` if there is no such file.
fn read_id(path: &Path) -> std::io::Result<Option<DatabaseId>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    };
    let hex = text.strip_suffix(b"\n").unwrap_or(&text);
    std::str::from_utf8(hex)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: malformed database id (want 32 lowercase hex digits and a newline); \
                     not replacing it, since a new id makes peers take over this node's \
                     messages: restore it, or delete it to start as a new store",
                    path.display()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer(node_id: &str, site: &str) -> Peer {
        Peer {
            node_id: node_id.into(),
            addr: "127.0.0.1:2525".parse().unwrap(),
            name: "127.0.0.1:2525".into(),
            site: site.into(),
            fingerprint: crate::config::Fingerprint([0; 32]),
        }
    }

    fn cluster(pref: ShadowPreference, peers: Vec<Peer>) -> ClusterConfig {
        ClusterConfig {
            node_id: "a".into(),
            site: "east".into(),
            shadow_redundancy: true,
            shadow_preference: pref,
            max_retries_remote_site: 4,
            max_retries_local_site: 2,
            reject_on_shadow_failure: false,
            shadow_heartbeat_frequency: Duration::from_secs(120),
            shadow_message_auto_discard_interval: Duration::from_secs(2 * 86400),
            shadow_resubmit_time_span: Duration::from_secs(3 * 3600),
            shadow_timeout: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(600),
            peers,
        }
    }

    fn ids(order: Vec<&Peer>) -> Vec<&str> {
        order.into_iter().map(|p| p.node_id.as_str()).collect()
    }

    fn mixed() -> Vec<Peer> {
        vec![
            peer("b", "east"),
            peer("w1", "west"),
            peer("c", "east"),
            peer("w2", "west"),
            peer("d", "east"),
            peer("n1", "north"),
        ]
    }

    #[test]
    fn peers_by_site() {
        let c = cluster(ShadowPreference::PreferRemote, mixed());
        assert_eq!(ids(c.remote_peers().collect()), ["w1", "w2", "n1"].to_vec());
        assert_eq!(ids(c.local_peers().collect()), ["b", "c", "d"].to_vec());
    }

    #[test]
    fn shadow_order_by_preference() {
        use ShadowPreference::*;
        // (preference, start, expected order)
        let table: &[(ShadowPreference, usize, &[&str])] = &[
            (PreferRemote, 0, &["w1", "w2", "n1", "b", "c"]),
            (PreferRemote, 1, &["w2", "n1", "w1", "c", "d"]),
            (PreferRemote, 5, &["n1", "w1", "w2", "d", "b"]),
            (PreferRemote, usize::MAX, &["w1", "w2", "n1", "b", "c"]),
            (RemoteOnly, 0, &["w1", "w2", "n1"]),
            (RemoteOnly, 2, &["n1", "w1", "w2"]),
            (LocalOnly, 0, &["b", "c"]),
            (LocalOnly, 2, &["d", "b"]),
        ];
        for (pref, start, want) in table {
            let c = cluster(*pref, mixed());
            assert_eq!(
                ids(c.shadow_order(*start)),
                want.to_vec(),
                "{pref:?} {start}"
            );
        }
    }

    #[test]
    fn shadow_order_limits_tries() {
        let many: Vec<Peer> = (0..10)
            .map(|i| peer(&format!("r{i}"), "west"))
            .chain((0..10).map(|i| peer(&format!("l{i}"), "east")))
            .collect();
        let mut c = cluster(ShadowPreference::PreferRemote, many);
        assert_eq!(
            ids(c.shadow_order(3)),
            ["r3", "r4", "r5", "r6", "l3", "l4"].to_vec()
        );
        c.max_retries_remote_site = 0;
        assert_eq!(ids(c.shadow_order(0)), ["l0", "l1"].to_vec());
        c.max_retries_local_site = 0;
        assert!(c.shadow_order(0).is_empty());
    }

    #[test]
    fn shadow_order_single_site_and_none() {
        let same = vec![peer("b", "east"), peer("c", "east"), peer("d", "east")];
        let c = cluster(ShadowPreference::PreferRemote, same.clone());
        assert_eq!(ids(c.shadow_order(0)), ["b", "c"].to_vec());
        assert_eq!(ids(c.shadow_order(1)), ["c", "d"].to_vec());
        assert!(cluster(ShadowPreference::RemoteOnly, same)
            .shadow_order(0)
            .is_empty());
        let c = cluster(ShadowPreference::PreferRemote, Vec::new());
        assert!(c.shadow_order(7).is_empty());
    }

    #[test]
    fn tokens() {
        for ok in ["a", "mx1.example.net", "node_2-b", &"x".repeat(64)] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "é", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn database_id_text() {
        let id = DatabaseId::generate(&mut rand::thread_rng());
        let hex = id.to_string();
        assert_eq!(hex.len(), 32);
        assert_eq!(hex.parse::<DatabaseId>(), Ok(id));
        assert_eq!(format!("{id:?}"), format!("DatabaseId({hex})"));
        let known: DatabaseId = "000102030405060708090a0b0c0d0eff".parse().unwrap();
        assert_eq!(known.as_bytes()[15], 0xff);
        for bad in [
            "",
            "000102030405060708090a0b0c0d0e",
            "000102030405060708090A0B0C0D0EFF",
            "000102030405060708090a0b0c0d0eff0",
            "g00102030405060708090a0b0c0d0eff",
        ] {
            assert_eq!(bad.parse::<DatabaseId>(), Err(InvalidDatabaseId), "{bad}");
        }
    }

    #[test]
    fn database_id_created_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (id, created) = load_or_create(&data).unwrap();
        assert!(created);
        let text = std::fs::read_to_string(data.join(DATABASE_ID_FILE)).unwrap();
        assert_eq!(text, format!("{id}\n"));
        assert_eq!(load_or_create(&data).unwrap(), (id, false));
        // Only the id file is left behind.
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DATABASE_ID_FILE]);
        // Also accepted without the trailing newline.
        std::fs::write(data.join(DATABASE_ID_FILE), id.to_string()).unwrap();
        assert_eq!(load_or_create(&data).unwrap(), (id, false));
    }

    #[test]
    fn malformed_database_id_is_an_error_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_ID_FILE);
        for bad in [
            "",
            "not an id\n",
            "0123\n",
            "000102030405060708090A0B0C0D0EFF\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = load_or_create(dir.path()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn wiped_data_dir_gets_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (first, _) = load_or_create(&data).unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        let (second, created) = load_or_create(&data).unwrap();
        assert!(created);
        assert_ne!(first, second);
    }
}
