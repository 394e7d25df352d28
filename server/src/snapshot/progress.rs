//! Progress on stderr for the longer operations, shown only to a person at
//! a terminal: piped or redirected runs (scripts, tests) print nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner or a bar; hidden unless stderr is a terminal.
pub struct Progress(ProgressBar);

impl Progress {
    /// A spinner with a message, for steps of unknown length.
    pub fn spinner(message: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(bar)
    }

    /// A bar over `len` items.
    pub fn bar(len: u64, message: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len), target());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        Self(bar)
    }

    pub fn step(&self, message: &str) {
        self.0.set_message(message.to_string());
    }

    pub fn inc(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
