//! The HTTPS fetch of a policy (RFC 8461 3.3): `GET
//! https://mta-sts.<domain>/.well-known/mta-sts.txt`, the certificate
//! verified for `mta-sts.<domain>` (WebPKI roots plus `tls.ca_file`), no
//! redirects, status 200 only, `text/plain`, at most
//! [`POLICY_BYTES_MAX`] bytes, within `mta_sts.fetch_timeout`. Blocking
//! (ureq): it runs on a thread of its own, never on a core's executor.
//! The host name is resolved through tern's own resolver
//! (`delivery.dns_servers`), as MX lookups are.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::policy::{self, Policy, POLICY_BYTES_MAX};
use crate::dns::Resolver;

/// Where the policy of `domain` is served.
pub fn url(domain: &str, port: u16) -> String {
    match port {
        443 => format!("https://mta-sts.{domain}/.well-known/mta-sts.txt"),
        p => format!("https://mta-sts.{domain}:{p}/.well-known/mta-sts.txt"),
    }
}

/// Fetches and parses the policy of `domain`; the error says what failed.
pub fn fetch(
    domain: &str,
    port: u16,
    timeout: Duration,
    resolver: Resolver,
    tls: Arc<ClientConfig>,
) -> Result<(Policy, String), String> {
    let agent = ureq::AgentBuilder::new()
        .tls_config(tls)
        .resolver(move |netloc: &str| resolve(&resolver, netloc))
        .redirects(0)
        .timeout(timeout)
        .user_agent(concat!("tern/", env!("CARGO_PKG_VERSION")))
        .build();
    let url = url(domain, port);
    let response = match agent.get(&url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => return Err(format!("{url}: HTTP status {code}")),
        Err(e) => return Err(format!("{url}: {e}")),
    };
    if response.status() != 200 {
        // Redirects are not followed (RFC 8461 3.3).
        return Err(format!("{url}: HTTP status {}", response.status()));
    }
    if response.content_type() != "text/plain" {
        return Err(format!(
            "{url}: media type {:?}, not text/plain",
            response.content_type()
        ));
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(POLICY_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{url}: reading the body: {e}"))?;
    if body.len() > POLICY_BYTES_MAX {
        return Err(format!("{url}: body longer than {POLICY_BYTES_MAX} bytes"));
    }
    let text = String::from_utf8(body).map_err(|_| format!("{url}: body is not UTF-8"))?;
    let policy = policy::parse(&text).map_err(|e| format!("{url}: {e}"))?;
    Ok((policy, text))
}

/// `host:port` through tern's resolver.
fn resolve(resolver: &Resolver, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, netloc.to_owned());
    let (host, port) = netloc.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let addrs = futures_lite::future::block_on(resolver.addresses(host))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    Ok(addrs
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        assert_eq!(
            super::url("example.com", 443),
            "https://mta-sts.example.com/.well-known/mta-sts.txt"
        );
        assert_eq!(
            super::url("a.test", 8443),
            "https://mta-sts.a.test:8443/.well-known/mta-sts.txt"
        );
    }
}
