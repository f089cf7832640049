//! Message sizes: a fixed size ("4096", "16KiB") or a weighted
//! distribution ("1KiB:60,16KiB:30,1MiB:10").

/// A size distribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// (size in bytes, weight), weights > 0.
    choices: Vec<(usize, u32)>,
    total: u32,
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split]
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    let mult = match s[split..].trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

impl std::str::FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Sizes, String> {
        let mut choices = Vec::new();
        for part in s.split(',') {
            let (size, weight) = match part.split_once(':') {
                Some((size, w)) => (
                    size,
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("invalid weight in {part:?}"))?,
                ),
                None => (part, 1),
            };
            if weight == 0 {
                return Err(format!("weight 0 in {part:?}"));
            }
            choices.push((parse_bytes(size)?, weight));
        }
        let total = choices
            .iter()
            .map(|c| c.1)
            .try_fold(0u32, |a, w| a.checked_add(w))
            .ok_or("weights overflow")?;
        Ok(Sizes { choices, total })
    }
}

impl Sizes {
    /// Picks a size for a uniform random number `r`.
    pub fn pick(&self, r: u32) -> usize {
        let mut x = r % self.total;
        for &(size, w) in &self.choices {
            if x < w {
                return size;
            }
            x -= w;
        }
        self.choices.last().map_or(0, |c| c.0)
    }

    /// Weighted mean size.
    pub fn mean(&self) -> f64 {
        self.choices
            .iter()
            .map(|&(s, w)| s as f64 * w as f64)
            .sum::<f64>()
            / self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_picks() {
        let s: Sizes = "1KiB:60,16KiB:30,1MiB:10".parse().unwrap();
        let mut counts = [0; 3];
        for r in 0..100 {
            match s.pick(r) {
                1024 => counts[0] += 1,
                16384 => counts[1] += 1,
                1048576 => counts[2] += 1,
                other => panic!("{other}"),
            }
        }
        assert_eq!(counts, [60, 30, 10]);
        assert_eq!("4096".parse::<Sizes>().unwrap().pick(12345), 4096);
        assert!("1KiB:0".parse::<Sizes>().is_err());
        assert!("abc".parse::<Sizes>().is_err());
    }
}
