//! Values that are valid but probably not meant: reported beside the
//! configuration (`tern serve` logs them at WARN at start, `tern
//! check-config` prints them), never refused.

use std::time::Duration;

use super::file::Lines;
use super::{Config, FileConfig, HumanDuration};

/// Every warning about `config` (read from `file`), each starting with
/// its key and, when the file sets it, its line.
pub(super) fn check(file: &FileConfig, config: &Config, lines: &Lines) -> Vec<String> {
    let mut warnings = Vec::new();
    let zero = [
        (
            "server.shutdown_grace",
            config.shutdown_grace,
            "transactions in flight are cut off at shutdown",
        ),
        (
            "delivery.message_expiration_timeout",
            config.delivery.message_expiration_timeout,
            "a message not delivered at its first attempt bounces (no retries)",
        ),
        (
            "delivery.safety_net_hold_time",
            config.delivery.safety_net_hold_time,
            "handled messages are not kept in the Safety Net, so they cannot be resubmitted",
        ),
    ];
    for (key, value, why) in zero {
        if value == Duration::ZERO {
            warnings.push(format!("{key} = {}: {why}", HumanDuration(value)));
        }
    }
    for net in &config.relay.client_networks {
        if net.prefix_len() == 0 {
            warnings.push(format!(
                "relay.client_networks contains {net}: every client may relay to any \
                 domain (an open relay)"
            ));
        }
    }
    for (name, pool) in &file.pools {
        for (i, address) in pool.zero_weights() {
            warnings.push(format!(
                "pools.{name}.hosts[{i}].weight = 0 ({address}): taken as 1 (the smallest \
                 share); leave the host out to send it nothing"
            ));
        }
    }
    if !fully_qualified(&config.hostname) {
        let whence = match lines.has("server.hostname") {
            true => "",
            false => " (unset: the machine's hostname)",
        };
        warnings.push(format!(
            "server.hostname {:?}{whence} is not a fully qualified domain name; it is sent in \
             EHLO, Received: headers and DSNs, and receivers may refuse mail from it",
            config.hostname
        ));
    }
    let mut warnings: Vec<String> = warnings.into_iter().map(|w| lines.locate(w)).collect();
    warnings.sort_by_key(|w| super::file::line_number(w).unwrap_or(usize::MAX));
    warnings
}

/// Has `name` more than one label ("mx.example.com", not "localhost")?
fn fully_qualified(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.split('.').filter(|l| !l.is_empty()).count() >= 2
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};

    fn warnings(text: &str) -> Vec<String> {
        Config::check_toml(text, None, &Overrides::default())
            .unwrap()
            .warnings
    }

    #[test]
    fn a_plain_config_has_no_warnings() {
        assert_eq!(
            warnings("[server]\nhostname = \"mx.example.net\""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn suspicious_values_are_warned_with_their_line() {
        let text = r#"
[server]
hostname = "mx"
shutdown_grace = "0s"
[delivery]
message_expiration_timeout = "0s"
safety_net_hold_time = "0s"
[relay]
client_networks = ["10.0.0.0/8", "0.0.0.0/0", "::/0"]
[pools.main]
hosts = [ { address = "127.0.0.1:25" }, { address = "127.0.0.2:25", weight = 0 } ]
"#;
        let w = warnings(text);
        assert_eq!(w.len(), 7, "{w:#?}");
        let expect = [
            "line 3: server.hostname \"mx\" is not a fully qualified domain name",
            "line 4: server.shutdown_grace = 0s: ",
            "line 6: delivery.message_expiration_timeout = 0s: ",
            "line 7: delivery.safety_net_hold_time = 0s: ",
            "line 9: relay.client_networks contains 0.0.0.0/0: ",
            "line 9: relay.client_networks contains ::/0: ",
            "line 11: pools.main.hosts[1].weight = 0 (127.0.0.2:25): ",
        ];
        for e in expect {
            assert!(w.iter().any(|w| w.starts_with(e)), "no {e:?} in {w:#?}");
        }
    }

    #[test]
    fn fully_qualified_names() {
        assert!(super::fully_qualified("mx.example.net"));
        assert!(super::fully_qualified("mx.example.net."));
        assert!(!super::fully_qualified("localhost"));
        assert!(!super::fully_qualified("mx."));
    }
}
