//! `[cluster]`: the HA boundary (SPEC sections 2-3). This node's name and
//! site, its peers, the shadow settings, and the choice of shadow peers for
//! one message. `crate::cluster` re-exports these types; the database id
//! lives there.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{resolve_host, HumanDuration};

/// Longest node id or site label. Ids travel in SMTP parameters and log
/// fields; 64 keeps them well inside a line (RFC 5321 4.5.3.1.5).
pub const TOKEN_BYTES_MAX: usize = 64;

/// Most shadow tries per site class per message: each try may wait up to
/// `shadow_timeout` while the sender waits for its reply.
pub const RETRIES_MAX: u32 = 100;

/// Which peers may hold a message's shadow (SPEC section 2, step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowPreference {
    /// Peers of other sites first, then peers of this node's site.
    PreferRemote,
    /// Only peers of other sites.
    RemoteOnly,
    /// Only peers of this node's site.
    LocalOnly,
}

impl ShadowPreference {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowPreference::PreferRemote => "prefer_remote",
            ShadowPreference::RemoteOnly => "remote_only",
            ShadowPreference::LocalOnly => "local_only",
        }
    }
}

impl FromStr for ShadowPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prefer_remote" => Ok(ShadowPreference::PreferRemote),
            "remote_only" => Ok(ShadowPreference::RemoteOnly),
            "local_only" => Ok(ShadowPreference::LocalOnly),
            _ => Err(format!(
                "{s:?} is not \"prefer_remote\", \"remote_only\" or \"local_only\""
            )),
        }
    }
}

/// Another node of the HA boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node id (lower case), unique in the boundary.
    pub node_id: String,
    /// Its SMTP address, resolved at start.
    pub addr: SocketAddr,
    /// The address as written (HOST:PORT), for logs.
    pub name: String,
    /// Its site label (lower case).
    pub site: String,
    /// The SHA-256 fingerprint of its certificate: the shadow link runs
    /// over TLS, and only a peer presenting this certificate may send or
    /// ask for shadow copies.
    pub fingerprint: super::tls::Fingerprint,
}

/// The resolved `[cluster]` section.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's unique name in the boundary (lower case; default: the
    /// server hostname).
    pub node_id: String,
    /// This node's site label (lower case).
    pub site: String,
    /// Make a shadow copy before answering 250 (SPEC section 2, step 7).
    pub shadow_redundancy: bool,
    /// Which peers may hold shadows.
    pub shadow_preference: ShadowPreference,
    /// Shadow tries among other sites' peers per message.
    pub max_retries_remote_site: u32,
    /// Shadow tries among this site's peers per message.
    pub max_retries_local_site: u32,
    /// No shadow could be made: `true` answers 451 4.4.0 and keeps
    /// nothing; `false` accepts without redundancy.
    pub reject_on_shadow_failure: bool,
    /// A shadow asks its primaries for discard notifications at least this
    /// often.
    pub shadow_heartbeat_frequency: Duration,
    /// Discard notifications nobody fetched expire after this.
    pub shadow_message_auto_discard_interval: Duration,
    /// A primary unreachable this long is taken over by its shadows.
    pub shadow_resubmit_time_span: Duration,
    /// Longest wait for a shadow's 250 before the next peer is tried.
    pub shadow_timeout: Duration,
    /// A resent message (same Message-ID and envelope digest) within this
    /// window is accepted once.
    pub duplicate_window: Duration,
    /// The other nodes of the boundary, in config order.
    pub peers: Vec<Peer>,
}

impl ClusterConfig {
    /// Peers at a site other than this node's.
    pub fn remote_peers(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.peers.iter().filter(move |p| p.site != self.site)
    }

    /// Peers at this node's site.
    pub fn local_peers(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.peers.iter().filter(move |p| p.site == self.site)
    }

