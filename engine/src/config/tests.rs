//! Tests of the whole configuration: defaults, overrides, problems, the
//! file check. The documentation against the defaults: `docs_tests.rs`.

use super::cluster::ShadowPreference;
use super::docs_tests::every_key;
use super::*;

#[test]
fn defaults() {
    let c = Config::from_toml("", &Overrides::default()).unwrap();
    assert_eq!(c.listen, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
    assert_eq!(c.smtp.message_size_max, 35 << 20);
    assert_eq!(c.smtp.inactivity_timeout, Duration::from_secs(300));
    assert_eq!(c.smtp.session_timeout, Duration::from_secs(600));
    assert_eq!(c.relay.client_networks.len(), 2);
    assert_eq!(c.admin_listen, Some("127.0.0.1:8025".parse().unwrap()));
    assert!(c.cores >= 1);
    assert!(!c.incoming_cpu);
}

#[test]
fn file_values_and_overrides() {
    let text = r#"
        [server]
        listen = "127.0.0.2:25"
        cores = 2
        admin_listen = "off"
        incoming_cpu = true
        [smtp]
        message_size_max = "10MiB"
        inactivity_timeout = "30s"
        [relay]
        client_networks = ["10.0.0.0/8", "192.0.2.7"]
        recipient_domains = ["Example.COM"]
        [storage]
        segment_size = "64MiB"
    "#;
    let o = Overrides {
        cores: Some(1),
        data_dir: Some("/x".into()),
        ..Default::default()
    };
    let c = Config::from_toml(text, &o).unwrap();
    assert_eq!(c.listen.port(), 25);
    assert_eq!(c.cores, 1);
    assert_eq!(c.admin_listen, None);
    assert!(c.incoming_cpu);
    assert_eq!(c.data_dir, PathBuf::from("/x"));
    assert_eq!(c.smtp.message_size_max, 10 << 20);
    assert_eq!(c.storage.segment_bytes_max, 64 << 20);
    assert_eq!(c.relay.recipient_domains, vec!["example.com".to_string()]);
    assert_eq!(c.relay.client_networks[1].to_string(), "192.0.2.7/32");
}

#[test]
fn pools_routes_and_delivery() {
    let text = r#"
        [server]
        relay_to = "127.0.0.1:2600"
        [delivery]
        retry_initial = "2s"
        retry_max = "10s"
        dns_servers = ["127.0.0.53:5353", "127.0.0.54"]
        [pools.main]
        hosts = [ { address = "127.0.0.2:25", priority = 10, weight = 3 }, { address = "127.0.0.3:25" } ]
        failover = "backup"
        [pools.backup]
        hosts = [ { address = "127.0.0.4:25" } ]
        [routes]
        "Example.com" = "main"
        "*.example.net" = "backup"
    "#;
    let c = Config::from_toml(text, &Overrides::default()).unwrap();
    assert_eq!(c.delivery.retry_initial, Duration::from_secs(2));
    assert_eq!(c.delivery.dns_servers[1].to_string(), "127.0.0.54:53");
    assert_eq!(c.pools["main"].hosts[0].weight, 3);
    assert_eq!(c.pools["main"].hosts[1].priority, 0);
    assert_eq!(c.pools["main"].failover.as_deref(), Some("backup"));
    assert_eq!(c.pools[SMARTHOST_POOL].hosts[0].addr.port(), 2600);
    assert_eq!(c.routes["example.com"], "main");
    let bad = r#"
        [delivery]
        retry_initial = "1h"
        retry_max = "1m"
        [pools.a]
        hosts = []
        failover = "nowhere"
        [pools.relay_to]
        hosts = [ { address = "127.0.0.1:25" } ]
        [routes]
        "x.example" = "missing"
        "bad domain" = "a"
    "#;
    let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 6, "{problems:#?}");
}

