//! `send --auth USER:PASS`: AUTH PLAIN (RFC 4954, RFC 4616) once per
//! connection, after EHLO (after TLS when TLS is used). Anything but 235
//! fails the connection: a connection error, counted and reported like a
//! refused greeting.

use std::time::Instant;

use tern_smtp::client;

use super::send_conn::{io_err, us, Conn, Stats};
use super::send_stats::Phase;

/// `USER:PASS` (split at the first colon: the password may contain one).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Authentication identity.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Never prints the password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ***)", self.user)
    }
}

impl std::str::FromStr for Credentials {
    type Err = String;
    fn from_str(s: &str) -> Result<Credentials, String> {
        let (user, password) = s
            .split_once(':')
            .ok_or_else(|| "expected USER:PASS".to_owned())?;
        if user.is_empty() {
            return Err("empty user in USER:PASS".into());
        }
        Ok(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

impl Conn {
    /// AUTH PLAIN with an initial response (one round trip); `Err`
    /// unless the server answers 235.
    pub(super) async fn authenticate(
        &mut self,
        creds: &Credentials,
        stats: &Stats,
    ) -> std::io::Result<()> {
        let t = Instant::now();
        self.out.clear();
        client::auth_plain(&mut self.out, &creds.user, &creds.password);
        self.flush().await?;
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Auth, us(t));
        match code {
            235 => Ok(()),
            400.. => Err(io_err(format!("AUTH PLAIN: {}", self.last_error))),
            _ => Err(io_err(format!("AUTH PLAIN: unexpected reply {code}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse() {
        let c: Credentials = "bob:pa:ss".parse().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "pa:ss"));
        assert!("bob".parse::<Credentials>().is_err());
        assert!(":x".parse::<Credentials>().is_err());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}
