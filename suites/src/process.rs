//! What this process holds, read from /proc: the soak, hostile and leak tests sample it
//! before and after many VMs to show that nothing grows.

/// Open file descriptors of this process.
pub fn open_fds() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Resident set size in KiB (VmRSS of /proc/self/status).
pub fn rss_kib() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS line in /proc/self/status"))
}