#[test]
fn strict_and_reports_every_problem() {
    assert!(Config::from_toml("[server]\nlisten_typo = \"x\"", &Overrides::default()).is_err());
    assert!(Config::from_toml("[nope]\n", &Overrides::default()).is_err());
    assert!(Config::from_toml("[server]\nhostname = \"bad name\"", &Overrides::default()).is_err());
    assert!(Config::from_toml("[server]\nhostname = \"\"", &Overrides::default()).is_err());
    // Many recipients: the record limit grows with them.
    let many = Config::from_toml("[smtp]\nrecipients_max = 100000", &Overrides::default()).unwrap();
    assert!(many.storage.record_bytes_max >= (35 << 20) + 100_000 * 258);
    let text = r#"
        [server]
        listen = "nonsense"
        relay_to = "no-port"
        [smtp]
        recipients_max = 5
        [relay]
        client_networks = ["300.1.1.1/8"]
    "#;
    let problems = Config::from_toml(text, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(Config::from_toml(
        "[smtp]\nmessage_size_max = \"5 parsecs\"",
        &Overrides::default()
    )
    .is_err());
    assert!(Config::from_toml(
        "[smtp]\ninactivity_timeout = \"soon\"",
        &Overrides::default()
    )
    .is_err());
}

#[test]
fn cluster_defaults_values_and_problems() {
    let c = Config::from_toml(
        "[server]\nhostname = \"MX1.example.net\"",
        &Overrides::default(),
    )
    .unwrap()
    .cluster;
    assert_eq!(c.node_id, "mx1.example.net");
    assert_eq!(c.site, "default");
    assert!(c.shadow_redundancy && !c.reject_on_shadow_failure);
    assert_eq!(c.shadow_preference, ShadowPreference::PreferRemote);
    assert_eq!(
        (c.max_retries_remote_site, c.max_retries_local_site),
        (4, 2)
    );
    assert_eq!(c.shadow_heartbeat_frequency, Duration::from_secs(120));
    assert_eq!(
        c.shadow_message_auto_discard_interval,
        Duration::from_secs(2 * 86400)
    );
    assert_eq!(c.shadow_resubmit_time_span, Duration::from_secs(3 * 3600));
    assert_eq!(c.shadow_timeout, Duration::from_secs(30));
    assert_eq!(c.duplicate_window, Duration::from_secs(600));
    assert!(c.peers.is_empty());
    let text = r#"
        [cluster]
        node_id = "A"
        site = "East"
        shadow_preference = "local_only"
        shadow_timeout = "2s"
        peers = [
          { node_id = "b", address = "127.0.0.3:2525", fingerprint = "sha256:abababababababababababababababababababababababababababababababab" },
          { node_id = "c", address = "localhost:2526", site = "east", fingerprint = "sha256:abababababababababababababababababababababababababababababababab" },
          { node_id = "w", address = "127.0.0.4:2525", site = "west", fingerprint = "sha256:abababababababababababababababababababababababababababababababab" },
        ]
    "#;
    let c = Config::from_toml(text, &Overrides::default())
        .unwrap()
        .cluster;
    assert_eq!((c.node_id.as_str(), c.site.as_str()), ("a", "east"));
    assert_eq!(c.shadow_timeout, Duration::from_secs(2));
    assert_eq!(c.peers[0].site, "default");
    assert_eq!(c.peers[1].name, "localhost:2526");
    assert_eq!(c.peers[1].addr.port(), 2526);
    assert_eq!(c.local_peers().count(), 1);
    assert!(Config::from_toml(
        "[cluster]\npeers = [ { node_id = \"b\", address = \"127.0.0.3:25\", port = 1 } ]",
        &Overrides::default()
    )
    .is_err());
    let bad = r#"
        [server]
        hostname = "mx1.example.net"
        [cluster]
        node_id = "has space"
        site = ""
        shadow_preference = "anywhere"
        max_retries_local_site = 101
        shadow_heartbeat_frequency = "10ms"
        duplicate_window = "0s"
        peers = [
          { node_id = "b", address = "no-port", fingerprint = "sha256:abababababababababababababababababababababababababababababababab" },
          { node_id = "B", address = "127.0.0.3:2525", fingerprint = "sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd" },
          { node_id = "c/d", address = "127.0.0.4:2525", site = "x y", fingerprint = "bad" },
        ]
    "#;
    let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 11, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("line 14: cluster.peers[2].fingerprint: \"bad\"")),
        "{problems:#?}"
    );
    // A peer without a fingerprint cannot be trusted on the shadow link.
    let problems = Config::from_toml(
        "[cluster]\npeers = [ { node_id = \"b\", address = \"127.0.0.3:25\" } ]",
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        problems[0].starts_with("line 2: cluster.peers[0].fingerprint is required"),
        "{problems:#?}"
    );
    // Own id among the peers; remote_only with one site.
    let bad = r#"
        [cluster]
        node_id = "a"
        shadow_preference = "remote_only"
        peers = [ { node_id = "A", address = "127.0.0.3:2525", fingerprint = "sha256:abababababababababababababababababababababababababababababababab" } ]
    "#;
    let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let long = format!("[server]\nhostname = \"{}.example\"", "x".repeat(60));
    let problems = Config::from_toml(&long, &Overrides::default()).unwrap_err();
    assert!(problems[0].starts_with("cluster.node_id"), "{problems:#?}");
}

