//! `[relay]`: who may relay, and to where; which front ends may name the
//! real client (XCLIENT).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[relay]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RelaySection {
    client_networks: Vec<String>,
    recipient_domains: Vec<String>,
    front_end_networks: Vec<String>,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            // Never an open relay: only this host's own clients.
            client_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            recipient_domains: Vec::new(),
            // No front ends: nobody may name another client.
            front_end_networks: Vec::new(),
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
    /// Front ends in these networks may use XCLIENT (the real client's
    /// address, HELO name and login); their own connections are exempt
    /// from `smtp.connections_per_ip_max`, the real clients are not.
    pub front_end_networks: Vec<IpNet>,
}

/// Parses `relay.KEY`'s networks (a bare address is a /32 or /128).
fn networks(key: &str, given: &[String], problems: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for n in given {
        match n
            .parse::<IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(net) => out.push(net),
            Err(_) => problems.push(format!("relay.{key}: {n:?} is not an IP network")),
        }
    }
    out
}

impl RelaySection {
    /// Parses the networks and domains.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> RelayRules {
        let client_networks = networks("client_networks", &self.client_networks, problems);
        let mut recipient_domains = Vec::new();
        for d in &self.recipient_domains {
            if tern_smtp::address::domain_name(d) {
                recipient_domains.push(tern_smtp::address::fold_domain(d));
            } else {
                problems.push(format!("relay.recipient_domains: {d:?} is not a domain"));
            }
        }
        let front_end_networks = networks("front_end_networks", &self.front_end_networks, problems);
        RelayRules {
            client_networks,
            recipient_domains,
            front_end_networks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_end_networks_parse_like_client_networks() {
        let section = RelaySection {
            front_end_networks: vec!["10.1.0.0/16".into(), "192.0.2.7".into(), "nope".into()],
            ..RelaySection::default()
        };
        let mut problems = Vec::new();
        let rules = section.resolve(&mut problems);
        let nets: Vec<String> = rules
            .front_end_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.1.0.0/16", "192.0.2.7/32"]);
        assert_eq!(
            problems,
            ["relay.front_end_networks: \"nope\" is not an IP network"]
        );
        let mut none = Vec::new();
        assert!(RelaySection::default()
            .resolve(&mut none)
            .front_end_networks
            .is_empty());
        assert!(none.is_empty());
    }
}
