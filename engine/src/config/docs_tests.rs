//! The documentation (README.md, tern.example.toml) against the config:
//! every key named, every default stated, the example valid.

use super::keys::keys_of;
use super::*;

#[test]
fn example_config_is_valid_and_states_the_defaults() {
    let text = include_str!("../../../tern.example.toml");
    let example = Config::from_toml(text, &Overrides::default()).unwrap();
    let defaults = Config::from_toml("", &Overrides::default()).unwrap();
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
}

/// Every key as README.md names it (`section.key`, `pools.NAME.key`,
/// `routes."PATTERN"`), from the section structs themselves.
pub(super) fn every_key() -> Vec<String> {
    let sections: [(&str, &[&str]); 13] = [
        ("server", keys_of::<server::ServerSection>()),
        ("smtp", keys_of::<smtp::SmtpSection>()),
        ("relay", keys_of::<relay::RelaySection>()),
        ("storage", keys_of::<storage::StorageSection>()),
        ("delivery", keys_of::<delivery::DeliverySection>()),
        ("pools.NAME", keys_of::<pools::PoolSection>()),
        ("routes", &["\"PATTERN\""]),
        ("cluster", keys_of::<cluster::ClusterSection>()),
        ("tls", keys_of::<tls::TlsSection>()),
        ("auth", keys_of::<auth::AuthSection>()),
        ("mta_sts", keys_of::<mta_sts::MtaStsSection>()),
        ("pressure", keys_of::<pressure::PressureSection>()),
        ("frontend", keys_of::<frontend::FrontendSection>()),
    ];
    let names: Vec<&str> = sections
        .iter()
        .map(|(s, _)| s.split('.').next().unwrap())
        .collect();
    assert_eq!(names, keys_of::<FileConfig>(), "a section is missing here");
    sections
        .iter()
        .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
        .collect()
}

/// Keys of the tables inside lists: a pool's hosts, the cluster's peers,
/// with the key whose documentation must name them.
fn nested_keys() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("pools.NAME.hosts", keys_of::<pools::PoolHostSection>()),
        ("cluster.peers", keys_of::<cluster::PeerSection>()),
        ("tls.certificates", keys_of::<tls::CertificateSection>()),
    ]
}

/// Does `text` set `key` (`key = `, not as the tail of a longer name)?
fn sets(text: &str, key: &str) -> bool {
    let pattern = format!("{key} = ");
    text.match_indices(&pattern).any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The rows of README's key table: (key, default cell).
fn readme_rows() -> Vec<(String, String)> {
    let readme = include_str!("../../../README.md");
    let table = readme
        .split("## Configuration keys")
        .nth(1)
        .expect("README has a Configuration keys section");
    table
        .lines()
        .skip_while(|l| !l.starts_with("| key |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            (key.to_string(), row.to_string())
        })
        .collect()
}

#[test]
fn readme_documents_every_key_and_its_default() {
    let keys = every_key();
    let rows = readme_rows();
    let documented: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !documented.contains(&k.as_str()))
        .collect();
    let unknown: Vec<&&str> = documented
        .iter()
        .filter(|k| !keys.iter().any(|c| c == *k))
        .collect();
    assert!(missing.is_empty(), "keys missing from README: {missing:?}");
    assert!(
        unknown.is_empty(),
        "README documents unknown keys: {unknown:?}"
    );
    for (parent, nested) in nested_keys() {
        let (_, row) = rows.iter().find(|(k, _)| k == parent).unwrap();
        for k in nested {
            assert!(sets(row, k), "README's {parent} row does not name {k}");
        }
    }
    let defaults = format!(
        "{:?}",
        Config::from_toml("", &Overrides::default()).unwrap()
    );
    for (key, row) in &rows {
        let cell = row.split(" | ").nth(1).unwrap();
        // Prose ("the machine's hostname", "unset") states no value; a
        // value naming another key (`server.hostname`) is that key's.
        let Some(value) = cell.strip_prefix('`').and_then(|c| c.split('`').next()) else {
            continue;
        };
        if keys.iter().any(|k| k == value) {
            continue;
        }
        let (section, name) = key.split_once('.').unwrap();
        let literal = format!("[{section}]\n{name} = {value}");
        let text = if toml::from_str::<toml::Table>(&literal).is_ok() {
            literal
        } else {
            format!("[{section}]\n{name} = {value:?}")
        };
        let resolved = Config::from_toml(&text, &Overrides::default())
            .unwrap_or_else(|p| panic!("README's default of {key}: {p:?}"));
        assert_eq!(
            format!("{resolved:?}"),
            defaults,
            "README's default of {key} ({value}) is not the default"
        );
    }
}

#[test]
fn example_config_names_every_key() {
    let text = include_str!("../../../tern.example.toml");
    // Sections by name, headers commented out or not ("# [pools.NAME]").
    let mut sections: BTreeMap<&str, String> = BTreeMap::new();
    let mut current = "";
    for line in text.lines() {
        let bare = line.trim_start_matches("# ");
        if let Some(header) = bare.strip_prefix('[') {
            current = header.split([']', '.']).next().unwrap();
        }
        let section = sections.entry(current).or_default();
        section.push_str(line);
        section.push('\n');
    }
    for key in every_key() {
        let (section, name) = key.split_once('.').unwrap();
        let name = name.trim_start_matches("NAME.");
        let body = sections.get(section).map_or("", String::as_str);
        assert!(
            body.contains(&format!("[{section}")),
            "tern.example.toml has no [{section}]"
        );
        if section != "routes" {
            assert!(sets(body, name), "tern.example.toml does not name {key}");
        }
    }
    for (parent, nested) in nested_keys() {
        // The inline tables of the list (`{ node_id = "mx2", ... }`).
        let section = parent.split('.').next().unwrap();
        let tables: String = sections[section]
            .lines()
            .filter(|l| l.contains('{'))
            .collect();
        for k in nested {
            assert!(
                sets(&tables, k),
                "tern.example.toml's {parent} do not name {k}"
            );
        }
    }
}
