//! Reading the file as written: TOML syntax, unknown keys (with a "did
//! you mean"), the type of every key, each problem with its line; then
//! relative paths taken relative to the file.
//!
//! A syntax error stops the reading (nothing after it can be trusted).
//! Anything else is reported and left out: an unknown key is dropped, a
//! key whose value has the wrong type keeps its default, so the remaining
//! keys are still read and checked, and one run reports every mistake.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::keys::{closest, keys_of, toml_key};
use super::FileConfig;
use super::{
    auth, cluster, delivery, frontend, mta_sts, pools, pressure, relay, server, smtp, storage, tls,
};

/// A section of the file: a struct whose `Default` holds every default.
pub(super) trait Section: DeserializeOwned + Default {
    /// Its keys that hold lists of tables.
    const LISTS: &'static [List] = &[];
}

/// A key holding a list of tables (`cluster.peers`).
pub(super) struct List {
    /// The key.
    key: &'static str,
    /// The keys of one entry.
    keys: KeysOf,
    /// Reads one entry.
    check: fn(toml::Value) -> Result<(), toml::de::Error>,
}

impl List {
    const fn of<T: DeserializeOwned>(key: &'static str) -> List {
        List {
            key,
            keys: keys_of::<T>,
            check: |v| v.try_into::<T>().map(drop),
        }
    }
}

impl Section for server::ServerSection {}
impl Section for smtp::SmtpSection {}
impl Section for relay::RelaySection {}
impl Section for storage::StorageSection {}
impl Section for delivery::DeliverySection {}
impl Section for pools::PoolSection {
    const LISTS: &'static [List] = &[List::of::<pools::PoolHostSection>("hosts")];
}
impl Section for cluster::ClusterSection {
    const LISTS: &'static [List] = &[List::of::<cluster::PeerSection>("peers")];
}
impl Section for tls::TlsSection {
    const LISTS: &'static [List] = &[List::of::<tls::CertificateSection>("certificates")];
}
impl Section for auth::AuthSection {}
impl Section for mta_sts::MtaStsSection {}
impl Section for pressure::PressureSection {}
impl Section for frontend::FrontendSection {}

/// The keys of a section.
type KeysOf = fn() -> &'static [&'static str];

/// The sections of plain keys, for "it belongs in [server]".
const SECTIONS: [(&str, KeysOf); 11] = [
    ("server", keys_of::<server::ServerSection>),
    ("smtp", keys_of::<smtp::SmtpSection>),
    ("relay", keys_of::<relay::RelaySection>),
    ("storage", keys_of::<storage::StorageSection>),
    ("delivery", keys_of::<delivery::DeliverySection>),
    ("cluster", keys_of::<cluster::ClusterSection>),
    ("tls", keys_of::<tls::TlsSection>),
    ("auth", keys_of::<auth::AuthSection>),
    ("mta_sts", keys_of::<mta_sts::MtaStsSection>),
    ("pressure", keys_of::<pressure::PressureSection>),
    ("frontend", keys_of::<frontend::FrontendSection>),
];

/// The line of every key in the file, by path as problems name it
/// (`smtp.message_size_max`, `cluster.peers[1].address`, `routes."*"`).
#[derive(Debug, Default)]
pub(super) struct Lines(BTreeMap<String, usize>);

impl Lines {
    /// Walks a parsed document.
    fn of_document(doc: &toml_edit::ImDocument<&str>) -> Lines {
        let text = doc.raw();
        let newlines: Vec<usize> = memchr::memchr_iter(b'\n', text.as_bytes()).collect();
        let mut lines = Lines::default();
        let mut walk = Walk {
            newlines: &newlines,
            lines: &mut lines,
        };
        walk.table(doc.as_table(), "");
        lines
    }

    /// Is `path` written in the file (and not overridden)?
    pub(super) fn has(&self, path: &str) -> bool {
        self.0.get(path).is_some_and(|&line| line != OVERRIDDEN)
    }

    /// Forgets `path`'s line: its value came from the command line.
    pub(super) fn forget(&mut self, path: &str) {
        self.0.insert(path.to_string(), OVERRIDDEN);
    }

    /// `problem`, which starts with the key it is about, prefixed with
    /// that key's line (or the line of the nearest enclosing table).
    pub(super) fn locate(&self, problem: String) -> String {
        match self.line_of(&problem) {
            Some(line) => format!("line {line}: {problem}"),
            None => problem,
        }
    }

