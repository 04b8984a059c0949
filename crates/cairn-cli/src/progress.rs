//! Progress lines on stderr for long operations.
//!
//! On a terminal the line is redrawn in place (at most ten times a second); otherwise (a
//! pipe, a log file) a line is printed at most once a second, so logs stay short.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A throttled progress line on stderr.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// Progress that is shown (pass `false` to silence it entirely).
    pub fn new(enabled: bool) -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            enabled,
            last: None,
            drawn: false,
        }
    }

    /// Progress shown only on a terminal (for scans that are usually quick).
    pub fn terminal_only() -> Self {
        let terminal = std::io::stderr().is_terminal();
        Progress::new(terminal)
    }

    /// Shows `message` unless one was shown very recently.
    pub fn update(&mut self, message: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let interval = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if self.last.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last = Some(Instant::now());
        self.draw(&message());
    }

    /// Shows `message` as the final state of the line and ends it.
    pub fn finish(&mut self, message: &str) {
        if !self.enabled {
            return;
        }
        self.draw(message);
        if self.terminal {
            note!();
        }
        self.drawn = false;
    }

    /// Erases the line (terminal only) without a final message.
    pub fn clear(&mut self) {
        if self.enabled && self.terminal && self.drawn {
            note_inline!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
        self.drawn = false;
    }

    fn draw(&mut self, message: &str) {
        if self.terminal {
            note_inline!("\r\x1b[2K{message}");
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else {
            note!("{message}");
        }
    }
}