    /// The peers to try, in order, for one message's shadow, by
    /// `shadow_preference`: `prefer_remote` gives up to
    /// `max_retries_remote_site` remote-site peers, then up to
    /// `max_retries_local_site` local-site peers (with a single site, local
    /// ones only); `remote_only` and `local_only` give one class. Each peer
    /// appears at most once (one that just failed is not retried for the
    /// same message). `start` rotates each class (round robin: pass a
    /// counter that grows per message). Ignores `shadow_redundancy`, which
    /// the caller checks first.
    pub fn shadow_order(&self, start: usize) -> Vec<&Peer> {
        let (remote_tries, local_tries) = match self.shadow_preference {
            ShadowPreference::PreferRemote => {
                (self.max_retries_remote_site, self.max_retries_local_site)
            }
            ShadowPreference::RemoteOnly => (self.max_retries_remote_site, 0),
            ShadowPreference::LocalOnly => (0, self.max_retries_local_site),
        };
        let mut order = rotated(self.remote_peers().collect(), start, remote_tries);
        order.extend(rotated(self.local_peers().collect(), start, local_tries));
        order
    }
}

/// Up to `tries` of `peers`, starting at `start` (modulo their count).
fn rotated(peers: Vec<&Peer>, start: usize, tries: u32) -> Vec<&Peer> {
    let n = peers.len();
    if n == 0 {
        return Vec::new();
    }
    let first = start % n;
    (0..n.min(tries as usize))
        .map(|i| peers[(first + i) % n])
        .collect()
}

/// Is `s` a valid node id or site label: 1..=64 of `[A-Za-z0-9._-]`?
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= TOKEN_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[cluster]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ClusterSection {
    /// `None` or "": `server.hostname`.
    node_id: Option<String>,
    site: String,
    shadow_redundancy: bool,
    /// A [`ShadowPreference`] spelling.
    shadow_preference: String,
    max_retries_remote_site: u32,
    max_retries_local_site: u32,
    reject_on_shadow_failure: bool,
    shadow_heartbeat_frequency: HumanDuration,
    shadow_message_auto_discard_interval: HumanDuration,
    shadow_resubmit_time_span: HumanDuration,
    shadow_timeout: HumanDuration,
    duplicate_window: HumanDuration,
    peers: Vec<PeerSection>,
}

/// One entry of `cluster.peers` (`node_id` and `address` are required).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerSection {
    node_id: String,
    address: String,
    #[serde(default = "default_site")]
    site: String,
    fingerprint: Option<String>,
}

/// The site of this node and of each peer, unless set.
fn default_site() -> String {
    "default".into()
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            node_id: None,
            site: default_site(),
            shadow_redundancy: true,
            shadow_preference: ShadowPreference::PreferRemote.as_str().into(),
            max_retries_remote_site: 4,
            max_retries_local_site: 2,
            reject_on_shadow_failure: false,
            shadow_heartbeat_frequency: HumanDuration::from_secs(120),
            shadow_message_auto_discard_interval: HumanDuration::from_secs(2 * 86_400),
            shadow_resubmit_time_span: HumanDuration::from_secs(3 * 3600),
            shadow_timeout: HumanDuration::from_secs(30),
            duplicate_window: HumanDuration::from_secs(600),
            peers: Vec::new(),
        }
    }
}

impl ClusterSection {
    /// The cluster settings; `hostname` is the default node id.
    pub(super) fn resolve(&self, hostname: &str, problems: &mut Vec<String>) -> ClusterConfig {
        let node_id = match self.node_id.as_deref() {
            None | Some("") => hostname,
            Some(id) => id,
        };
        let node_id = cluster_token(
            "cluster.node_id (default: server.hostname)",
            node_id,
            problems,
        );
        let site = cluster_token("cluster.site", &self.site, problems);
        let shadow_preference = self.shadow_preference.parse().unwrap_or_else(|e| {
            problems.push(format!("cluster.shadow_preference: {e}"));
            // Stands in (the config is rejected).
            ShadowPreference::PreferRemote
        });
        let peers = resolve_peers(&self.peers, &node_id, problems);
        let cluster = ClusterConfig {
            node_id,
            site,
            shadow_redundancy: self.shadow_redundancy,
            shadow_preference,
            max_retries_remote_site: self.max_retries_remote_site,
            max_retries_local_site: self.max_retries_local_site,
            reject_on_shadow_failure: self.reject_on_shadow_failure,
            shadow_heartbeat_frequency: self.shadow_heartbeat_frequency.0,
            shadow_message_auto_discard_interval: self.shadow_message_auto_discard_interval.0,
            shadow_resubmit_time_span: self.shadow_resubmit_time_span.0,
            shadow_timeout: self.shadow_timeout.0,
            duplicate_window: self.duplicate_window.0,
            peers,
        };
        check_cluster(&cluster, problems);
        cluster
    }
}

