//! Human-readable values of the config file: durations ("30s", "5m", "2d")
//! and sizes ("35MiB", "4096").

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as "5m", "30s", "2d" (humantime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `secs` seconds (for defaults).
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }
}

/// Written in the largest unit that is exact ("2d", "5m", "100ms"), as
/// operators write them; else as humantime spells it ("1s 500ms").
impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(&str, u128); 5] = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ];
        let ms = self.0.as_millis();
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        match UNITS.iter().find(|(_, n)| ms.is_multiple_of(*n)) {
            Some((unit, n)) if Duration::from_millis(ms as u64) == self.0 => {
                write!(f, "{}{unit}", ms / n)
            }
            _ => write!(f, "{}", humantime::format_duration(self.0)),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"2d\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s)
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(Visitor)
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

/// Written in the largest binary unit that is exact ("35MiB"), else in
/// bytes ("4097").
impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        match UNITS
            .iter()
            .find(|(_, n)| self.0 != 0 && self.0.is_multiple_of(*n))
        {
            Some((unit, n)) => write!(f, "{}{unit}", self.0 / n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
    struct Visitor<T>(fn(u64) -> T);
    impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number of bytes or a size such as \"35MiB\"")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
            Ok((self.0)(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
            u64::try_from(n)
                .map(self.0)
                .map_err(|_| E::custom(format!("a size cannot be negative, got {n}")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            s.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor(bytes))
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

    #[test]
    fn values_print_as_operators_write_them_and_parse_back() {
        for (size, text) in [
            (35 << 20, "35MiB"),
            (4097, "4097"),
            (0, "0"),
            (3 << 30, "3GiB"),
        ] {
            assert_eq!(ByteSize(size).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(size)));
        }
        for (ms, text) in [
            (2 * 86_400_000, "2d"),
            (300_000, "5m"),
            (100, "100ms"),
            (0, "0s"),
            (1500, "1500ms"),
        ] {
            let d = HumanDuration(Duration::from_millis(ms));
            assert_eq!(d.to_string(), text);
            assert_eq!(humantime::parse_duration(text), Ok(d.0));
        }
        let odd = HumanDuration(Duration::from_micros(1500));
        assert_eq!(humantime::parse_duration(&odd.to_string()), Ok(odd.0));
    }
}
