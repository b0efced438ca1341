//! What every harness process (gateway, relay, nats-server) does the same way: stop by pid, wait
//! for an exit with a bound, and show the end of its log when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// Kills the child with SIGKILL (if running) and reaps it.
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    use nix::unistd::Pid;
    let pid = i32::try_from(pid).expect("pid fits i32");
    nix::sys::signal::kill(Pid::from_raw(pid), sig).expect("kill");
}

/// Remote ports of the established loopback TCP connections of process `pid` (from
/// `/proc/<pid>/fd` and `/proc/net/tcp`): which server a process is connected to.
#[must_use]
pub fn tcp_peer_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|link| {
                    let l = link.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st … inode (column 9); state 01 = ESTABLISHED.
            let (rem, st, inode) = (cols.get(2)?, cols.get(3)?, cols.get(9)?);
            if *st != "01" || !inodes.contains(*inode) {
                return None;
            }
            u16::from_str_radix(rem.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Waits up to `limit` for the child to exit: its status (and the child is forgotten), or `None`
/// if it is still running (or was not).
pub async fn wait_exit(child: &mut Option<Child>, limit: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let c = child.as_mut()?;
        if let Some(status) = c.try_wait().expect("try_wait") {
            *child = None;
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
#[must_use]
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// For `Drop`: when the test is failing, prints the end of `name`'s log.
pub fn show_log_if_panicking(name: &str, path: &Path) {
    if std::thread::panicking() {
        eprintln!(
            "--- last lines of {name}'s stderr ({}) ---\n{}\n---",
            path.display(),
            log_tail(path, 30)
        );
    }
}

/// `target/<profile>/<name>`: beside the running executable when that is a binary of this crate
/// (`target/<profile>/herald-chaos`), else one directory up (a test executable in
/// `target/<profile>/deps/`). Panics with what to build when it is missing.
#[must_use]
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    let candidates = [Some(dir), dir.parent()];
    for d in candidates.into_iter().flatten() {
        let bin = d.join(name);
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "no {name} beside {}: run `cargo build --workspace --bins` (ops/test.sh does) first",
        exe.display()
    );
}

/// Resident set size (KiB, `VmRSS` of `/proc/<pid>/status`) and open file descriptors (entries
/// of `/proc/<pid>/fd`) of a process; `None` if it is gone.
#[must_use]
pub fn rss_and_fds(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}
