//! What a server did, printed when it stops.

/// What a server did, printed when it stops (the same figures are on `/metrics`).
#[derive(Debug, Clone)]
pub struct Summary {
    /// The counters at the end.
    pub counters: crate::stats::StatsSnapshot,
    /// Failure replies and closes by code (codes with none left out).
    pub refusals: Vec<(quiver_proto::ErrorCode, u64)>,
    /// Post → delivery inside the server: median and 99th percentile bucket bounds, µs.
    pub post_delivery_p50_p99_us: Option<(u64, u64)>,
    /// Connections still open when the drain timeout ran out.
    pub left_open: usize,
    /// The QUIC endpoint stopped by itself (its socket failed), not at a shutdown: the server did not stop because
    /// it was asked to, and its process should exit with a failure (so that a supervisor restarts it).
    pub endpoint_lost: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        writeln!(f, "server stopped")?;
        writeln!(
            f,
            "  connections served   {} native, {} webtransport, {} websocket",
            c.accepted_native, c.accepted_webtransport, c.accepted_websocket
        )?;
        writeln!(f, "  sessions admitted    {}", c.handshakes)?;
        writeln!(f, "  posts                {} ({} retries answered with their seq)", c.posts, c.posts_duplicate)?;
        writeln!(f, "  room deliveries      {}", c.room_deliveries)?;
        if let Some((p50, p99)) = self.post_delivery_p50_p99_us {
            writeln!(f, "  post to delivery     p50 <= {p50} us, p99 <= {p99} us")?;
        }
        writeln!(
            f,
            "  ticks                {} in, {} out, {} conflated, {} expired",
            c.ticks_published, c.ticks_sent, c.ticks_conflated, c.ticks_expired
        )?;
        writeln!(f, "  slow-consumer resets {}", c.slow_consumer_resets)?;
        let refusals: Vec<String> = self.refusals.iter().map(|(code, n)| format!("{code:?}={n}")).collect();
        let refusals = if refusals.is_empty() { "none".to_string() } else { refusals.join(" ") };
        write!(f, "  refusals             {refusals}")?;
        if self.endpoint_lost {
            write!(f, "\n  FAILED               the UDP endpoint stopped by itself (see the log)")?;
        }
        if self.left_open > 0 {
            write!(
                f,
                "\n  left open            {} connections did not close within the drain timeout",
                self.left_open
            )?;
        }
        Ok(())
    }
}
