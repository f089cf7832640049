//! `[relay]`: who may relay, and to where.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[relay]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RelaySection {
    client_networks: Vec<String>,
    recipient_domains: Vec<String>,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            // Never an open relay: only this host's own clients.
            client_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            recipient_domains: Vec::new(),
        }
    }
}

/// Who may relay.
#[derive(Clone, Debug)]
pub struct RelayRules {
    /// Clients in these networks may relay anywhere.
    pub client_networks: Vec<IpNet>,
    /// Anyone may send to these domains (lower case).
    pub recipient_domains: Vec<String>,
}

impl RelaySection {
    /// Parses the networks (a bare address is a /32 or /128) and domains.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> RelayRules {
        let mut client_networks = Vec::new();
        for n in &self.client_networks {
            match n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(net) => client_networks.push(net),
                Err(_) => {
                    problems.push(format!("relay.client_networks: {n:?} is not an IP network"))
                }
            }
        }
        let mut recipient_domains = Vec::new();
        for d in &self.recipient_domains {
            if tern_smtp::address::domain_name(d) {
                recipient_domains.push(tern_smtp::address::fold_domain(d));
            } else {
                problems.push(format!("relay.recipient_domains: {d:?} is not a domain"));
            }
        }
        RelayRules {
            client_networks,
            recipient_domains,
        }
    }
}
