//! Reading a child process's stdout line by line without blocking the caller: a thread forwards
//! each line into a channel, so the caller can wait for a ready line with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;

/// Lines of `stdout` as they arrive; the channel ends when the child closes it.
pub(crate) fn stdout_lines(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
