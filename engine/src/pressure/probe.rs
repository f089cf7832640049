//! Looking at the resources: free space of a file system (`statvfs`) and
//! available memory (`/proc/meminfo`). A few microseconds each; called at
//! most once per `pressure.check_interval` for the whole node.

use std::path::Path;

/// Free and total bytes of the file system holding `dir` (free as an
/// unprivileged writer sees it: `f_bavail`).
pub fn disk(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path holds a NUL byte"))?;
    // SAFETY: `st` is plain old data filled by the call; `path` is a valid
    // NUL-terminated string.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// `MemAvailable` and `MemTotal` in bytes.
pub fn memory() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo(&text).ok_or_else(|| std::io::Error::other("no MemAvailable in /proc/meminfo"))
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("MemAvailable")?, field("MemTotal")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_and_statvfs() {
        let text = "MemTotal:       24000000 kB\nMemFree:  10 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            super::parse_meminfo(text),
            Some((12_000_000 * 1024, 24_000_000 * 1024))
        );
        assert_eq!(super::parse_meminfo("MemTotal: 1 kB\n"), None);
        let (free, total) = super::disk(std::path::Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
        let (avail, total) = super::memory().unwrap();
        assert!(total > 0 && avail <= total);
    }
}
