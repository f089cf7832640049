//! Human-readable values of the config file: durations ("30s", "5m", "2d")
//! and sizes ("35MiB", "4096").

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as "5m", "30s", "2d" (humantime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `secs` seconds (for defaults).
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A size written as "35MiB", "128 MiB", "4096" (bytes), "1GiB", "10kB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// As a `usize` (sizes of in-memory things).
    pub(super) fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} overflows"))
    }
}

/// A value written as a number (bytes) or a string parsed by `T`.
pub(super) fn bytes_or_text<'de, D, T>(d: D, bytes: fn(u64) -> T) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(bytes(n)),
        Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes_or_text(d, ByteSize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("35MiB".parse::<ByteSize>(), Ok(ByteSize(35 << 20)));
        assert_eq!("128 MiB".parse::<ByteSize>(), Ok(ByteSize(128 << 20)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("1XB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    }
}
