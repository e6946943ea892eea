//! The process's limit of open files. Rust keeps the soft limit it inherits, often 1,024 (a login shell's, a
//! container's under Docker Engine 29), where each WebSocket and HTTP connection, each journal and many of the
//! store's tables take a descriptor: far below what the default limits admit. The server raises its soft limit to
//! its hard limit at start, as Go's runtime does for every program, and warns when even that is short.

/// Descriptors the server needs beside its connections: the store's tables and journals (fjall keeps up to 900
/// open), listeners, sockets to Redis.
pub const BESIDE_CONNECTIONS: u64 = 1_024;

/// Raises the limit of open files to the hard limit, and warns where even that is short of what the limits admit
/// (each WebSocket and HTTP connection takes a descriptor; the store many more).
pub fn raise_for(config: &crate::ServerConfig) {
    let Some((soft, hard)) = raise() else { return };
    let needed = needed(config);
    match soft < needed {
        true => tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            needed,
            "the limit of open files is below what limits.max_connections, budget.websocket_max_upgrading and \
             budget.http_max_connections admit: connections and the store may fail with \"too many open files\"; \
             raise it (systemd: LimitNOFILE; docker: --ulimit nofile=65536:65536)"
        ),
        false => tracing::debug!(open_files = soft, hard_limit = hard, "limit of open files"),
    }
}

/// Descriptors the limits admit at once: every connection a WebSocket (a TCP socket each), as many more TCP
/// connections not upgraded yet, each HTTP listener's (the demo page's and the admin's) connections with their
/// loopback reserve and their refusals in flight, and the store's and the rest (it counted connections and one HTTP
/// listener's, and a `websocket_max_upgrading` of 100,000 under a limit of 65,536 was not warned of; a review's find).
pub fn needed(config: &crate::ServerConfig) -> u64 {
    let http = u64::from(config.budget.http_max_connections)
        + (crate::http::LOOPBACK_RESERVE + crate::http::MAX_REFUSALS) as u64;
    u64::from(config.limits.max_connections)
        + u64::from(config.budget.websocket_max_upgrading)
        + 2 * http
        + BESIDE_CONNECTIONS
}

/// Raises the soft limit of open files to the hard limit (or to the largest the kernel takes under it); returns
/// the soft limit now and the hard limit, `None` where they cannot be read.
#[cfg(unix)]
pub fn raise() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some((soft, hard));
    }
    // An unlimited hard limit is more than Linux takes for files (`fs.nr_open`, 1,048,576 by default) and macOS
    // (`OPEN_MAX`): the largest of these it takes.
    for target in [hard, 1 << 20, 1 << 16, 10_240].into_iter().filter(|&target| target > soft && target <= hard) {
        if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            return Some((target, hard));
        }
    }
    Some((soft, hard))
}

#[cfg(not(unix))]
pub fn raise() -> Option<(u64, u64)> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    /// After the raise the soft limit is the hard limit (or the largest under it the kernel takes), and a second
    /// raise changes nothing. (Not lowered first: the other tests of this process run meanwhile. A shell's soft
    /// limit, 1,024 here, is usually below its hard one.)
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let (raised, told_hard) = super::raise().unwrap();
        assert_eq!(told_hard, hard);
        assert!(raised >= soft);
        assert!(raised == hard || (hard > 1 << 20 && raised >= 10_240), "not raised: {raised} of {hard}");
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (raised, hard));
        assert_eq!(super::raise(), Some((raised, hard)));
    }

    /// The estimate counts what each limit admits: a larger `websocket_max_upgrading` or HTTP bound needs more.
    #[test]
    fn what_the_limits_admit_is_counted_in_full() {
        let config = crate::ServerConfig::dev("127.0.0.1:0".parse().unwrap(), "/nonexistent".into());
        let base = super::needed(&config);
        let (limits, budget) = (&config.limits, &config.budget);
        let at_least = u64::from(limits.max_connections)
            + u64::from(budget.websocket_max_upgrading)
            + 2 * u64::from(budget.http_max_connections)
            + super::BESIDE_CONNECTIONS;
        assert!(base >= at_least, "{base} < {at_least}");
        let upgrading = crate::Budget { websocket_max_upgrading: 100_000, ..config.budget.clone() };
        let more = crate::ServerConfig { budget: upgrading, ..config };
        assert!(super::needed(&more) >= base + 100_000 - 1_024);
    }
}
