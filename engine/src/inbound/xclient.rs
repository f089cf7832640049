//! XCLIENT from a front end (Postfix's extension; the protocol is
//! `tern_smtp::server`'s): a tern front end, or any proxy listed in
//! `relay.front_end_networks`, names the real client behind it, and this
//! session is the real client's from then on.
//!
//! Only a connection from a listed front end may send it (the policy's
//! `allow_xclient`, decided once at admission: `listener.rs`); anyone
//! else gets the protocol crate's `550 5.7.0` and no XCLIENT in EHLO.
//! What the session takes from it:
//!
//! - `ADDR`/`PORT`: the client for relay control (`relay.client_networks`
//!   is checked against the real client, not the front end), for the
//!   accept step (`Received:`, the accept log line, duplicate detection)
//!   and for AUTH's failed-attempt limiter;
//! - the per-IP count: the session is counted under the real client's
//!   address (`smtp.connections_per_ip_max`; over it: `421 4.7.0` and
//!   close), the front end's own address is never counted;
//! - `HELO`/`PROTO`/`LOGIN`: kept by the protocol session (the envelope,
//!   so `Received:`); `LOGIN=user` is authenticated as with SMTP AUTH.

use std::net::{IpAddr, SocketAddr};

use tern_smtp::server::Session;
use tern_smtp::xclient::Xclient;

use super::session::{CountingPolicy, Loop};
use super::Inbound;
use crate::config::RelayRules;
use crate::metrics::CoreMetrics;

/// Is `ip` one of the configured front ends?
pub(super) fn is_front_end(rules: &RelayRules, ip: IpAddr) -> bool {
    let ip = super::relay::canonical(ip);
    rules.front_end_networks.iter().any(|n| n.contains(&ip))
}

/// The client after XCLIENT `x`, the session's client being `current`
/// and the connection's peer `front_end`:
///
/// - `ADDR=ip`: `ip` with `PORT` (0 when it is not given or
///   unavailable);
/// - `ADDR=[UNAVAILABLE]`: the front end's own address (the front end
///   does not know the client; HELO, PROTO and LOGIN still count);
/// - no `ADDR`: `current` (a port alone names no client).
pub(super) fn client_after(x: &Xclient, current: SocketAddr, front_end: SocketAddr) -> SocketAddr {
    match x.addr {
        None => current,
        Some(None) => front_end,
        Some(Some(ip)) => SocketAddr::new(ip, x.port.flatten().unwrap_or(0)),
    }
}

/// The address the session is counted under for `client`: none for the
/// front end's own address (exempt: all its sessions come from it).
fn counted_as(client: SocketAddr, front_end: SocketAddr) -> Option<IpAddr> {
    let ip = super::relay::canonical(client.ip());
    (ip != super::relay::canonical(front_end.ip())).then_some(ip)
}