#[test]
fn auth_defaults_values_and_problems() {
    let a = Config::from_toml("", &Overrides::default()).unwrap().auth;
    assert_eq!(a.users_file, None);
    assert!(!a.cleartext_on_loopback);
    assert_eq!(a.failures_max, 5);
    assert_eq!(a.failure_window, Duration::from_secs(600));
    assert_eq!(a.lockout, Duration::from_secs(900));
    assert_eq!(a.failure_delay, Duration::from_secs(1));
    let text = "[server]\ndata_dir = \"/var/tern\"\n[auth]\nusers_file = \"users\"\nfailure_delay = \"0s\"\n";
    let a = Config::check_toml(text, Some(Path::new("/etc/tern")), &Overrides::default())
        .unwrap()
        .config
        .auth;
    assert_eq!(
        a.users_file,
        Some(PathBuf::from("/etc/tern/users")),
        "relative to the config file, not to the data directory"
    );
    assert_eq!(a.failure_delay, Duration::ZERO);
    let a = Config::from_toml(
        "[auth]\nusers_file = \"/etc/tern/users\"",
        &Overrides::default(),
    )
    .unwrap()
    .auth;
    assert_eq!(a.users_file, Some(PathBuf::from("/etc/tern/users")));
    let bad = r#"
        [auth]
        users_file = ""
        failures_max = 0
        failure_window = "0s"
        failure_delay = "11s"
    "#;
    let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems.iter().all(|p| p.contains(": auth.")),
        "{problems:#?}"
    );
    assert!(Config::from_toml("[auth]\nusers = \"x\"", &Overrides::default()).is_err());
}

#[test]
fn every_mistake_is_reported_with_its_line_and_key() {
    let text = r#"[server]
hostnme = "mx.example.net"
cores = "many"
[smtp]
recipients_max = 5
inactivity_timeout = 30
[smpt]
x = 1
[delivery]
hostname = "mx.example.net"
retry_initial = "0s"
[cluster]
peers = [ { node_id = "b", adress = "127.0.0.2:25" } ]
"#;
    let problems = Config::from_toml(text, &Overrides::default()).unwrap_err();
    let expect = [
        "line 2: server.hostnme is an unknown key (did you mean `hostname`?)",
        "line 3: server.cores: invalid type: string \"many\", expected a whole number",
        "line 5: smtp.recipients_max must be 100..=100000 (RFC 5321 4.5.3.1.8 requires at least 100), got 5",
        "line 6: smtp.inactivity_timeout: invalid type: integer `30`, expected a duration such as \"30s\", \"5m\" or \"2d\"",
        "line 7: smpt is an unknown section (did you mean [smtp]?)",
        "line 10: delivery.hostname is an unknown key (it belongs in [server])",
        "line 11: delivery.retry_initial must be at least 100ms, got 0s",
        "line 13: cluster.peers[0].adress is an unknown key (did you mean `address`?)",
    ];
    assert_eq!(problems, expect, "in file order, nothing twice");
}

