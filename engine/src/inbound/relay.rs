//! Relay control: who may send where. No open relay, ever, by default:
//! only clients in `relay.client_networks` (default loopback) may relay to
//! any domain; everyone else may only send to `relay.recipient_domains`
//! (and to the bare `<Postmaster>`, which RFC 5321 4.5.1 requires).
//! A client that authenticated (SMTP AUTH) may relay anywhere. A cluster
//! peer is known by the certificate it shows in TLS (pinned in
//! `cluster.peers[].fingerprint`), never by its address: only then may it
//! use XSHADOW and XQDISCARD. Behind a front end (XCLIENT, `xclient.rs`)
//! the decision is made again for the real client the front end names.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;

use tern_smtp::address::ForwardPath;
use tern_smtp::server::Policy;
use tern_smtp::{Reply, Status};

use crate::config::{Fingerprint, RelayRules};

/// Who the client turned out to be, as the session learns it (set by
/// the socket loop after a TLS handshake; read by the policy).
#[derive(Default)]
pub struct Trust {
    /// It showed a cluster peer's pinned certificate: it may use the
    /// shadow link (and relay: its copies are for any domain).
    pub peer: Cell<bool>,
}

impl Trust {
    /// After a handshake: is the certificate the client showed one of the
    /// pinned peers'?
    pub fn tls_peer(&self, shown: Option<Fingerprint>, pins: &[Fingerprint]) {
        self.peer.set(shown.is_some_and(|f| pins.contains(&f)));
    }
}

/// Per-session relay decision.
pub struct RelayPolicy {
    client_in_networks: bool,
    /// Authenticated with SMTP AUTH.
    authenticated: bool,
    trust: Rc<Trust>,
    rules: Rc<RelayRules>,
}

/// `ip` as the networks name it: an IPv4-mapped IPv6 address (a
/// dual-stack listener's IPv4 client) as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl RelayPolicy {
    /// Decides once per connection whether the client's address is
    /// trusted; `trust` says later whether it is a peer.
    pub fn new(rules: Rc<RelayRules>, client: IpAddr, trust: Rc<Trust>) -> RelayPolicy {
        let mut p = RelayPolicy {
            client_in_networks: false,
            authenticated: false,
            trust,
            rules,
        };
        p.set_client(client);
        p
    }

    /// The client is `client` from now on (XCLIENT named the real client
    /// behind a front end): decides again whether its address may relay.
    pub fn set_client(&mut self, client: IpAddr) {
        let client = canonical(client);
        self.client_in_networks = self
            .rules
            .client_networks
            .iter()
            .any(|n| n.contains(&client));
    }

    /// The client is no longer authenticated (XCLIENT `LOGIN=[UNAVAILABLE]`).
    pub fn forget_authentication(&mut self) {
        self.authenticated = false;
    }
}

impl Policy for RelayPolicy {
    fn allow_shadow(&mut self) -> bool {
        self.trust.peer.get()
    }

    fn authenticated(&mut self, _user: &str) {
        self.authenticated = true;
    }

