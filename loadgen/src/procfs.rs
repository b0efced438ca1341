//! Memory of another process, from `/proc`.

/// Resident set size of `pid`, in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kib * 1024)
}

/// Kernel slab memory of the whole machine, in bytes (`Slab` in /proc/meminfo): a rough view of
/// what sockets cost the kernel.
pub(crate) fn slab_bytes() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Slab line in /proc/meminfo"))?;
    Ok(kib * 1024)
}
