//! The first connect: the servers raced, the session opened (failing over to the other addresses when a server
//! takes the handshake but not the session), and the client's tasks started.

use super::*;

/// A [`Driver::connect`] not yet returned: dropped (the connect failed, or its future was dropped), it ends the
/// client and closes the connection opened so far.
struct Unfinished {
    driver: Arc<Driver>,
    connection: Option<Arc<Live>>,
    finished: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let why = (ErrorCode::NoError, "connect given up".to_string());
        if let Some(connection) = &self.connection {
            connection.link.close(why.0, &why.1);
        }
        self.driver.end(why);
    }
}

/// The longest duration an option takes: a year.
const MAX_OPTION_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Driver {
    /// Resolves `server`, opens the first connection (which must succeed) and starts the client's tasks.
    pub(crate) async fn connect(server: &str, options: ConnectOptions) -> Result<Arc<Driver>, ConnectError> {
        // Zero here would drop every connection at once (no silence is shorter) or reconnect in a busy loop.
        if options.dead_server_after.is_some_and(|after| after.is_zero()) {
            return Err(ConnectError::Options("dead_server_after must be more than zero (None: never)".into()));
        }
        if [options.reconnect_delay, options.reconnect_max_delay, options.connect_timeout].iter().any(Duration::is_zero)
        {
            return Err(ConnectError::Options(
                "reconnect_delay, reconnect_max_delay and connect_timeout must be more than zero".into(),
            ));
        }
        // Durations past a year mean "no limit" to whoever wrote them; added to a clock reading or doubled, the
        // largest ones overflowed and panicked here (`Duration::MAX`).
        let durations = [
            ("connect_timeout", Some(options.connect_timeout)),
            ("reconnect_delay", Some(options.reconnect_delay)),
            ("reconnect_max_delay", Some(options.reconnect_max_delay)),
            ("first_connect_retry", options.first_connect_retry),
            ("dead_server_after", options.dead_server_after),
            ("fallback_after", Some(options.fallback_after)),
            // (quinn adds its keep-alive to a clock reading, the tail probe its delay to the last write's.)
            ("tuning.keep_alive", options.tuning.keep_alive),
            ("tuning.tail_probe", options.tuning.tail_probe),
            ("tuning.copy_spacing", Some(options.tuning.copy_spacing)),
            ("tuning.max_ack_delay", options.tuning.max_ack_delay),
            ("tuning.initial_rtt", Some(options.tuning.initial_rtt)),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_some_and(|d| d > MAX_OPTION_DURATION)) {
            return Err(ConnectError::Options(format!(
                "{name} is more than a year ({} s at most; None means never where the option takes it)",
                MAX_OPTION_DURATION.as_secs()
            )));
        }
        // As the server refuses them (`transport.max_ack_delay_ms`, `transport.initial_rtt_ms`): quinn asks the server
        // for at most the path's RTT (25 ms at least) whatever is configured, while the tail probe waited what was,
        // and a zero initial RTT starts quinn's probe timeout at a millisecond (a burst of repeated Initials).
        let most = quiver_transport::tuning::QUINN_MAX_ACK_DELAY;
        if options.tuning.max_ack_delay.is_some_and(|delay| delay > most) {
            let why = format!("tuning.max_ack_delay is more than {most:?} (quinn asks the peer for no more)");
            return Err(ConnectError::Options(why));
        }
        if options.tuning.initial_rtt.is_zero() {
            return Err(ConnectError::Options("tuning.initial_rtt must be more than zero".into()));
        }
        let options = options.with_dev_tokens().with_stable_name();
        let timeout = options.connect_timeout;
        let started = tokio::time::Instant::now();
        let deadline = options.first_connect_retry.map(|retry| started + retry);
        // What a connect may take in all, failing over included: the handshake and the session's opening, a
        // `connect_timeout` each, or until `first_connect_retry`'s deadline.
        let budget = deadline.map_or(started + 2 * timeout, |deadline| deadline.max(started + 2 * timeout));
        let mut backoff = Backoff::new(options.reconnect_delay, options.reconnect_max_delay);
        let (target, mut link) = Target::first(server, &options, deadline, &mut backoff).await?;
        let (posts, queued) = mpsc::unbounded_channel();
        let driver = Arc::new_cyclic(|me| Driver {
            me: me.clone(),
            server: server.to_string(),
            target: Mutex::new(Arc::new(target)),
            options,
            current: watch::channel(None).0,
            ended: Mutex::new(None),
            state: watch::channel(ConnectionState::Reconnecting {
                attempt: 0,
                last_error: "connecting".into(),
                next_try_in: Duration::ZERO,
            })
            .0,
            reconnects: AtomicU64::new(0),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            rooms: rooms::Rooms::default(),
            ticks: ticks::Ticks::default(),
            posts,
            next_msg_id: AtomicU64::new(rand::random::<u64>() >> 2),
            queued_posts: Arc::default(),
            room_streams: AtomicU64::new(0),
            copy_slots: Mutex::default(),
            welcome: Mutex::new(Welcome {
                version: 0,
                session_id: 0,
                server_time_us: 0,
                identity: String::new(),
                limits: Limits::default(),
            }),
            clock_offset_us: AtomicI64::new(0),
            websocket_first: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        // Until this returns, a dropped future (the caller's own timeout, a `select!`) ends the client: its
        // connection is already held by its reader tasks, and nothing else would ever close it.
        let mut unfinished = Unfinished { driver: driver.clone(), connection: None, finished: false };
        // A server that took the handshake but not the session (over its connection limit, going away, no answer
        // to Hello in time, or a refusal of it) is not the end while another address is left: a cluster's other
        // nodes are tried, each once, then (with `first_connect_retry`) all of them again after the backoff's pause.
        let mut refused = Vec::new();
        // The refusal met so far, if any: the connect's error once no other address takes the session.
        let mut fatal = None;
        let left = || budget.saturating_duration_since(tokio::time::Instant::now()).min(timeout);
        let connection = loop {
            // With `first_connect_retry`, a handshake that completed gets its `connect_timeout` for Hello/Welcome
            // whenever it completed: near the deadline, `left()` gave it nothing, and a server that had just
            // answered was reported as no answer at all (until 2026-12-07, a review's find).
            let opening = if deadline.is_some() { timeout } else { left() };
            let opened = tokio::time::timeout(opening, driver.open(link.clone())).await;
            let err = match opened {
                Ok(Ok(connection)) => break connection,
                Ok(Err(err)) => err,
                Err(_) => ConnectError::Timeout(timeout),
            };
            link.close(ErrorCode::NoError, "session not opened; trying another server");
            if left().is_zero() {
                return Err(fatal.unwrap_or(err));
            }
            let addr = driver.target().addr;
            refused.push(addr);
            // A refusal of the session (a token this node does not take, a protocol version it does not speak: a
            // cluster mid-way through a rolling change) ends the connect only once no other address takes it.
            let err = match err.is_fatal() {
                true => {
                    tracing::warn!(%addr, %err, "this server refused the session; trying the others");
                    fatal = Some(err);
                    None
                }
                false => {
                    tracing::info!(%addr, %err, "the server took the handshake but not the session");
                    Some(err)
                }
            };
            let next = match Target::once(server, &driver.options, &refused, left()).await {
                Ok(found) => Ok(found),
                // (Another node's certificate not the pinned one: said, not hidden behind this refusal.)
                Err(other) if other.is_fatal() => return Err(other),
                Err(other) => match (fatal.take(), err) {
                    // Every other address failed too: the refusal is the answer, and trying again cannot help.
                    (Some(refusal), _) => return Err(refusal),
                    (None, Some(err)) if Target::pause(&err, deadline, &mut backoff).await => {
                        refused.clear();
                        Target::first(server, &driver.options, deadline, &mut backoff).await
                    }
                    (None, Some(err)) => return Err(err),
                    (None, None) => return Err(other),
                },
            };
            let (target, next_link) = next?;
            *lock(&driver.target) = Arc::new(target);
            link = next_link;
        };
        unfinished.connection = Some(connection.clone());
        // (Published even if closed while its clock was measured: the supervisor then reconnects, as for any
        // connection lost after the connect.)
        driver.connected(connection, false).await;
        unfinished.finished = true;
        driver.tasks.spawn(driver.clone().supervise());
        let sending = posts::send_posts(driver.current.subscribe(), queued, driver.stop.clone());
        let me = driver.clone();
        driver.tasks.spawn(async move {
            let unsent = sending.await;
            // Read once the client has ended: the reason is the refusal or the close, not a default.
            let why = me.end_reason();
            for post in unsent {
                post.done.send(Err(RequestError::closed(why.clone())));
            }
        });
        Ok(driver)
    }
}
