//! One `tern serve` per address and per data directory.
//!
//! Every core binds the SMTP address with `SO_REUSEPORT`, so a second
//! process that did the same would silently share the port and take part
//! of the mail into its own queue. Before the cores bind, the kernel's
//! table of listening TCP sockets (`/proc/net/tcp`, `/proc/net/tcp6`) is
//! read: a socket listening on the same port at the same address (or at
//! the wildcard address, on either side) stops the start, whoever owns
//! it. (A probe bind without `SO_REUSEPORT` would also fail on sockets that
//! are only bound, never listening, such as a port reservation.) The data
//! directory is claimed with an exclusive `flock` on `DATA_DIR/tern.lock`,
//! held for the life of the process, so a second instance on the same
//! directory stops before it touches anything (the shards' own locks would
//! stop it later, less clearly). `/proc/net/tcp` is read by hand: it is a
//! fixed-format table of which two columns are needed, not worth the
//! `procfs` crate's dependency tree.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::config::Config;

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "tern.lock";

/// Holds the data directory for as long as it lives.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
}

/// Claims the data directory (creating it), then checks that nobody listens on the SMTP
/// address or the implicit-TLS address (the admin listener binds without
/// `SO_REUSEPORT`, so its own bind already fails; [`in_use`] words it).
pub fn claim(config: &Config) -> anyhow::Result<Claim> {
    let lock = lock_data_dir(&config.data_dir)?;
    probe(config.listen, "server.listen")?;
    if let Some(addr) = config.tls.implicit_listen {
        probe(addr, "tls.implicit_listen")?;
    }
    Ok(Claim { _lock: lock })
}

/// The error for an address somebody else holds: which address, which
/// key, what to do.
fn in_use(addr: SocketAddr, key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{addr} is already in use by another process (another tern?); stop it or choose another {key}"
    )
}

/// Fails when a socket listens on `addr`'s port at `addr`'s address or
/// at a wildcard address.
fn probe(addr: SocketAddr, key: &str) -> anyhow::Result<()> {
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => listening.extend(listeners(&text)),
            // No IPv6 in this kernel: nothing listens there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{key} {addr}: cannot read {table}: {e}"),
        }
    }
    if listening.iter().any(|l| clashes(*l, addr)) {
        return Err(in_use(addr, key));
    }
    Ok(())
}

/// The `st` column of a listening socket.
const TCP_LISTEN: &str = "0A";

/// The local addresses of the listening sockets of a `/proc/net/tcp` or
/// `/proc/net/tcp6` table (lines that do not parse are skipped).
fn listeners(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace().skip(1);
            let local = cols.next()?;
            let state = cols.nth(1)?;
            (state == TCP_LISTEN).then(|| parse_local(local)).flatten()
        })
        .collect()
}

/// `0100007F:1F91` (IPv4) or 32 hex digits then the port (IPv6): the
/// address as the kernel's 32-bit words in host byte order, the port in
/// hex.
fn parse_local(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip: IpAddr = match ip.len() {
        8 => Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Would a listener on `other` share connections meant for `ours`?
fn clashes(other: SocketAddr, ours: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(other.ip()), canonical(ours.ip()));
    other.port() == ours.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// Creates `dir` if needed and locks it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    tern_storage::log::create_dir_durably(dir)
        .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: plain syscall on a valid descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "{} is in use by another tern serve ({} is locked); stop it or choose another data_dir",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_with_reuse_port_is_found_a_bound_socket_is_not() {
        let sk = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sk.set_reuse_port(true).unwrap();
        sk.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = sk.local_addr().unwrap().as_socket().unwrap();
        // Bound, not listening (a test's port reservation): free.
        probe(addr, "server.listen").unwrap();
        sk.listen(8).unwrap();
        let e = probe(addr, "server.listen").unwrap_err().to_string();
        assert!(
            e.contains(&format!("{addr} is already in use")) && e.contains("server.listen"),
            "{e}"
        );
        let wildcard = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        assert!(probe(wildcard, "server.listen").is_err());
        drop(sk);
        probe(addr, "server.listen").unwrap();
    }

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "  sl  local_address rem_address   st tx_queue\n   0: 0100007F:1F91 00000000:0000 0A 0\n   1: 0100007F:0050 0100007F:C350 01 0\n";
        assert_eq!(
            listeners(v4),
            vec!["127.0.0.1:8081".parse::<SocketAddr>().unwrap()]
        );
        let v6 = "  sl  local_address remote_address st\n   0: 00000000000000000000000000000000:09DD 00000000000000000000000000000000:0000 0A 0\n   1: 0000000000000000FFFF00000100007F:0019 00000000000000000000000000000000:0000 0A 0\n   2: junk\n";
        let got = listeners(v6);
        assert_eq!(got[0], "[::]:2525".parse::<SocketAddr>().unwrap());
        assert_eq!(
            got[1],
            "[::ffff:127.0.0.1]:25".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(got.len(), 2);
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clashes(at("[::]:2525"), at("127.0.0.1:2525")));
        assert!(clashes(at("[::ffff:127.0.0.1]:25"), at("127.0.0.1:25")));
        assert!(clashes(at("127.0.0.1:25"), at("0.0.0.0:25")));
        assert!(!clashes(at("127.0.0.2:25"), at("127.0.0.1:25")));
        assert!(!clashes(at("127.0.0.1:26"), at("127.0.0.1:25")));
    }

    #[test]
    fn the_data_dir_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("data_dir") && e.contains(LOCK_FILE), "{e}");
        drop(first);
        lock_data_dir(dir.path()).unwrap();
    }
}
