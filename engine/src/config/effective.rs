//! The effective configuration as TOML (`tern check-config`): every key of
//! every section with `# default` on the lines that hold the default, or
//! only the keys that differ from it (`--diff`, as `postconf -n`). The
//! output is itself a config file that gives the same configuration.

use std::fmt::Write;

use serde::Serialize;

use super::keys::{keys_of, toml_key as key};
use super::{Config, FileConfig};

/// Which keys [`super::Checked::to_toml`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// Every key, defaults marked.
    All,
    /// Only the keys whose value is not the default.
    Changed,
}

/// A key without a default value: computed at start.
struct Computed<'a> {
    key: &'static str,
    value: &'a str,
    from: &'static str,
}

/// The TOML text. Errors only for a path that is not UTF-8 (given on the
/// command line: TOML has no way to write it).
pub(super) fn render(file: &FileConfig, config: &Config, shown: Shown) -> Result<String, String> {
    let mut out = String::new();
    out.push_str(match shown {
        Shown::All => "# The effective configuration of tern; `# default` marks default values.\n",
        Shown::Changed => "# The keys of tern's configuration that differ from the defaults.\n",
    });
    let machine = super::server::local_hostname();
    let hostname = Computed {
        key: "hostname",
        value: &machine,
        from: "the machine's hostname",
    };
    let node_id = Computed {
        key: "node_id",
        value: &config.cluster.node_id,
        from: "server.hostname",
    };
    section(&mut out, "server", &file.server, &[hostname], shown)?;
    section(&mut out, "smtp", &file.smtp, &[], shown)?;
    section(&mut out, "relay", &file.relay, &[], shown)?;
    section(&mut out, "storage", &file.storage, &[], shown)?;
    section(&mut out, "delivery", &file.delivery, &[], shown)?;
    if file.pools.is_empty() && shown == Shown::All {
        out.push_str("\n# [pools.NAME]: none (default)\n");
    }
    for (name, pool) in &file.pools {
        let header = format!("pools.{}", key(name));
        // A pool has no defaults: all of it is written.
        keys(
            &mut out,
            &header,
            &table(pool)?,
            None,
            keys_of::<super::pools::PoolSection>(),
            &[],
            shown,
        );
    }
    if !file.routes.is_empty() || shown == Shown::All {
        out.push_str("\n[routes]\n");
        if file.routes.is_empty() {
            out.push_str("# none (default)\n");
        }
        for (pattern, pool) in &file.routes {
            let _ = writeln!(
                out,
                "{} = {}",
                key(pattern),
                toml::Value::from(pool.as_str())
            );
        }
    }
    section(&mut out, "cluster", &file.cluster, &[node_id], shown)?;
    section(&mut out, "tls", &file.tls, &[], shown)?;
    section(&mut out, "auth", &file.auth, &[], shown)?;
    section(&mut out, "mta_sts", &file.mta_sts, &[], shown)?;
    section(&mut out, "pressure", &file.pressure, &[], shown)?;
    section(&mut out, "frontend", &file.frontend, &[], shown)?;
    Ok(out)
}

/// `value` as a TOML table.
fn table<T: Serialize>(value: &T) -> Result<toml::Table, String> {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(other) => Err(format!("a section serialized as {}", other.type_str())),
        Err(e) => Err(e.to_string()),
    }
}

/// `[name]` with its keys, compared with the section's `Default`.
fn section<T>(
    out: &mut String,
    name: &str,
    value: &T,
    computed: &[Computed],
    shown: Shown,
) -> Result<(), String>
where
    T: Serialize + Default + serde::de::DeserializeOwned,
{
    let defaults = table(&T::default())?;
    keys(
        out,
        name,
        &table(value)?,
        Some(&defaults),
        keys_of::<T>(),
        computed,
        shown,
    );
    Ok(())
}

/// Writes `[header]` and the keys (in declaration order); nothing when no
/// key is to be shown.
fn keys(
    out: &mut String,
    header: &str,
    values: &toml::Table,
    defaults: Option<&toml::Table>,
    names: &[&str],
    computed: &[Computed],
    shown: Shown,
) {
    let mut body = String::new();
    for &name in names {
        let default = defaults.and_then(|d| d.get(name));
        let computed = computed.iter().find(|c| c.key == name);
        // A computed default written out (as this output does) is still
        // the default.
        let value = values
            .get(name)
            .filter(|v| computed.is_none_or(|c| v.as_str() != Some(c.value)));
        let line = match (value, computed) {
            (Some(v), _) if default == Some(v) => Some(format!("{name} = {v}  # default")),
            (Some(v), _) => {
                let _ = writeln!(body, "{name} = {v}");
                None
            }
            (None, Some(c)) => Some(format!(
                "{name} = {}  # default ({})",
                toml::Value::from(c.value),
                c.from
            )),
            (None, None) => Some(format!("# {name}: unset (default)")),
        };
        if let (Some(line), Shown::All) = (line, shown) {
            let _ = writeln!(body, "{line}");
        }
    }
    if !body.is_empty() {
        let _ = write!(out, "\n[{header}]\n{body}");
    }
}