/// Node ids and sites are compared in lower case.
fn cluster_token(key: &str, s: &str, problems: &mut Vec<String>) -> String {
    if !is_token(s) {
        problems.push(format!(
            "{key}: {s:?} must be 1..=64 of letters, digits, '.', '_', '-'"
        ));
    }
    s.to_ascii_lowercase()
}

fn resolve_peers(list: &[PeerSection], node_id: &str, problems: &mut Vec<String>) -> Vec<Peer> {
    let mut seen = std::collections::BTreeSet::from([node_id.to_string()]);
    let mut peers = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        let peer_id = cluster_token(&format!("{key}.node_id"), &p.node_id, problems);
        if !seen.insert(peer_id.clone()) {
            problems.push(format!(
                "{key}.node_id: {peer_id:?} is not unique (nor may it be this node's)"
            ));
        }
        let site = cluster_token(&format!("{key}.site"), &p.site, problems);
        let fingerprint = match p.fingerprint.as_deref().map(str::parse) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                problems.push(format!("{key}.fingerprint: {e}"));
                super::tls::Fingerprint([0; 32])
            }
            None => {
                problems.push(format!(
                    "{key}.fingerprint is required: the SHA-256 fingerprint of the \
                     certificate of node {peer_id:?} (run `tern tls fingerprint` there)"
                ));
                super::tls::Fingerprint([0; 32])
            }
        };
        match resolve_host(&p.address) {
            Ok(addr) => peers.push(Peer {
                node_id: peer_id,
                addr,
                name: p.address.clone(),
                site,
                fingerprint,
            }),
            Err(e) => problems.push(format!("{key}.address: {e}")),
        }
    }
    peers
}

fn check_cluster(c: &ClusterConfig, problems: &mut Vec<String>) {
    let retries = [
        ("max_retries_remote_site", c.max_retries_remote_site),
        ("max_retries_local_site", c.max_retries_local_site),
    ];
    for (key, n) in retries {
        if n > RETRIES_MAX {
            problems.push(format!("cluster.{key} must be 0..={RETRIES_MAX}, got {n}"));
        }
    }
    super::check_timers(
        "cluster",
        &[
            ("shadow_heartbeat_frequency", c.shadow_heartbeat_frequency),
            (
                "shadow_message_auto_discard_interval",
                c.shadow_message_auto_discard_interval,
            ),
            ("shadow_resubmit_time_span", c.shadow_resubmit_time_span),
            ("shadow_timeout", c.shadow_timeout),
            ("duplicate_window", c.duplicate_window),
        ],
        problems,
    );
    // Peers listed, but the preference and tries leave none to try: every
    // shadow would fail.
    if c.shadow_redundancy && !c.peers.is_empty() && c.shadow_order(0).is_empty() {
        problems.push(format!(
            "cluster: shadow_preference = {:?} with max_retries_remote_site = {} and \
             max_retries_local_site = {} leaves no peer to try (sites: this node {:?}, peers {:?})",
            c.shadow_preference.as_str(),
            c.max_retries_remote_site,
            c.max_retries_local_site,
            c.site,
            c.peers.iter().map(|p| p.site.as_str()).collect::<Vec<_>>(),
        ));
    }
}
