//! The supervisor: watches the live connection and, when it is lost, reconnects with backoff (a node that refuses
//! the session passed over for the others, for a while) and puts rooms, subscriptions and claims back.

use std::sync::{atomic::Ordering, Arc};

use quiver_proto::ErrorCode;

use super::{handler, rooms, ticks, Driver, Live, STABLE_CONNECTION};
use crate::{error::ConnectError, state::backoff::Backoff, sync::lock, target::Target, ConnectionState};

/// Attempts since a refusal, its own included, before the client ends with it (once `connect_timeout` has passed
/// too): another node restarting (its drain, 10 s by default, and its start) has that long to come back.
const OTHERS_TRIES: u32 = 3;

/// The code a fatal reconnect failure ([`ConnectError::is_fatal`]) ends the client with: the server's, for a
/// session it refused; `ProtocolViolation` for a Welcome in another protocol version than Hello asked for (the
/// server broke the protocol: it refuses a version it does not speak with `UnsupportedVersion`; the browser client
/// says the same). Before, the latter ended the client with `Internal`, "something failed inside the server".
/// `Internal` stays for a certificate that is not the pinned one: no code names a server the client refuses.
fn refusal_code(err: &ConnectError) -> ErrorCode {
    match err {
        ConnectError::Refused(failure) => failure.code,
        ConnectError::Protocol(_) => ErrorCode::ProtocolViolation,
        _ => ErrorCode::Internal,
    }
}

impl Driver {
    /// A reconnect: the servers resolved again and raced (the address just lost last, so that another node of a
    /// cluster is tried first), then the winner's session opened. As a first connect: `connect_timeout` for the
    /// names and the handshake, and again for Hello/Welcome (until 2026-12-08 one `connect_timeout` for all: on a
    /// path whose handshake takes most of it, every reconnect timed out while the first connect had worked).
    async fn reopen(&self, avoid: &[std::net::SocketAddr]) -> Result<Arc<Live>, ConnectError> {
        let timeout = self.options.connect_timeout;
        let link = tokio::time::timeout(timeout, self.link(avoid)).await.map_err(|_| ConnectError::Timeout(timeout))?;
        tokio::time::timeout(timeout, self.open(link?)).await.map_err(|_| ConnectError::Timeout(timeout))?
    }

    /// A reconnect's link: see [`Driver::reopen`].
    async fn link(&self, avoid: &[std::net::SocketAddr]) -> Result<crate::wire::Link, ConnectError> {
        let lost = self.target().addr;
        let mut targets = Target::resolve_all(&self.server, &self.options).await?;
        // Not those that refused the session in this outage, while another is left.
        if targets.iter().any(|t| !avoid.contains(&t.addr)) {
            targets.retain(|t| !avoid.contains(&t.addr));
        }
        if let Some(i) = targets.iter().position(|t| t.addr == lost) {
            let again = targets.remove(i);
            targets.push(again);
        }
        let websocket_first = self.websocket_first.load(Ordering::Relaxed);
        let (target, link) =
            Target::connect(targets, &self.options, self.options.connect_timeout, websocket_first).await?;
        *lock(&self.target) = Arc::new(target);
        Ok(link)
    }

    /// The addresses `server` names now, with their trust.
    async fn resolve(&self) -> Result<Vec<Target>, ConnectError> {
        Target::resolve_all(&self.server, &self.options).await
    }

    /// Whether a refusal (when, attempts since, why) is the answer now: `connect_timeout` has passed since it, and
    /// [`OTHERS_TRIES`] attempts (its own included) failed.
    fn refusal_stands(&self, (at, tries, _): &(tokio::time::Instant, u32, (ErrorCode, String))) -> bool {
        at.elapsed() >= self.options.connect_timeout && *tries >= OTHERS_TRIES
    }

    /// After a refusal of the session by the current target's address (its Hello answered with an error): notes it
    /// in `refused_by`, and whether `server` still resolves to an address that has not refused.
    async fn others_left(&self, refused_by: &mut Vec<std::net::SocketAddr>) -> bool {
        let addr = self.target().addr;
        if !refused_by.contains(&addr) {
            refused_by.push(addr);
        }
        // (Bounded, and given up with the client: a resolver that does not answer must not hold the supervisor.)
        let resolved = tokio::select! {
            resolved = tokio::time::timeout(self.options.connect_timeout, self.resolve()) => resolved,
            () = self.stop.cancelled() => return false,
        };
        match resolved {
            Ok(Ok(targets)) => targets.iter().any(|t| !refused_by.contains(&t.addr)),
            // A resolver that fails for now is no proof that no other address is left: the refusal's window says.
            _ => true,
        }
    }

