//! The `tern-loadgen` command.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("tern-loadgen: send and sink are being built")
}