    /// The line of the key `problem` starts with.
    pub(super) fn line_of(&self, problem: &str) -> Option<usize> {
        let mut path = leading_key(problem);
        loop {
            if let Some(&line) = self.0.get(path) {
                return (line != OVERRIDDEN).then_some(line);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

/// The "line" of a key set on the command line (lines count from 1).
const OVERRIDDEN: usize = 0;

/// The line a located problem names (`line 3: ...`).
pub(super) fn line_number(problem: &str) -> Option<usize> {
    let rest = problem.strip_prefix("line ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The key a problem starts with: up to the first space, colon or comma
/// outside quotes.
fn leading_key(problem: &str) -> &str {
    let mut quoted = false;
    for (i, c) in problem.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | ':' | ',' if !quoted => return &problem[..i],
            _ => {}
        }
    }
    problem
}

/// `key` as part of a path: bare, or quoted when it is not a bare key.
fn path_of(prefix: &str, key: &str) -> String {
    let key = toml_key(key);
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Records the line of every key of a document.
struct Walk<'a> {
    newlines: &'a [usize],
    lines: &'a mut Lines,
}

impl Walk<'_> {
    fn record(&mut self, path: &str, span: Option<std::ops::Range<usize>>) {
        if let Some(span) = span {
            let line = self.newlines.partition_point(|&n| n < span.start) + 1;
            self.lines.0.entry(path.to_string()).or_insert(line);
        }
    }

    fn table(&mut self, t: &dyn toml_edit::TableLike, prefix: &str) {
        for (key, item) in t.iter() {
            let path = path_of(prefix, key);
            let key_span = t.key(key).and_then(toml_edit::Key::span);
            self.record(&path, key_span.or_else(|| item.span()));
            match item {
                toml_edit::Item::Table(inner) => self.table(inner, &path),
                toml_edit::Item::ArrayOfTables(list) => {
                    for (i, inner) in list.iter().enumerate() {
                        let entry = format!("{path}[{i}]");
                        self.record(&entry, inner.span());
                        self.table(inner, &entry);
                    }
                }
                toml_edit::Item::Value(v) => self.value(v, &path),
                toml_edit::Item::None => {}
            }
        }
    }

    fn value(&mut self, v: &toml_edit::Value, path: &str) {
        match v {
            toml_edit::Value::InlineTable(t) => self.table(t, path),
            toml_edit::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let entry = format!("{path}[{i}]");
                    self.record(&entry, v.span());
                    self.value(v, &entry);
                }
            }
            _ => {}
        }
    }
}

/// The file read, and where each key is.
pub(super) struct Parsed {
    pub(super) file: FileConfig,
    pub(super) lines: Lines,
    /// Keys whose value did not read (they keep their default): what the
    /// checks of values would say of that default is beside the point.
    pub(super) dropped: Vec<String>,
}

impl Parsed {
    /// Is `problem` about a key whose value did not read?
    pub(super) fn about_dropped(&self, problem: &str) -> bool {
        let key = leading_key(problem);
        self.dropped.iter().any(|d| {
            key.strip_prefix(d.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Reads `text`; relative paths are taken relative to `dir` when given.
/// Appends every problem; `None` after a syntax error.
pub(super) fn parse(text: &str, dir: Option<&Path>, problems: &mut Vec<String>) -> Option<Parsed> {
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            problems.push(syntax_error(text, &e));
            return None;
        }
    };
    let lines = Lines::of_document(&doc);
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("TOML syntax: {}", e.message()));
            return None;
        }
    };
    let mut reader = Reader {
        lines: &lines,
        problems,
        suggested: Vec::new(),
        dropped: Vec::new(),
    };
    reader.unknown_sections(&mut table);
    let mut take = |name: &str| table.remove(name);
    let mut file = FileConfig {
        server: reader.section("server", take("server")),
        smtp: reader.section("smtp", take("smtp")),
        relay: reader.section("relay", take("relay")),
        storage: reader.section("storage", take("storage")),
        delivery: reader.section("delivery", take("delivery")),
        pools: reader.pools(take("pools")),
        routes: reader.routes(take("routes")),
        cluster: reader.section("cluster", take("cluster")),
        tls: reader.section("tls", take("tls")),
        auth: reader.section("auth", take("auth")),
        mta_sts: reader.section("mta_sts", take("mta_sts")),
        pressure: reader.section("pressure", take("pressure")),
        frontend: reader.section("frontend", take("frontend")),
    };
    let dropped = reader.dropped;
    if let Some(dir) = dir {
        file.server.rebase(dir, lines.has("server.data_dir"));
        file.tls.rebase(dir);
        file.auth.rebase(dir);
    }
    Some(Parsed {
        file,
        lines,
        dropped,
    })
}

/// "line L, column C: what", from the parser's error.
fn syntax_error(text: &str, e: &toml_edit::TomlError) -> String {
    let what = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return format!("TOML syntax: {what}");
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: TOML syntax: {what}")
}

/// Reads the sections of a parsed file, appending problems.
struct Reader<'a> {
    lines: &'a Lines,
    problems: &'a mut Vec<String>,
    /// The keys suggested for unknown ones: their absence is not worth a
    /// second problem.
    suggested: Vec<String>,
    /// See [`Parsed::dropped`].
    dropped: Vec<String>,
}