#[test]
fn a_syntax_error_is_reported_with_line_and_column() {
    let problems = Config::from_toml("[server]\nlisten = \"127.0.0.1:25\n", &Overrides::default())
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("line 2, column 23: TOML syntax: "),
        "{problems:?}"
    );
}

#[test]
fn list_entries_are_named_by_index_and_key() {
    let text = r#"
[pools.main]
hosts = [ { address = "127.0.0.1:25" }, { address = "127.0.0.2:25", weight = "heavy" } ]
[tls]
certificates = [ { cert_file = "a.pem" } ]
"#;
    let problems = Config::from_toml(text, &Overrides::default()).unwrap_err();
    assert_eq!(
        problems,
        [
            "line 3: pools.main.hosts[1].weight: invalid type: string \"heavy\", expected a whole number 0..=4294967295",
            "line 5: tls.certificates[0].key_file is required (missing)",
        ]
    );
}

/// The keys of `tern check-config --diff` output, as `section.key`.
fn keys_set(text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(text).unwrap();
    let mut keys = Vec::new();
    for (section, value) in &table {
        for (key, inner) in value.as_table().unwrap() {
            match (section.as_str(), inner) {
                ("pools", toml::Value::Table(pool)) => {
                    keys.extend(pool.keys().map(|k| format!("pools.{key}.{k}")))
                }
                _ => keys.push(format!("{section}.{key}")),
            }
        }
    }
    keys
}

#[test]
fn the_effective_toml_reads_back_as_the_same_config() {
    let text = r#"
[server]
listen = "127.0.0.2:2526"
hostname = "mx.example.net"
data_dir = "data"
[smtp]
message_size_max = "10MiB"
inactivity_timeout = "300s"
[delivery]
retry_initial = "1500ms"
[pools.main]
hosts = [ { address = "127.0.0.1:25", weight = 3 } ]
[routes]
"*.Example.com" = "main"
[tls]
certificates = [ { cert_file = "certs/a.pem", key_file = "/etc/tern/a.key" } ]
[pressure]
memory_available_high = "2.5%"
queued_bytes_high = "10GiB"
"#;
    let dir = Path::new("/etc/tern");
    let checked = Config::check_toml(text, Some(dir), &Overrides::default()).unwrap();
    let all = checked.to_toml(Shown::All).unwrap();
    // Written out with absolute paths, it reads the same from anywhere.
    let again =
        Config::check_toml(&all, Some(Path::new("/elsewhere")), &Overrides::default()).unwrap();
    assert_eq!(
        format!("{:?}", again.config),
        format!("{:?}", checked.config)
    );
    assert_eq!(again.to_toml(Shown::All).unwrap(), all, "a fixed point");
    assert!(
        all.contains("\nrecipients_max = 1000  # default\n"),
        "{all}"
    );
    assert!(
        all.contains("\ninactivity_timeout = \"5m\"  # default\n"),
        "300s is 5m"
    );
    assert!(all.contains("\n# relay_to: unset (default)\n"), "{all}");
    assert!(all.contains("\ndata_dir = \"/etc/tern/data\"\n"), "{all}");
    // Every key of every section is there.
    let written = keys_set(&all);
    for key in every_key() {
        let (section, name) = key.split_once('.').unwrap();
        if matches!(section, "pools" | "routes") {
            continue;
        }
        let unset = format!("# {name}: unset (default)");
        assert!(
            written.contains(&key) || sets_in_section(&all, section, &unset),
            "{key} missing from:\n{all}"
        );
    }
    let diff = checked.to_toml(Shown::Changed).unwrap();
    assert_eq!(
        keys_set(&diff),
        [
            "delivery.retry_initial",
            "pools.main.hosts",
            "pressure.memory_available_high",
            "pressure.queued_bytes_high",
            "routes.*.Example.com",
            "server.data_dir",
            "server.hostname",
            "server.listen",
            "smtp.message_size_max",
            "tls.certificates",
        ]
    );
    let again = Config::from_toml(&diff, &Overrides::default()).unwrap();
    assert_eq!(format!("{:?}", again), format!("{:?}", checked.config));
    // The defaults differ in nothing.
    let none = Config::check_toml("", None, &Overrides::default())
        .unwrap()
        .to_toml(Shown::Changed)
        .unwrap();
    assert_eq!(keys_set(&none), Vec::<String>::new(), "{none}");
}

