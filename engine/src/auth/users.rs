//! The loaded users file and password verification (argon2id).
//!
//! # Cost
//!
//! New hashes use argon2id with m = 8 MiB, t = 2 passes, p = 1 lane
//! ([`hash_params`]). Measured on this project's build machine (AMD EPYC,
//! release build, 50 verifications each):
//!
//! ```text
//! m=19 MiB t=2  15.3-17.6 ms   (the argon2 crate's default, OWASP's first choice)
//! m=8 MiB  t=2   5.2-5.5 ms    <- chosen
//! m=8 MiB  t=1   2.5 ms
//! m=4 MiB  t=3   3.6-3.7 ms
//! m=4 MiB  t=2   2.5 ms
//! m=2 MiB  t=2   1.2 ms
//! ```
//!
//! A relay verifies a login per submission connection, each on a core's
//! blocking thread: 5 ms is about 200 logins per second per core, while
//! 8 MiB per guess still makes an offline attack on a stolen file costly.
//! (A debug build is about 40 times slower: 200 ms.) Hashes written with
//! other parameters verify too: a PHC string carries its own, within the
//! bounds below.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::file::{self, Line};
use super::AuthError;

/// Memory of new hashes, KiB (see the module doc for the measurements).
const HASH_MEMORY_KIB: u32 = 8 * 1024;
/// Passes of new hashes.
const HASH_PASSES: u32 = 2;
/// Lanes of new hashes: one; the verifier runs on one blocking thread.
const HASH_LANES: u32 = 1;

/// Largest memory a hash in the file may ask for, KiB: every login with
/// such a hash allocates it, on every core at once under load; 256 MiB
/// is far above any sensible choice and still survivable.
const HASH_MEMORY_KIB_MAX: u32 = 256 * 1024;
/// Most passes a hash may ask for (each pass is another full sweep of
/// its memory).
const HASH_PASSES_MAX: u32 = 16;
/// Most lanes a hash may ask for (they run one after the other here).
const HASH_LANES_MAX: u32 = 8;

/// What unknown users are verified against, so that a login for a name
/// that does not exist costs the time of a real one: a hash (of a random
/// password nobody knows) with the parameters of new hashes. A test
/// checks that its parameters are [`hash_params`].
pub(super) const DUMMY_HASH: &str =
    "$argon2id$v=19$m=8192,t=2,p=1$WdPZ2DuVV65WupX59bxpEQ$NHDW77dlqdiZSjZynp21J7ZQwjwL17irIHua5u0tlQY";

/// The parameters of new hashes.
pub fn hash_params() -> Params {
    Params::new(HASH_MEMORY_KIB, HASH_PASSES, HASH_LANES, None)
        .expect("the hash parameters are within argon2's bounds")
}

/// An argon2id PHC string of `password` with a random salt (from the
/// operating system) and [`hash_params`].
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, hash_params())
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id with valid parameters and salt does not fail")
        .to_string()
}

/// Checks that `hash` is an argon2id PHC string within the bounds.
pub(super) fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string: {e}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!("algorithm {} is not argon2id", parsed.algorithm));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("the PHC string has no salt or no hash".into());
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("argon2 parameters: {e}"))?;
    if params.m_cost() > HASH_MEMORY_KIB_MAX
        || params.t_cost() > HASH_PASSES_MAX
        || params.p_cost() > HASH_LANES_MAX
    {
        return Err(format!(
            "argon2 parameters above m={HASH_MEMORY_KIB_MAX},t={HASH_PASSES_MAX},p={HASH_LANES_MAX}"
        ));
    }
    Ok(())
}

/// The users of a users file (format: `file.rs`), with their hashes.
/// Read-only once loaded; `Send + Sync`, so a verification can run on a
/// blocking thread (`glommio::executor().spawn_blocking`) while the core
/// serves others.
#[derive(Clone, Default)]
pub struct Users {
    /// Name to PHC string (each checked by [`check_hash`]).
    hashes: HashMap<String, String>,
    /// The names in file order.
    names: Vec<String>,
}

/// The count only: hashes stay out of logs and `{:?}` output.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.names.len())
            .finish()
    }
}

// Verification runs off the core's thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Users>();
};

impl Users {
    /// Reads and parses the users file `path`.
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = file::read(path)?;
        warn_if_readable_by_others(path);
        Users::parse(path, &text)
    }

    /// Parses `text`, the content of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Users, AuthError> {
        let mut users = Users::default();
        for line in file::parse(path, text)? {
            if let Line::User { name, hash } = line {
                users.names.push(name.clone());
                users.hashes.insert(name, hash);
            }
        }
        Ok(users)
    }

    /// Whether `password` is `user`'s. CPU-bound for milliseconds (see the
    /// module doc): run it on a blocking thread. An unknown user costs the
    /// same (one verification against [`DUMMY_HASH`]), so the time taken
    /// does not tell which users exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (known, hash) = match self.hashes.get(user) {
            Some(h) => (true, h.as_str()),
            None => (false, DUMMY_HASH),
        };
        // Checked at load; a failure here would only mean "no".
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        // The algorithm, version and parameters come from the PHC string.
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && matches
    }

    /// The user names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Logs a warning when group or others may read the users file (it is
/// written 0600; hashes are costly to attack, not impossible).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                "users file is readable by group or others; chmod 600 it");
        }
    }
}
