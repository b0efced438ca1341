//! Progress bars for the long phases (connecting, holding, publishing), drawn on stderr so that
//! stdout keeps only the figures, and hidden when stderr is not a terminal (CI logs, pipes).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Where the bars of one run are drawn: one [`MultiProgress`] on stderr, or nowhere.
#[derive(Clone)]
pub(crate) struct Bars {
    multi: MultiProgress,
}

impl Bars {
    /// Bars on stderr if it is a terminal, else hidden ones (same calls, nothing drawn).
    pub(crate) fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A bar counting up to `len`, labelled `what` (e.g. "connecting").
    pub(crate) fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = self.multi.add(ProgressBar::new(len));
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A bar for a fixed wait (holding connections idle, settling): position in seconds.
    pub(crate) fn timer(&self, seconds: u64, what: &str) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} s",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = self.multi.add(ProgressBar::new(seconds));
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar
    }

    /// Sleeps `d` while a timer bar counts the seconds, then removes the bar.
    pub(crate) fn sleep(&self, d: Duration, what: &str) {
        let bar = self.timer(d.as_secs().max(1), what);
        let end = std::time::Instant::now() + d;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(left.min(Duration::from_millis(250)));
            bar.set_position((d - left.min(d)).as_secs());
        }
        bar.finish_and_clear();
    }

    /// Prints a line on stdout, clearing the bars while it does (they would overwrite it).
    pub(crate) fn println(&self, line: &str) {
        self.multi.suspend(|| println!("{line}"));
    }
}