/// Does `section`'s part of the effective TOML hold `line`?
fn sets_in_section(text: &str, section: &str, line: &str) -> bool {
    text.split("\n[")
        .find(|part| part.starts_with(&format!("{section}]")))
        .is_some_and(|part| part.lines().any(|l| l == line))
}

#[test]
fn paths_in_a_file_are_relative_to_it_and_flags_to_the_working_directory() {
    let text = r#"
[server]
data_dir = "data"
admin_token_file = "token"
[tls]
certificates = [ { cert_file = "a.pem", key_file = "/abs/a.key" } ]
ca_file = "ca.pem"
[auth]
users_file = "users"
"#;
    let dir = Path::new("/etc/tern");
    let c = Config::check_toml(text, Some(dir), &Overrides::default())
        .unwrap()
        .config;
    assert_eq!(c.data_dir, dir.join("data"));
    assert_eq!(c.admin_token_file, Some(dir.join("token")));
    assert_eq!(c.tls.certificates[0].cert_file, dir.join("a.pem"));
    assert_eq!(c.tls.certificates[0].key_file, PathBuf::from("/abs/a.key"));
    assert_eq!(c.tls.ca_file, Some(dir.join("ca.pem")));
    assert_eq!(c.auth.users_file, Some(dir.join("users")));
    let o = Overrides {
        data_dir: Some("here".into()),
        ..Default::default()
    };
    let c = Config::check_toml(text, Some(dir), &o).unwrap().config;
    assert_eq!(c.data_dir, PathBuf::from("here"), "--data-dir as given");
    // The default data directory is not in the file: the working one.
    let c = Config::check_toml("", Some(dir), &Overrides::default())
        .unwrap()
        .config;
    assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
}

#[test]
fn overridden_keys_are_not_blamed_on_the_file() {
    let o = Overrides {
        listen: Some("nonsense".into()),
        ..Default::default()
    };
    let problems = Config::from_toml("[server]\nlisten = \"127.0.0.1:25\"\n", &o).unwrap_err();
    assert_eq!(problems, ["server.listen: \"nonsense\" is not IP:PORT"]);
}

#[test]
fn storage_problems_name_the_keys_as_written() {
    let text =
        "[storage]\nsegment_size = \"1MiB\"\nzero_fill_ahead = 1000\npending_bytes_max = 0\n";
    let problems = Config::from_toml(text, &Overrides::default()).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].starts_with("line 2: storage.segment_size must hold one maximal record"),
        "{problems:#?}"
    );
    assert!(problems[0].ends_with(", got 1MiB"), "{problems:#?}");
    assert_eq!(
        problems[1],
        "line 3: storage.zero_fill_ahead must be a multiple of 4096, got 1000"
    );
    assert_eq!(
        problems[2],
        "line 4: storage.pending_bytes_max must be positive, got 0"
    );
    for internal in [
        "segment_bytes_max",
        "zero_fill_ahead_bytes",
        "record_bytes_max",
    ] {
        assert!(
            problems.iter().all(|p| !p.contains(internal)),
            "{problems:#?}"
        );
    }
}
