//! `tern-loadgen sink` (being built).

/// Arguments of `sink`.
#[derive(clap::Args, Debug)]
pub struct SinkArgs {}

/// Runs `sink`.
pub fn main(_args: SinkArgs) -> anyhow::Result<()> {
    anyhow::bail!("sink: not built yet")
}
