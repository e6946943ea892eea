//! What `/proc` says about a process (Linux): the benches' CPU accounting of servers they start.

use std::time::Duration;

/// CPU time (user + system) process `pid` (a number, or `self`) has used so far, its exited threads included;
/// `None` where `/proc` does not tell. In clock ticks of 10 ms (USER_HZ is 100).
pub(crate) fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses), utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
