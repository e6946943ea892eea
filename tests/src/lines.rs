//! A child process's stdout read on a thread of its own: lines come through a channel, so a test waits for one
//! with a deadline (a server that hangs while starting fails the test instead of holding CI until its timeout),
//! and the pipe is drained for as long as the child prints (it never blocks on a full pipe).
//!
//! Shared by the server crate's process tests (through `#[path]`): no dependencies.

use std::{
    io::{BufRead, BufReader, Read},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The lines a child prints.
#[allow(unreachable_pub, reason = "private where a test includes it by path")]
pub struct Lines(mpsc::Receiver<String>);

/// Why no line came.
#[allow(unreachable_pub, reason = "private where a test includes it by path")]
#[derive(Debug, PartialEq, Eq)]
pub enum NoLine {
    /// The child closed its stdout (it exited, most likely).
    Ended,
    /// Nothing within the time given.
    TimedOut,
}

impl Lines {
    /// Reads `stdout` on a thread until it ends.
    #[allow(unreachable_pub, reason = "private where a test includes it by path")]
    pub fn read(stdout: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // Nobody listening any more: keep draining all the same.
                let _ = tx.send(line);
            }
        });
        Lines(rx)
    }

    /// The next line, waiting at most `within`.
    #[allow(unreachable_pub, reason = "private where a test includes it by path")]
    pub fn next_within(&self, within: Duration) -> Result<String, NoLine> {
        self.0.recv_timeout(within).map_err(|err| match err {
            mpsc::RecvTimeoutError::Timeout => NoLine::TimedOut,
            mpsc::RecvTimeoutError::Disconnected => NoLine::Ended,
        })
    }

    /// The first line starting with `prefix`, waiting at most `within` for it.
    #[allow(unreachable_pub, reason = "private where a test includes it by path")]
    #[allow(dead_code, reason = "not every test that includes this uses it")]
    pub fn starting_with(&self, prefix: &str, within: Duration) -> Result<String, NoLine> {
        let deadline = Instant::now() + within;
        loop {
            let line = self.next_within(deadline.saturating_duration_since(Instant::now()))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}
