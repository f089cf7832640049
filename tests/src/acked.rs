//! Reading what `tern-loadgen send --acked FILE` wrote and what a test
//! sink received of that run, to check that every acknowledged message
//! was delivered (and how often).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::sink::TestSink;

/// The run id (hex, as in the subjects) and the acknowledged sequence
/// numbers of an `--acked` file.
pub fn read(path: &Path) -> (String, BTreeSet<u64>) {
    let text = std::fs::read_to_string(path).expect("the --acked file");
    let mut lines = text.lines();
    let run = lines
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .expect("run line")
        .to_owned();
    (run, lines.map(|l| l.parse().expect("a number")).collect())
}

/// Deliveries per sequence number of run `run` at `sink` (the subject
/// `tern-loadgen <run> #<seq>`).
pub fn delivered(sink: &TestSink, run: &str) -> BTreeMap<u64, usize> {
    let prefix = format!("tern-loadgen {run} #");
    let mut seen = BTreeMap::new();
    for m in sink.messages() {
        if let Some(seq) = m
            .subject()
            .strip_prefix(&prefix)
            .and_then(|s| s.parse().ok())
        {
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    seen
}
