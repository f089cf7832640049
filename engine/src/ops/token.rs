//! The admin token: what a client of the admin API must send
//! (`Authorization: Bearer TOKEN`) to change anything.
//!
//! # File
//!
//! `DATA_DIR/admin-token` (or `server.admin_token_file`): the token on one
//! line, 64 hex digits when tern generated it (32 random bytes), mode
//! 0600. Generated at the first start unless a file is configured; a
//! configured file must exist and hold 16..=256 printable ASCII
//! characters.

use std::path::{Path, PathBuf};

/// The generated token's file in a data directory.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// Why there is no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read or written.
    #[error("admin token file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file holds no usable token.
    #[error("admin token file {0}: {1}")]
    Malformed(PathBuf, &'static str),
}

/// Reads the configured token file, or `DATA_DIR/admin-token`, creating
/// that one (with a fresh random token) when it does not exist.
/// Returns the token and whether it was generated now.
pub fn load_or_create(
    data_dir: &Path,
    configured: Option<&Path>,
) -> Result<(String, bool), TokenError> {
    let path = configured.map_or_else(|| default_path(data_dir), Path::to_path_buf);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((check(&path, &text)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && configured.is_none() => {
            let token = generate();
            tern_storage::log::replace_file_durably(&path, format!("{token}\n").as_bytes(), 0o600)
                .map_err(|e| TokenError::Io(path.clone(), e))?;
            Ok((token, true))
        }
        Err(e) => Err(TokenError::Io(path, e)),
    }
}

/// Reads a token for a client (the CLI): the file's first line.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Io(path.into(), e))?;
    check(path, &text)
}

fn check(path: &Path, text: &str) -> Result<String, TokenError> {
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 || token.len() > 256 {
        return Err(TokenError::Malformed(
            path.into(),
            "the token must be 16 to 256 characters on the first line",
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed(
            path.into(),
            "the token must be printable ASCII without spaces",
        ));
    }
    Ok(token.to_owned())
}

/// 32 random bytes as 64 hex digits.
fn generate() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares without an early exit (the time does not tell how much of a
/// guess was right).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_read_back_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (t, created) = load_or_create(dir.path(), None).unwrap();
        assert!(created);
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(default_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create(dir.path(), None).unwrap();
        assert_eq!((again.as_str(), created), (t.as_str(), false));
        assert_eq!(read(&default_path(dir.path())).unwrap(), t);
    }

    #[test]
    fn a_configured_file_must_exist_and_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        assert!(matches!(
            load_or_create(dir.path(), Some(&f)),
            Err(TokenError::Io(..))
        ));
        std::fs::write(&f, "short\n").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Some(&f)),
            Err(TokenError::Malformed(..))
        ));
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        let (t, created) = load_or_create(dir.path(), Some(&f)).unwrap();
        assert_eq!((t.as_str(), created), ("0123456789abcdef0123", false));
    }

    #[test]
    fn comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