impl Reader<'_> {
    fn problem(&mut self, text: String) {
        self.problems.push(self.lines.locate(text));
    }

    /// Top-level names that are no section.
    fn unknown_sections(&mut self, table: &mut toml::Table) {
        let known = keys_of::<FileConfig>();
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for name in unknown {
            let value = table.remove(&name).expect("listed");
            let hint = if let Some(section) = section_of(&name).filter(|_| !value.is_table()) {
                format!(" (it belongs in [{section}])")
            } else if let Some(c) = closest(&name, known) {
                format!(" (did you mean [{c}]?)")
            } else {
                format!(" (sections are {})", known.join(", "))
            };
            let what = if value.is_table() { "section" } else { "key" };
            self.problem(format!("{} is an unknown {what}{hint}", path_of("", &name)));
        }
    }

    /// Drops (and reports) the keys of `table` that are not `known`.
    fn unknown_keys(&mut self, path: &str, table: &mut toml::Table, known: &[&str], hint: bool) {
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            table.remove(&key);
            let full = path_of(path, &key);
            let hint = match closest(&key, known) {
                Some(c) => {
                    self.suggested.push(path_of(path, c));
                    format!(" (did you mean `{c}`?)")
                }
                None => match section_of(&key).filter(|_| hint) {
                    Some(section) => format!(" (it belongs in [{section}])"),
                    None => String::new(),
                },
            };
            self.problem(format!("{full} is an unknown key{hint}"));
        }
    }

    /// Reads `[path]` as `T`; each bad key is reported and keeps its
    /// default.
    fn section<T: Section>(&mut self, path: &str, value: Option<toml::Value>) -> T {
        let Some(value) = value else {
            return T::default();
        };
        let toml::Value::Table(mut table) = value else {
            self.problem(format!(
                "{path} must be a table ([{path}]), got {}",
                value.type_str()
            ));
            return T::default();
        };
        self.unknown_keys(path, &mut table, keys_of::<T>(), T::LISTS.is_empty());
        for list in T::LISTS {
            if let Some(toml::Value::Array(entries)) = table.get_mut(list.key) {
                for (i, entry) in entries.iter_mut().enumerate() {
                    if let toml::Value::Table(t) = entry {
                        let entry_path = format!("{}[{i}]", path_of(path, list.key));
                        self.unknown_keys(&entry_path, t, (list.keys)(), false);
                    }
                }
            }
        }
        // Every key alone (the others default), so one bad value does not
        // hide another.
        let keys: Vec<String> = table.keys().cloned().collect();
        for key in keys {
            let one = toml::Table::from_iter([(key.clone(), table[&key].clone())]);
            if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                let value = table.remove(&key).expect("listed");
                self.bad_value(
                    &path_of(path, &key),
                    T::LISTS.iter().find(|l| l.key == key),
                    &value,
                    &e,
                );
            }
        }
        toml::Value::Table(table).try_into().unwrap_or_else(|e| {
            self.problem(format!("{path}: {}", explain(e.message())));
            self.dropped.push(path.to_string());
            T::default()
        })
    }

    /// Reports the value of `path` that does not read; for a list of
    /// tables, each entry that does not, by its index and key.
    fn bad_value(
        &mut self,
        path: &str,
        list: Option<&List>,
        value: &toml::Value,
        e: &toml::de::Error,
    ) {
        self.dropped.push(path.to_string());
        if let (Some(list), toml::Value::Array(entries)) = (list, value) {
            let mut found = false;
            for (i, entry) in entries.iter().enumerate() {
                found |= self.bad_entry(&format!("{path}[{i}]"), list, entry);
            }
            if found {
                return;
            }
        }
        self.problem(format!("{path}: {}", explain(e.message())));
    }

    /// Reports the entry at `path` if it does not read; false if it does.
    fn bad_entry(&mut self, path: &str, list: &List, entry: &toml::Value) -> bool {
        let Err(e) = (list.check)(entry.clone()) else {
            return false;
        };
        if let Some(field) = missing_field(e.message()) {
            let at = path_of(path, field);
            if !self.suggested.contains(&at) {
                self.problem(format!("{at} is required (missing)"));
            }
            return true;
        }
        // The key at fault is the one whose removal clears the error, or
        // turns it into that (required) key missing.
        if let toml::Value::Table(t) = entry {
            for key in t.keys() {
                let mut rest = t.clone();
                rest.remove(key);
                let at_fault = match (list.check)(toml::Value::Table(rest)) {
                    Ok(()) => true,
                    Err(other) => missing_field(other.message()) == Some(key),
                };
                if at_fault {
                    let at = path_of(path, key);
                    self.problem(format!("{at}: {}", explain(e.message())));
                    return true;
                }
            }
        }
        self.problem(format!("{path}: {}", explain(e.message())));
        true
    }

    /// `[pools.NAME]`, each a section.
    fn pools(&mut self, value: Option<toml::Value>) -> BTreeMap<String, pools::PoolSection> {
        match value {
            None => BTreeMap::new(),
            Some(toml::Value::Table(t)) => t
                .into_iter()
                .map(|(name, pool)| {
                    let path = path_of("pools", &name);
                    let section = self.section(&path, Some(pool));
                    (name, section)
                })
                .collect(),
            Some(other) => {
                self.problem(format!(
                    "pools must be tables ([pools.NAME]), got {}",
                    other.type_str()
                ));
                BTreeMap::new()
            }
        }
    }

    /// `[routes]`: pattern = pool name.
    fn routes(&mut self, value: Option<toml::Value>) -> BTreeMap<String, String> {
        let mut routes = BTreeMap::new();
        match value {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (pattern, pool) in t {
                    match pool {
                        toml::Value::String(pool) => {
                            routes.insert(pattern, pool);
                        }
                        other => self.problem(format!(
                            "{}: the pool name must be a string, got {}",
                            path_of("routes", &pattern),
                            other.type_str()
                        )),
                    }
                }
            }
            Some(other) => self.problem(format!(
                "routes must be a table ([routes]), got {}",
                other.type_str()
            )),
        }
        routes
    }
}

