//! The `tern` command.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // glibc's defaults give freed memory back to the kernel eagerly (trim
    // above 128 KiB, mmap for blocks above 128 KiB, adapting), so a core
    // that frees and reallocates its batch buffers faults fresh zeroed
    // pages in again: clear_page under malloc's page faults was 1.5% of a
    // node's CPU samples at 5 000 msgs/s, 0.4% with these settings. Memory
    // a core has used stays with the process up to these bounds.
    // (Per malloc arena: each core's thread gets its own.)
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    // Log lines are handed to a background thread: a core never blocks on
    // a slow stderr (the buffer is bounded; lines beyond it are dropped and
    // counted rather than stalling mail). The guard flushes at exit. The
    // thread writes every line it has queued, then flushes: buffered, that
    // is one write(2) per batch instead of one per line (one line per
    // accepted message; measured: the log thread took 14% of a node's CPU
    // at 6 000 msgs/s with a write per line). A line waits for nothing:
    // the flush comes as soon as the queue is empty. A core's own lines
    // reach that thread in batches (`logbuf`: one hand-off per 10 ms or
    // 32 KiB instead of a wake-up per line).
    let stderr = std::io::BufWriter::with_capacity(64 << 10, std::io::stderr());
    let (writer, _flush_guard) = tracing_appender::non_blocking(stderr);
    let writer = tern_engine::logbuf::install(writer);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tern_engine::cli::run(tern_engine::cli::Cli::parse())
}