    /// Watches the live connection; when it is lost (or silent for `dead_server_after`), reconnects with backoff and
    /// puts rooms (from their positions), subscriptions and claims back.
    pub(super) async fn supervise(self: Arc<Self>) {
        let new_backoff = || Backoff::new(self.options.reconnect_delay, self.options.reconnect_max_delay);
        let mut backoff = new_backoff();
        let mut connected_at = tokio::time::Instant::now();
        loop {
            let Some(connection) = self.current.borrow().clone() else { return };
            tokio::select! {
                () = connection.link.closed() => {}
                () = handler::silent(&connection.link, self.options.dead_server_after) => {
                    let reason = "the server sent nothing for too long (dead_server_after); reconnecting";
                    tracing::info!(reason, "server silent");
                    connection.link.close(ErrorCode::Unavailable, reason);
                }
                () = self.stop.cancelled() => {
                    // Every handle was dropped (or close() was called): the connection goes with the client.
                    self.end((ErrorCode::NoError, "client dropped".into()));
                    return;
                }
            }
            let why = connection.close_reason().unwrap_or((ErrorCode::Internal, "connection lost".into()));
            if !self.options.reconnect {
                self.end(why);
                return;
            }
            tracing::info!(code = %why.0, reason = %why.1, "connection lost; reconnecting");
            self.current.send_replace(None);
            // The delays start over only after a connection that lasted: a server that accepts and then fails
            // (a crash loop) had every client back every 50 ms for as long as it did.
            if connected_at.elapsed() >= STABLE_CONNECTION {
                backoff = new_backoff();
            }
            let mut last_error = format!("{}: {}", why.0, why.1);
            // Counted from this loss (the backoff's own count goes on across short-lived connections).
            let mut attempts_since_loss = 0;
            // Addresses that refused the session in this outage: passed over while another is left, until
            // `connect_timeout` has passed since the first refusal and [`OTHERS_TRIES`] more attempts failed; no other
            // address taking the session by then, the client ends with that refusal (passed over for ever, an
            // expired token refused by one node while the others are down reconnected in silence for ever).
            let mut refused_by = Vec::new();
            let mut refusal: Option<(tokio::time::Instant, u32, (ErrorCode, String))> = None;
            let connection = loop {
                let delay = backoff.next_delay(rand::random());
                let attempt = attempts_since_loss;
                attempts_since_loss += 1;
                self.set_state(ConnectionState::Reconnecting {
                    attempt,
                    last_error: last_error.clone(),
                    next_try_in: delay,
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.cancelled() => return self.end((ErrorCode::NoError, "client dropped".into())),
                }
                // (Each of its two steps has `connect_timeout`: this bounds them together.)
                let bound = 2 * self.options.connect_timeout;
                let attempt = tokio::select! {
                    attempt = tokio::time::timeout(bound, self.reopen(&refused_by)) => attempt,
                    () = self.stop.cancelled() => return self.end((ErrorCode::NoError, "client dropped".into())),
                };
                match attempt {
                    Ok(Ok(connection)) => {
                        if self.connected(connection.clone(), true).await {
                            break connection;
                        }
                        let why = connection.close_reason().unwrap_or((ErrorCode::Internal, "connection lost".into()));
                        tracing::info!(code = %why.0, reason = %why.1, "connection lost while its clock was measured");
                        last_error = format!("{}: {}", why.0, why.1);
                    }
                    // (A certificate mismatch comes only once every address was raced and none failed for now
                    // (down, restarting): none is left then. Until 2026-12-06 one node's ended the client while
                    // the others were restarting.)
                    Ok(Err(err))
                        if err.is_fatal()
                            && !matches!(err, ConnectError::PinMismatch { .. })
                            && refusal.as_ref().is_none_or(|r| !self.refusal_stands(r))
                            && self.others_left(&mut refused_by).await =>
                    {
                        // This node refused the session (a token it does not take, a version it does not speak:
                        // a cluster mid-way through a rolling change): the others are tried. Before, the first
                        // refusal ended the client though other nodes served.
                        tracing::warn!(%err, "reconnect refused by this server; trying the others");
                        last_error = err.to_string();
                        refusal.get_or_insert((
                            tokio::time::Instant::now(),
                            0,
                            (refusal_code(&err), last_error.clone()),
                        ));
                    }
                    Ok(Err(_)) if self.stop.is_cancelled() => {
                        return self.end((ErrorCode::NoError, "client dropped".into()));
                    }
                    Ok(Err(err)) if err.is_fatal() => {
                        // Trying again cannot help (a refused token or version, a certificate that is not the
                        // pinned one, from every address): the client ends and says why.
                        tracing::error!(%err, "reconnect refused; the client ends");
                        self.end((refusal_code(&err), err.to_string()));
                        return;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(%err, attempt = backoff.attempts(), "reconnect failed");
                        last_error = err.to_string();
                    }
                    Err(_) => {
                        tracing::info!(attempt = backoff.attempts(), "reconnect timed out");
                        last_error = format!("no answer within {} ms", self.options.connect_timeout.as_millis());
                    }
                }
                if let Some(refused) = &mut refusal {
                    refused.1 += 1;
                    if self.refusal_stands(refused) {
                        let why = refused.2.clone();
                        let reason = &why.1;
                        tracing::error!(%reason, "no other server took the session since one refused it; ending");
                        self.end(why);
                        return;
                    }
                }
            };
            connected_at = tokio::time::Instant::now();
            // Rooms rejoin side by side, each on its own task (a room whose join is refused for now retries on
            // its own), and ticks do not wait for them.
            for entry in self.rooms.all().into_iter().filter(|entry| entry.is_joined()) {
                let connection = connection.clone();
                self.tasks.spawn(async move { rooms::rejoin(&connection, &entry).await });
            }
            for entry in self.ticks.subscriptions() {
                let (connection, me) = (connection.clone(), self.me.clone());
                self.tasks.spawn(async move {
                    if ticks::resubscribe(&connection, &entry).await {
                        if let Some(driver) = me.upgrade() {
                            driver.ticks.forget(&entry);
                        }
                    }
                });
            }
            for entry in self.ticks.publishers() {
                let (connection, order) = (connection.clone(), self.ticks.claim_order());
                self.tasks.spawn(async move { ticks::reclaim(&connection, &entry, &order).await });
            }
        }
    }
}
