//! The two texts of MTA-STS (RFC 8461), parsed without I/O: the
//! `_mta-sts` TXT record (3.1) and the policy file (3.2), and the MX
//! pattern match (4.1).
//!
//! ```text
//! _mta-sts.example.com. TXT "v=STSv1; id=20160831085700Z;"
//!
//! https://mta-sts.example.com/.well-known/mta-sts.txt:
//! version: STSv1
//! mode: enforce            (enforce | testing | none)
//! mx: mail.example.com     (one or more; "*." matches one leftmost label)
//! mx: *.example.net
//! max_age: 604800          (seconds, 0..=31557600)
//! ```

/// Longest policy body read (RFC 8461 3.3: senders may limit it; 64 KiB
/// is what it suggests).
pub const POLICY_BYTES_MAX: usize = 64 * 1024;

/// Longest `max_age` (RFC 8461 3.2: about one year).
pub const MAX_AGE_MAX: u64 = 31_557_600;

/// Most `mx` patterns kept from one policy.
const MX_PATTERNS_MAX: usize = 64;

/// What a policy asks of senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts, over TLS with a valid
    /// certificate for the host's name.
    Enforce,
    /// Deliver as without a policy; report what `enforce` would refuse.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    /// As written in the policy and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What it asks.
    pub mode: Mode,
    /// MX host patterns, lower case, no trailing dot.
    pub mx: Vec<String>,
    /// Seconds a sender may cache it.
    pub max_age: u64,
}

/// Why a text is not a valid record or policy.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The TXT record(s) do not give one STSv1 record with an id.
    #[error("TXT record: {0}")]
    Record(String),
    /// The policy file is not valid.
    #[error("policy: {0}")]
    Policy(String),
}

/// The policy id of the `_mta-sts` TXT records of a domain: `Ok(None)`
/// when none starts with `v=STSv1` (no policy); more than one such
/// record, or a bad one, is an error (RFC 8461 3.1: then there is no
/// policy available, which the caller treats the same way but logs).
pub fn record_id(records: &[String]) -> Result<Option<String>, PolicyError> {
    let mut sts = records.iter().filter(|r| is_sts_record(r));
    let Some(record) = sts.next() else {
        return Ok(None);
    };
    if sts.next().is_some() {
        return Err(PolicyError::Record(
            "more than one v=STSv1 record (RFC 8461 3.1)".into(),
        ));
    }
    let mut id = None;
    for (i, field) in record.split(';').enumerate() {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            return Err(PolicyError::Record(format!("field {field:?} has no '='")));
        };
        match key {
            "v" if i == 0 && value == "STSv1" => {}
            "v" => return Err(PolicyError::Record("v=STSv1 must come first".into())),
            "id" => {
                let valid = (1..=32).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_alphanumeric());
                if !valid {
                    return Err(PolicyError::Record(format!(
                        "id {value:?} is not 1 to 32 letters and digits"
                    )));
                }
                id = Some(value.to_owned());
            }
            // Other fields are extensions: ignored (RFC 8461 3.1).
            _ => {}
        }
    }
    id.map(Some)
        .ok_or_else(|| PolicyError::Record("no id field".into()))
}

/// `v=STSv1` followed by `;` or white space (or nothing).
fn is_sts_record(r: &str) -> bool {
    r.strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Parses a policy file. Unknown keys are ignored; `version`, `mode` and
/// `max_age` are required, and `mx` unless the mode is `none`.
pub fn parse(body: &str) -> Result<Policy, PolicyError> {
    let bad = |why: String| PolicyError::Policy(why);
    if body.len() > POLICY_BYTES_MAX {
        return Err(bad(format!("longer than {POLICY_BYTES_MAX} bytes")));
    }
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("line {line:?} is not key: value")));
        };
        let value = value.trim_matches([' ', '\t']);
        match key.trim() {
            "version" => version = Some(value),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(bad(format!("unknown mode {other:?}"))),
                })
            }
            "max_age" => {
                let age = value
                    .parse::<u64>()
                    .ok()
                    .filter(|a| *a <= MAX_AGE_MAX && value.len() <= 10)
                    .ok_or_else(|| bad(format!("max_age {value:?} is not 0..={MAX_AGE_MAX}")))?;
                max_age = Some(age);
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_pattern(&pattern) {
                    return Err(bad(format!("mx {value:?} is not a host name pattern")));
                }
                if mx.len() < MX_PATTERNS_MAX {
                    mx.push(pattern);
                }
            }
            _ => {}
        }
    }
    if version != Some("STSv1") {
        return Err(bad("no \"version: STSv1\"".into()));
    }
    let mode = mode.ok_or_else(|| bad("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| bad("no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(bad(format!("mode {} without mx", mode.as_str())));
    }
    Ok(Policy { mode, mx, max_age })
}

/// A host name, or `*.` and a host name.
fn valid_pattern(p: &str) -> bool {
    let host = p.strip_prefix("*.").unwrap_or(p);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Policy {
    /// Whether MX host `host` (any case, trailing dot or not) is allowed:
    /// equal to a pattern, or one label followed by a `*.` pattern's rest
    /// (`*.example.com` matches `mx.example.com`, not `a.b.example.com`
    /// nor `example.com`; RFC 8461 4.1).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
            None => *p == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records() {
        let id = |r: &[&str]| record_id(&recs(r));
        assert_eq!(
            id(&["v=STSv1; id=20160831085700Z;"]),
            Ok(Some("20160831085700Z".into()))
        );
        assert_eq!(id(&["v=STSv1;id=abc"]), Ok(Some("abc".into())));
        assert_eq!(id(&["v=spf1 -all", "other"]), Ok(None));
        assert_eq!(id(&[]), Ok(None));
        assert_eq!(id(&["v=STSv10; id=1"]), Ok(None), "another version");
        assert!(id(&["v=STSv1; id=1", "v=STSv1; id=2"]).is_err());
        assert!(id(&["v=STSv1;"]).is_err(), "no id");
        assert!(id(&["v=STSv1; id=not-alnum"]).is_err());
        assert!(id(&["v=STSv1; id=123456789012345678901234567890123"]).is_err());
        assert_eq!(id(&["v=STSv1; id=7; ext=ignored"]), Ok(Some("7".into())));
    }

    const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: Mail.Example.com.\r\nmx: *.example.net\r\nmax_age: 604800\r\n";

    #[test]
    fn policies() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604_800);
        // LF line ends and unknown keys are fine.
        let lf = "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 0\nfuture: x\n";
        assert_eq!(parse(lf).unwrap().mode, Mode::Testing);
        let none = "version: STSv1\nmode: none\nmax_age: 86400\n";
        assert_eq!(parse(none).unwrap().mode, Mode::None);
        for bad in [
            "mode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
            "version: STSv1\ngarbage\n",
            "<html>not a policy</html>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        let huge = format!("{GOOD}{}", "x: y\n".repeat(POLICY_BYTES_MAX / 5 + 1));
        assert!(parse(&huge).is_err());
    }

    #[test]
    fn mx_patterns() {
        let p = parse(GOOD).unwrap();
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.COM."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"), "one label only");
        assert!(!p.allows("example.net"));
        assert!(!p.allows("other.example.com"));
        assert!(!p.allows("mail.example.com.evil.test"));
    }
}
