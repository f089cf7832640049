//! `server.incoming_cpu`: each core's listener takes the connections that
//! arrive on its own CPU. Over loopback a connection arrives on the CPU
//! the client connected from, and the queue id in the 250 names the core
//! (shard) that took the message.

use tern_tests::server::{Options, TernProcess};
use tern_tests::smtp::{message, Client};

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set; sched_setaffinity(0)
    // sets the calling thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity({cpu})");
    }
}

/// The shards that took `n` messages, each on its own connection opened
/// by a thread pinned to `cpu`.
fn shards_from(tern: &TernProcess, cpu: usize, n: usize) -> Vec<u16> {
    let addr = tern.addr();
    std::thread::spawn(move || {
        pin_to(cpu);
        (0..n)
            .map(|i| {
                let mut c = Client::ehlo(addr);
                let content = message(&format!("from cpu {cpu}, {i}"), &["hello"]);
                let id = c.send_message("a@example.test", &["b@example.test"], &content);
                c.quit();
                u16::from_str_radix(&id[id.len() - 14..id.len() - 12], 16)
                    .expect("the shard: the 2 hex digits before the sequence")
            })
            .collect()
    })
    .join()
    .expect("client thread")
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn each_core_takes_the_connections_made_on_its_cpu() {
    // tern inherits this process's mask and pins core i to its i-th CPU.
    let cpus = tern_engine::server::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: needs 2 CPUs, this process may use {cpus:?}");
        return;
    }
    // SO_INCOMING_CPU steers the SO_REUSEPORT group's choice since 6.2.
    if kernel_version() < (6, 2) {
        eprintln!("skipped: kernel {:?} is older than 6.2", kernel_version());
        return;
    }
    let tern = TernProcess::start(Options {
        cores: 2,
        ..Options::with_config("[server]\nincoming_cpu = true\n[delivery]\nhold = true\n")
    });
    // Core i runs on the i-th allowed CPU.
    for (core, &cpu) in cpus.iter().take(2).enumerate() {
        let shards = shards_from(&tern, cpu, 8);
        assert!(
            shards.iter().all(|&s| usize::from(s) == core),
            "connections made on CPU {cpu} must be served by core {core} (pinned to it): shards {shards:?}"
        );
    }
}