/// The field serde reports missing.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// The section a plain key belongs in, if any.
fn section_of(key: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(_, keys)| keys().contains(&key))
        .map(|(name, _)| *name)
}

/// serde's message in the operator's terms (no Rust type names).
fn explain(message: &str) -> String {
    const TERMS: [(&str, &str); 8] = [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number 0..=4294967295"),
        ("expected u16", "expected a whole number 0..=65535"),
        ("expected a sequence", "expected a list ([...])"),
        ("expected a map", "expected a table"),
        ("expected path string", "expected a path (a string)"),
        ("expected a borrowed string", "expected a string"),
    ];
    let mut out = message.to_string();
    for (from, to) in TERMS {
        out = out.replace(from, to);
    }
    // Derived structs expect "struct PeerSection".
    if let Some(i) = out.find("expected struct ") {
        out.truncate(i);
        out.push_str("expected a table ({ key = value, ... })");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_key_and_its_line() {
        let text = "[smtp]\nrecipients_max = 5\n\n[routes]\n\"bad domain\" = \"a\"\n\
                    [[cluster.peers]]\nnode_id = \"b\"\n";
        let doc = toml_edit::ImDocument::parse(text).unwrap();
        let lines = Lines::of_document(&doc);
        assert_eq!(
            lines.locate("smtp.recipients_max must be 100..=100000, got 5".into()),
            "line 2: smtp.recipients_max must be 100..=100000, got 5"
        );
        assert_eq!(lines.line_of("routes.\"bad domain\": not DOMAIN"), Some(5));
        assert_eq!(
            lines.line_of("cluster.peers[0].fingerprint is required"),
            Some(6)
        );
        assert_eq!(
            lines.line_of("smtp.errors_max must be"),
            Some(1),
            "the section"
        );
        assert_eq!(lines.line_of("delivery.mx_port must be"), None);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let text = "[server]\nlisten = \"127.0.0.1:25\"\ncores = = 2\n";
        let e = toml_edit::ImDocument::parse(text).unwrap_err();
        let message = syntax_error(text, &e);
        assert!(
            message.starts_with("line 3, column 9: TOML syntax: "),
            "{message}"
        );
    }

    #[test]
    fn rust_names_are_explained() {
        assert_eq!(
            explain("invalid type: string \"x\", expected usize"),
            "invalid type: string \"x\", expected a whole number"
        );
        assert_eq!(
            explain("invalid type: integer `1`, expected struct PeerSection"),
            "invalid type: integer `1`, expected a table ({ key = value, ... })"
        );
    }
}
