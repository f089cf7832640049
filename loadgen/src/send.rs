//! `tern-loadgen send` (being built).

/// Arguments of `send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {}

/// Runs `send`.
pub fn main(_args: SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("send: not built yet")
}