/// Answers [`tern_smtp::server::Event::Xclient`] from the front end at
/// `front_end`: the session becomes the real client's (and greets
/// again), or, with the real client over its per-IP limit, ends with
/// `421 4.7.0`.
pub(super) fn answer(
    core: &Inbound,
    s: &mut Session<CountingPolicy>,
    l: &mut Loop,
    front_end: SocketAddr,
    x: Xclient,
) {
    let client = client_after(&x, l.client, front_end);
    let per_ip_max = l.settings.config.smtp.connections_per_ip_max;
    if l.slot
        .count_as(counted_as(client, front_end), per_ip_max)
        .is_err()
    {
        CoreMetrics::inc(&core.metrics.xclient_refused);
        CoreMetrics::inc(&core.metrics.connections_refused);
        tracing::debug!(front_end = %front_end, client = %client, "XCLIENT refused: the real client is at smtp.connections_per_ip_max");
        // A 421 also ends the session (nothing pipelined after XCLIENT
        // is read).
        return s.xclient_result(Err(super::listener::too_many_connections()));
    }
    let logged_out = x.login == Some(None);
    s.policy_mut().real_client(client, logged_out);
    l.client = client;
    CoreMetrics::inc(&core.metrics.xclient_accepted);
    let helo = x.helo.as_ref().and_then(Option::as_deref).unwrap_or("-");
    let login = x.login.as_ref().and_then(Option::as_deref).unwrap_or("-");
    tracing::debug!(front_end = %front_end, client = %client, helo, login, "XCLIENT: the session is the real client's");
    s.xclient_result(Ok(()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn parse(args: &str) -> Xclient {
        tern_smtp::xclient::parse(args).unwrap()
    }

    #[test]
    fn the_client_after_xclient() {
        let fe = sa("127.0.0.5:40000");
        let cur = sa("192.0.2.1:1000");
        let x = parse("ADDR=192.0.2.9 PORT=4242 HELO=real.example");
        assert_eq!(client_after(&x, fe, fe), sa("192.0.2.9:4242"));
        let x = parse("ADDR=IPV6:2001:db8::9");
        assert_eq!(client_after(&x, fe, fe), sa("[2001:db8::9]:0"));
        let x = parse("ADDR=192.0.2.9 PORT=[UNAVAILABLE]");
        assert_eq!(client_after(&x, fe, fe), sa("192.0.2.9:0"));
        let x = parse("ADDR=[UNAVAILABLE] PORT=4242 HELO=real.example");
        assert_eq!(client_after(&x, cur, fe), fe);
        let x = parse("HELO=real.example PORT=4242");
        assert_eq!(client_after(&x, cur, fe), cur);
        assert_eq!(client_after(&x, fe, fe), fe);
    }

    #[test]
    fn the_front_ends_own_address_is_not_counted() {
        let fe = sa("127.0.0.5:40000");
        assert_eq!(counted_as(fe, fe), None);
        assert_eq!(counted_as(sa("127.0.0.5:1"), fe), None);
        assert_eq!(
            counted_as(sa("[::ffff:127.0.0.5]:1"), fe),
            None,
            "the same address, IPv4-mapped"
        );
        assert_eq!(
            counted_as(sa("192.0.2.9:4242"), fe),
            Some("192.0.2.9".parse().unwrap())
        );
    }

    #[test]
    fn front_ends_are_the_listed_networks() {
        let rules = RelayRules {
            client_networks: vec![],
            recipient_domains: vec![],
            front_end_networks: vec![
                "127.0.0.5/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
        };
        for (ip, front_end) in [
            ("127.0.0.5", true),
            ("::ffff:127.0.0.5", true),
            ("10.9.8.7", true),
            ("127.0.0.1", false),
            ("::1", false),
        ] {
            assert_eq!(is_front_end(&rules, ip.parse().unwrap()), front_end, "{ip}");
        }
    }

    /// A policy that allows XCLIENT, for the protocol session alone.
    struct FrontEnd;
    impl tern_smtp::server::Policy for FrontEnd {
        fn allow_xclient(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn a_refusal_is_one_reply_and_the_end() {
        use tern_smtp::server::{Event, ServerConfig};
        let config = std::rc::Rc::new(ServerConfig {
            hostname: "mx.test".into(),
            message_bytes_max: 1 << 20,
            recipients_max: 100,
            errors_max: 10,
            junk_commands_max: 100,
            extra_ehlo: Vec::new(),
            shadow_ehlo: None,
            proxy: false,
        });
        let mut s = Session::new(config, FrontEnd);
        let greeting = s.transmit().len();
        s.transmitted(greeting);
        s.receive(b"EHLO fe.test\r\n");
        assert!(s.poll().is_none());
        // Pipelined after XCLIENT: never read.
        s.receive(b"XCLIENT ADDR=192.0.2.9\r\nMAIL FROM:<a@b.test>\r\n");
        assert!(matches!(s.poll(), Some(Event::Xclient(_))));
        s.xclient_result(Err(super::super::listener::too_many_connections()));
        assert!(matches!(s.poll(), Some(Event::Close)));
        assert!(s.poll().is_none());
        let out = String::from_utf8(s.transmit().to_vec()).unwrap();
        let last: Vec<&str> = out.lines().filter(|l| !l.starts_with("250")).collect();
        assert_eq!(
            last,
            ["421 4.7.0 Error: too many connections, try again later"],
            "{out}"
        );
    }
}
