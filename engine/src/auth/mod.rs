//! SMTP AUTH credentials: the users file (names and argon2id hashes), the
//! password verifier, and the limiter of failed attempts per client IP.
//! The SASL exchange itself is the session's (`tern-smtp`); the socket
//! loop calls [`Limiter::check`], runs [`Users::verify`] on a blocking
//! thread, and reports a failure with [`Limiter::failed`].
//!
//! # Layout
//!
//! ```text
//! mod.rs      AuthError, load_users (start-up)
//! file.rs     the users file format: parse, encode, atomic rewrite (add, remove)
//! users.rs    Users (loaded file, verify), hash_password, the argon2 cost
//! limiter.rs  Limiter: delay and lockout per client IP (IPv6 per /64)
//! ```

mod file;
mod limiter;
#[cfg(test)]
mod tests;
mod users;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{AuthConfig, Config};

pub use file::{check_name, FILE_BYTES_MAX, HASH_BYTES_MAX, NAME_BYTES_MAX};
pub use limiter::{Limiter, Verdict, TRACKED_MAX};
pub use users::{hash_params, hash_password, Users};

/// What can go wrong with a users file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A line that does not follow the format.
    #[error("{}:{line}: {what}", path.display())]
    Syntax {
        /// The users file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The file is larger than [`FILE_BYTES_MAX`].
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge {
        /// The users file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `remove` of a user the file does not have.
    #[error("{}: no user {name:?}", path.display())]
    NoSuchUser {
        /// The users file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A name (or a hash given for it) that the format does not allow.
    #[error("user {name:?}: {why}")]
    InvalidUser {
        /// The name given.
        name: String,
        /// Why not.
        why: String,
    },
}

impl AuthError {
    fn io(path: &Path, source: std::io::Error) -> AuthError {
        AuthError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// At start-up: the users of `auth.users_file`, or `None` when it is not
/// set (AUTH not offered). A file that is missing, unreadable or malformed
/// is an error naming it.
pub fn load_users(config: &Config) -> Result<Option<Arc<Users>>, AuthError> {
    let Some(path) = &config.auth.users_file else {
        return Ok(None);
    };
    let users = Users::load(path)?;
    tracing::info!(path = %path.display(), users = users.len(), "users file loaded");
    if users.is_empty() {
        tracing::warn!(path = %path.display(), "users file has no users: every AUTH will fail");
    }
    Ok(Some(Arc::new(users)))
}

/// Whether a client at `ip` may authenticate before STARTTLS: only with
/// `auth.cleartext_on_loopback`, and only from 127.0.0.0/8 or ::1 (an
/// IPv4-mapped loopback address counts as IPv4).
pub fn cleartext_allowed(auth: &AuthConfig, ip: IpAddr) -> bool {
    auth.cleartext_on_loopback && ip.to_canonical().is_loopback()
}

/// Whether the file added `name` or replaced its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// A new user (appended).
    New,
    /// The user was there; its hash was replaced in place.
    Replaced,
}

/// Sets `name`'s hash in the users file `path` (created if missing),
/// atomically (`file.rs`, "Writing"). Comments and other users stay.
pub fn add_user(path: &Path, name: &str, hash: &str) -> Result<Added, AuthError> {
    check_name(name).map_err(|why| AuthError::InvalidUser {
        name: name.to_owned(),
        why,
    })?;
    users::check_hash(hash).map_err(|why| AuthError::InvalidUser {
        name: name.to_owned(),
        why: format!("its hash: {why}"),
    })?;
    file::rewrite(path, |lines| {
        for line in lines.iter_mut() {
            if let file::Line::User { name: n, hash: h } = line {
                if n == name {
                    *h = hash.to_owned();
                    return Ok(Added::Replaced);
                }
            }
        }
        lines.push(file::Line::User {
            name: name.to_owned(),
            hash: hash.to_owned(),
        });
        Ok(Added::New)
    })
}

/// Removes `name` from the users file `path`, atomically; an error if the
/// file does not have it.
pub fn remove_user(path: &Path, name: &str) -> Result<(), AuthError> {
    file::rewrite(path, |lines| {
        let before = lines.len();
        lines.retain(|l| !matches!(l, file::Line::User { name: n, .. } if n == name));
        if lines.len() == before {
            return Err(AuthError::NoSuchUser {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(())
    })
}
