//! The `tern` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
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
    let cli = tern_engine::cli::Cli::parse();
    let _flush_guard = tern_engine::logging::init(cli.log_format);
    match tern_engine::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, each cause naming what it was about; no
            // backtrace (an operator's error is not a crash).
            drop(_flush_guard);
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