    fn check_recipient(&mut self, to: &ForwardPath) -> Result<(), Reply> {
        if self.client_in_networks || self.authenticated || self.trust.peer.get() {
            return Ok(());
        }
        match to {
            ForwardPath::Postmaster => Ok(()),
            ForwardPath::Mailbox(m)
                if self.rules.recipient_domains.contains(&m.domain_lowercase()) =>
            {
                Ok(())
            }
            ForwardPath::Mailbox(m) => Err(Reply::new(
                554,
                Status(5, 7, 1),
                format!("<{m}>: Relay access denied"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::address::Mailbox;

    fn rcpt(domain: &str) -> ForwardPath {
        ForwardPath::Mailbox(Mailbox {
            local: "u".into(),
            domain: domain.into(),
        })
    }

    #[test]
    fn only_a_pinned_certificate_opens_the_shadow_link() {
        let rules = Rc::new(RelayRules {
            client_networks: vec!["127.0.0.0/8".parse().unwrap()],
            recipient_domains: vec![],
            front_end_networks: vec![],
        });
        let pins = [Fingerprint([1; 32]), Fingerprint([2; 32])];
        let trust = Rc::new(Trust::default());
        // Its address alone (loopback, in client_networks) is not enough.
        let mut p = RelayPolicy::new(rules.clone(), "127.0.0.1".parse().unwrap(), trust.clone());
        assert!(!p.allow_shadow());
        trust.tls_peer(Some(Fingerprint([9; 32])), &pins);
        assert!(!p.allow_shadow(), "a stranger's certificate");
        trust.tls_peer(None, &pins);
        assert!(!p.allow_shadow(), "no certificate");
        trust.tls_peer(Some(Fingerprint([2; 32])), &pins);
        assert!(p.allow_shadow());
        // A peer anywhere may relay its copies.
        let trust = Rc::new(Trust::default());
        let mut far = RelayPolicy::new(rules, "10.0.0.2".parse().unwrap(), trust.clone());
        assert!(far.check_recipient(&rcpt("anywhere.example")).is_err());
        trust.tls_peer(Some(Fingerprint([1; 32])), &pins);
        assert!(far.check_recipient(&rcpt("anywhere.example")).is_ok());
    }

    #[test]
    fn an_authenticated_client_may_relay() {
        let rules = Rc::new(RelayRules {
            client_networks: vec![],
            recipient_domains: vec![],
            front_end_networks: vec![],
        });
        let mut p = RelayPolicy::new(rules, "192.0.2.9".parse().unwrap(), Rc::default());
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_err());
        p.authenticated("alice");
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_ok());
        assert!(!p.allow_shadow(), "AUTH users are not peers");
    }

    #[test]
    fn the_real_client_behind_a_front_end_is_decided_again() {
        let rules = Rc::new(RelayRules {
            client_networks: vec!["127.0.0.0/8".parse().unwrap()],
            recipient_domains: vec![],
            front_end_networks: vec!["127.0.0.5/32".parse().unwrap()],
        });
        let mut p = RelayPolicy::new(rules, "127.0.0.5".parse().unwrap(), Rc::default());
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_ok());
        p.set_client("192.0.2.9".parse().unwrap());
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_err());
        p.set_client("::ffff:127.0.0.9".parse().unwrap());
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_ok());
        p.set_client("192.0.2.9".parse().unwrap());
        p.authenticated("alice");
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_ok());
        p.forget_authentication();
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_err());
    }

    #[test]
    fn loopback_relays_others_only_to_listed_domains() {
        let rules = Rc::new(RelayRules {
            client_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            recipient_domains: vec!["local.example".into()],
            front_end_networks: vec![],
        });
        let mut local =
            RelayPolicy::new(rules.clone(), "127.0.0.3".parse().unwrap(), Rc::default());
        assert!(local.check_recipient(&rcpt("anywhere.example")).is_ok());
        let mut mapped = RelayPolicy::new(
            rules.clone(),
            "::ffff:127.0.0.1".parse().unwrap(),
            Rc::default(),
        );
        assert!(mapped.check_recipient(&rcpt("anywhere.example")).is_ok());
        let mut remote = RelayPolicy::new(rules, "192.0.2.9".parse().unwrap(), Rc::default());
        let denied = remote
            .check_recipient(&rcpt("anywhere.example"))
            .unwrap_err();
        assert_eq!((denied.code, denied.status), (554, Some(Status(5, 7, 1))));
        assert!(remote.check_recipient(&rcpt("LOCAL.example")).is_ok());
        // U+212A KELVIN SIGN folds (IDNA) to the domain routing sees too
        // (`dispatch::domain_of`): "lo\u{212A}al" is "lokal", not listed.
        let kelvin = remote.check_recipient(&rcpt("lo\u{212A}al.example"));
        assert!(kelvin.is_err(), "lokal.example is not listed");
        assert_eq!(
            tern_smtp::address::fold_domain("LO\u{212A}AL.example"),
            "lokal.example"
        );
        assert!(remote.check_recipient(&ForwardPath::Postmaster).is_ok());
    }
}
