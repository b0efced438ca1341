//! Kills the benchmark's child processes when the load generator is told to stop (SIGINT,
//! SIGTERM, SIGHUP): drop guards do it on return and on error, but a signal would skip them.

use std::sync::Mutex;

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Remembers a temp dir to remove on a signal (its guard removes it otherwise).
pub(crate) fn register_dir(dir: &std::path::Path) {
    if let Ok(mut d) = DIRS.lock() {
        d.push(dir.to_owned());
    }
}

/// Remembers a child to kill on a signal.
pub(crate) fn register(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
}

/// Forgets a child (killed and reaped by its guard).
pub(crate) fn unregister(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|&p| p != pid);
    }
}

/// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, SIGKILLs every registered child by pid,
/// removes the registered temp dirs and exits with 130.
pub(crate) fn install() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Register the handlers here, so a signal right after install() is caught.
    let (mut int, mut term, mut hup) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
        eprintln!("stopping: killing {} child processes", pids.len());
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for dir in DIRS.lock().map(|d| d.clone()).unwrap_or_default() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    Ok(())
}

/// Spawns a holder-style child (stdin and stdout piped), registers it, and waits for its first
/// stdout line to start with `ready`. On anything else the child is killed, reaped and
/// unregistered, and the error names `what`. The caller keeps stdin open while it wants the
/// child to hold, and closes it to stop the child.
pub(crate) fn spawn_ready(
    cmd: &mut std::process::Command,
    what: &str,
) -> anyhow::Result<std::process::Child> {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    register(child.id());
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("{what} has no stdout"))?;
    let mut line = String::new();
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    if read.is_err() || !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        unregister(child.id());
        anyhow::bail!("{what} failed before it was ready (see its stderr)");
    }
    Ok(child)
}
