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

/// Anonymous memory of `pid` (`Anonymous` in /proc/<pid>/smaps_rollup), in bytes: what the
/// process allocated itself, without the pages of its binary and libraries, which several
/// processes of one program share and each one's RSS counts again.
pub(crate) fn anon_bytes(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Anonymous line for pid {pid}"))?;
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

/// CPU time `pid` has used so far (user + system, all threads), in seconds, from
/// `/proc/<pid>/stat` (`utime` + `stime`).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: fields from the last
    // ')' on are field 3 (state) onwards, so utime (14) and stime (15) are at 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no field {} in /proc/{pid}/stat", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// `sysconf(_SC_CLK_TCK)` (from `getconf`, since this crate has no unsafe code); 100 on Linux.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// `TCP: inuse N … mem P` from `/proc/net/sockstat` (machine-wide; `mem` is in pages).
pub(crate) fn sockstat_tcp() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(tcp) = text.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        return (None, None);
    };
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    let get = |name: &str| {
        fields
            .iter()
            .position(|f| *f == name)
            .and_then(|i| fields.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    (get("inuse"), get("mem"))
}
