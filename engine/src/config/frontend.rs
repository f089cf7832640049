//! `[frontend]`: the front-end role (`server.role = "front-end"`, SPEC 7):
//! a stateless proxy before the relay boxes. Its back ends are the
//! `[pools]` (with `srv` pools from DNS SRV), chosen by `[routes]` per
//! recipient domain; these keys say how it talks to them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// `[frontend]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FrontendSection {
    /// `xclient` or `none`.
    client_identity: String,
    connect_timeout: HumanDuration,
    command_timeout: HumanDuration,
    data_timeout: HumanDuration,
    srv_refresh: HumanDuration,
}

impl Default for FrontendSection {
    fn default() -> Self {
        FrontendSection {
            client_identity: "xclient".into(),
            connect_timeout: HumanDuration::from_secs(10),
            command_timeout: HumanDuration::from_secs(300),
            data_timeout: HumanDuration::from_secs(600),
            srv_refresh: HumanDuration::from_secs(60),
        }
    }
}

/// How the front end tells a back end who the client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdentity {
    /// XCLIENT (ADDR, PORT, HELO, PROTO): a back end that does not offer
    /// it is not used (it would take the front end for the client).
    Xclient,
    /// Nothing: the back end sees the front end's address.
    None,
}

/// The resolved `[frontend]`.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// `frontend.client_identity`.
    pub client_identity: ClientIdentity,
    /// TCP connect to a back end.
    pub connect_timeout: Duration,
    /// A back end's greeting and its reply to each command.
    pub command_timeout: Duration,
    /// A back end's reply at the end of the data (RFC 5321 4.5.3.2.6:
    /// 10 minutes).
    pub data_timeout: Duration,
    /// How often `srv` pools are looked up again (at most; the answer's
    /// TTL is honoured by the resolver's cache).
    pub srv_refresh: Duration,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendSection::default().resolve(&mut Vec::new())
    }
}

impl FrontendSection {
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> FrontendConfig {
        let client_identity = match self.client_identity.as_str() {
            "xclient" => ClientIdentity::Xclient,
            "none" => ClientIdentity::None,
            other => {
                problems.push(format!(
                    "frontend.client_identity must be \"xclient\" or \"none\", got {other:?}"
                ));
                ClientIdentity::Xclient
            }
        };
        super::check_timers(
            "frontend",
            &[
                ("connect_timeout", self.connect_timeout.0),
                ("command_timeout", self.command_timeout.0),
                ("data_timeout", self.data_timeout.0),
                ("srv_refresh", self.srv_refresh.0),
            ],
            problems,
        );
        FrontendConfig {
            client_identity,
            connect_timeout: self.connect_timeout.0,
            command_timeout: self.command_timeout.0,
            data_timeout: self.data_timeout.0,
            srv_refresh: self.srv_refresh.0,
        }
    }
}
