//! Relay control: who may send where. No open relay, ever, by default:
//! only clients in `relay.client_networks` (default loopback) may relay to
//! any domain; everyone else may only send to `relay.recipient_domains`
//! (and to the bare `<Postmaster>`, which RFC 5321 4.5.1 requires).

use std::net::IpAddr;
use std::rc::Rc;

use tern_smtp::address::ForwardPath;
use tern_smtp::server::Policy;
use tern_smtp::{Reply, Status};

use crate::config::RelayRules;

/// Per-session relay decision.
pub struct RelayPolicy {
    client_may_relay: bool,
    /// The client is a cluster peer: it may use the shadow link (and
    /// relay: its copies are for any domain).
    peer: bool,
    rules: Rc<RelayRules>,
}

impl RelayPolicy {
    /// Decides once per connection whether the client is trusted.
    pub fn new(rules: Rc<RelayRules>, client: IpAddr) -> RelayPolicy {
        RelayPolicy::with_peers(rules, client, &[])
    }

    /// As [`RelayPolicy::new`]; `peers` are the cluster peers' addresses.
    pub fn with_peers(rules: Rc<RelayRules>, client: IpAddr, peers: &[IpAddr]) -> RelayPolicy {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        // A peer by address; on loopback (several nodes on one host, where
        // the kernel picks 127.0.0.1 as the source whatever the peer
        // listens on) any local client counts when a peer is local.
        let peer = peers.contains(&client)
            || (client.is_loopback() && peers.iter().any(IpAddr::is_loopback));
        let client_may_relay = peer || rules.client_networks.iter().any(|n| n.contains(&client));
        RelayPolicy {
            client_may_relay,
            peer,
            rules,
        }
    }
}

impl Policy for RelayPolicy {
    fn allow_shadow(&mut self) -> bool {
        self.peer
    }

    fn check_recipient(&mut self, to: &ForwardPath) -> Result<(), Reply> {
        if self.client_may_relay {
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
    fn peers_may_use_the_shadow_link() {
        let rules = Rc::new(RelayRules {
            client_networks: vec![],
            recipient_domains: vec![],
        });
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut p = RelayPolicy::with_peers(rules.clone(), peer, &[peer]);
        assert!(p.allow_shadow());
        assert!(p.check_recipient(&rcpt("anywhere.example")).is_ok());
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(!RelayPolicy::with_peers(rules.clone(), other, &[peer]).allow_shadow());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let local_peer: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(RelayPolicy::with_peers(rules.clone(), lo, &[local_peer]).allow_shadow());
        assert!(!RelayPolicy::with_peers(rules, lo, &[peer]).allow_shadow());
    }

    #[test]
    fn loopback_relays_others_only_to_listed_domains() {
        let rules = Rc::new(RelayRules {
            client_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            recipient_domains: vec!["local.example".into()],
        });
        let mut local = RelayPolicy::new(rules.clone(), "127.0.0.3".parse().unwrap());
        assert!(local.check_recipient(&rcpt("anywhere.example")).is_ok());
        let mut mapped = RelayPolicy::new(rules.clone(), "::ffff:127.0.0.1".parse().unwrap());
        assert!(mapped.check_recipient(&rcpt("anywhere.example")).is_ok());
        let mut remote = RelayPolicy::new(rules, "192.0.2.9".parse().unwrap());
        let denied = remote
            .check_recipient(&rcpt("anywhere.example"))
            .unwrap_err();
        assert_eq!((denied.code, denied.status), (554, Some(Status(5, 7, 1))));
        assert!(remote.check_recipient(&rcpt("LOCAL.example")).is_ok());
        assert!(remote.check_recipient(&ForwardPath::Postmaster).is_ok());
    }
}
