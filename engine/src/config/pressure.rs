//! `[pressure]`: back pressure. Thresholds on the free space of the data
//! file system, on available memory and on the bytes the logs hold, each
//! giving a level (normal / elevated / high) read by `crate::pressure`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// An amount of a resource: bytes, or a percentage of the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// Bytes.
    Bytes(u64),
    /// Hundredths of a percent of the total (`"2.5%"` = 250).
    Percent(u32),
}

impl Amount {
    /// The amount in bytes out of `total`.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => (u128::from(total) * u128::from(p) / 10_000) as u64,
        }
    }
}

impl std::str::FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let Some(pct) = s.strip_suffix('%') else {
            return s.parse::<ByteSize>().map(|b| Amount::Bytes(b.0));
        };
        let v: f64 = pct
            .trim()
            .parse()
            .map_err(|_| format!("invalid percentage {s:?}"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("percentage {s:?} is not within 0%..100%"));
        }
        Ok(Amount::Percent((v * 100.0).round() as u32))
    }
}

/// Bytes as [`ByteSize`] writes them, a percentage as "2.5%".
impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Amount::Bytes(b) => write!(f, "{}", ByteSize(b)),
            Amount::Percent(p) if p % 100 == 0 => write!(f, "{}%", p / 100),
            Amount::Percent(p) => {
                let fraction = format!("{:02}", p % 100);
                write!(f, "{}.{}%", p / 100, fraction.trim_end_matches('0'))
            }
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::units::bytes_or_text(d, Amount::Bytes)
    }
}

/// `[pressure]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct PressureSection {
    disk_free_elevated: Amount,
    disk_free_high: Amount,
    memory_available_elevated: Amount,
    memory_available_high: Amount,
    /// `None`: no threshold.
    queued_bytes_elevated: Option<ByteSize>,
    queued_bytes_high: Option<ByteSize>,
    greeting_delay: HumanDuration,
    elevated_size_max: ByteSize,
    check_interval: HumanDuration,
}

impl Default for PressureSection {
    fn default() -> Self {
        PressureSection {
            disk_free_elevated: Amount::Bytes(2 << 30),
            disk_free_high: Amount::Bytes(1 << 30),
            memory_available_elevated: Amount::Percent(500),
            memory_available_high: Amount::Percent(200),
            queued_bytes_elevated: None,
            queued_bytes_high: None,
            greeting_delay: HumanDuration::from_secs(1),
            elevated_size_max: ByteSize(1 << 20),
            check_interval: HumanDuration(Duration::from_millis(100)),
        }
    }
}

/// Back pressure settings (`crate::pressure`).
#[derive(Clone, Debug)]
pub struct PressureConfig {
    /// Free space of the data file system below which the node is
    /// elevated.
    pub disk_free_elevated: Amount,
    /// ... and high (no new messages).
    pub disk_free_high: Amount,
    /// Available memory (`MemAvailable`) below which the node is elevated.
    pub memory_available_elevated: Amount,
    /// ... and high.
    pub memory_available_high: Amount,
    /// Bytes the node's logs hold (queued messages, shadow copies, the
    /// Safety Net) above which the node is elevated; `None`: no limit.
    pub queued_bytes_elevated: Option<u64>,
    /// ... and high.
    pub queued_bytes_high: Option<u64>,
    /// Wait before the greeting of a new session while elevated or high.
    pub greeting_delay: Duration,
    /// While elevated, MAIL with a `SIZE=` above this gets 452 4.3.1.
    pub elevated_size_max: u64,
    /// How often the resources are looked at (at most; at least 100 ms).
    pub check_interval: Duration,
}

impl PressureSection {
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> PressureConfig {
        let pairs = [
            ("disk_free", self.disk_free_elevated, self.disk_free_high),
            (
                "memory_available",
                self.memory_available_elevated,
                self.memory_available_high,
            ),
        ];
        for (name, elevated, high) in pairs {
            // Bytes and a percentage are not comparable before start.
            let inverted = match (elevated, high) {
                (Amount::Bytes(e), Amount::Bytes(h)) => e < h,
                (Amount::Percent(e), Amount::Percent(h)) => e < h,
                _ => false,
            };
            if inverted {
                problems.push(format!(
                    "pressure.{name}_elevated must be at least pressure.{name}_high ({high}; less free is worse), got {elevated}"
                ));
            }
        }
        if let (Some(e), Some(h)) = (self.queued_bytes_elevated, self.queued_bytes_high) {
            if e.0 > h.0 {
                problems.push(format!(
                    "pressure.queued_bytes_elevated must be at most pressure.queued_bytes_high ({h}), got {e}"
                ));
            }
        }
        if self.check_interval.0 < Duration::from_millis(100) {
            problems.push(format!(
                "pressure.check_interval must be at least 100ms, got {}",
                self.check_interval
            ));
        }
        if self.greeting_delay.0 > Duration::from_secs(60) {
            problems.push(format!(
                "pressure.greeting_delay must be at most 60s (clients time out at 5 min), got {}",
                self.greeting_delay
            ));
        }
        PressureConfig {
            disk_free_elevated: self.disk_free_elevated,
            disk_free_high: self.disk_free_high,
            memory_available_elevated: self.memory_available_elevated,
            memory_available_high: self.memory_available_high,
            queued_bytes_elevated: self.queued_bytes_elevated.map(|b| b.0),
            queued_bytes_high: self.queued_bytes_high.map(|b| b.0),
            greeting_delay: self.greeting_delay.0,
            elevated_size_max: self.elevated_size_max.0,
            check_interval: self.check_interval.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Amount;

    #[test]
    fn amounts() {
        assert_eq!("5%".parse::<Amount>(), Ok(Amount::Percent(500)));
        assert_eq!("2.5 %".parse::<Amount>(), Ok(Amount::Percent(250)));
        assert_eq!("1GiB".parse::<Amount>(), Ok(Amount::Bytes(1 << 30)));
        assert!("150%".parse::<Amount>().is_err());
        assert!("x%".parse::<Amount>().is_err());
        assert_eq!(Amount::Percent(250).of(1000), 25);
        assert_eq!(Amount::Bytes(7).of(1000), 7);
        for text in ["5%", "2.5%", "0.05%", "1GiB", "4097"] {
            assert_eq!(text.parse::<Amount>().unwrap().to_string(), text);
        }
    }
}
