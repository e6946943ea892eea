//! One task per connection: the QUIC handshake, then (for browsers, ALPN `h3`) the WebTransport CONNECT, then the
//! control stream (`control.rs`: Hello first, within the handshake timeout, then each request answered in order),
//! until the peer leaves, breaks the protocol, or the server shuts down. Native QUIC connections and WebTransport sessions are
//! both a [`Session`] from here on, and with WebSocket connections (`websocket.rs`) a [`Wire`]: one code path for
//! every kind of client.

use std::{sync::Arc, time::Duration};

use quiver_proto::{copies::CopyQueue, ErrorCode, ALPN_H3};
use quiver_transport::TailProbe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use web_transport_quinn::Session;

use crate::{
    hub::{ticks::TickHub, RoomHub},
    net::{
        admit::{ended_early, Admitted},
        close::release,
        control::control,
        copies,
        dispatch::Connection,
        now_us,
        open::{accept, Open},
        webtransport::{self, alpn},
        wire::Wire,
    },
    session::ControlSession,
    stats::ServerStats,
    ServerConfig,
};

/// What every connection of a server shares.
#[derive(Debug)]
pub(super) struct Shared<R> {
    pub(super) config: Arc<ServerConfig>,
    pub(super) rooms: Arc<R>,
    pub(super) ticks: Arc<dyn TickHub>,
    pub(super) stats: Arc<ServerStats>,
    /// The token verifier, replaced at a reload of the keys.
    pub(super) auth: tokio::sync::watch::Receiver<Arc<crate::auth::Auth>>,
}

/// Serves one incoming connection, `session_id` its id in logs (and its qlog file's name), accepted with `quic`
/// (the current certificate; with its own qlog file when `config.qlog_dir` asks for one and it is admitted).
/// `incoming` is boxed and used up by [`accept`]: the future keeps its arguments' room for its whole life, and this
/// one lives as long as the connection (384 bytes less per connection). (Not an `async fn`, for the reason
/// [`control`] gives.)
pub(super) fn serve<R: RoomHub>(
    session_id: u64,
    incoming: Box<quinn::Incoming>,
    quic: Arc<quinn::ServerConfig>,
    admitted: Admitted,
    shared: Shared<R>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let Shared { config, rooms, ticks, stats, auth } = shared;
    async move {
        let remote = incoming.remote_address();
        if shutdown.is_cancelled() {
            // Closed before its task ran (to make room, or the server stops): no TLS server flight for it (a
            // certificate signature, sent to an address that may be forged), no qlog file.
            let (_, reason) = ended_early(&admitted, config.budget.max_awaiting_hello, remote.ip(), &stats);
            incoming.ignore();
            return tracing::debug!(%remote, %reason, "closed before its handshake began");
        }
        let started = std::time::Instant::now();
        let deadline = Instant::now() + Duration::from_millis(u64::from(config.limits.handshake_timeout_ms));
        let quic = match (&config.qlog_dir, &admitted) {
            (Some(dir), Admitted::Serve(_)) => Arc::new(super::endpoint::with_qlog(&quic, &config, dir, session_id)),
            _ => quic,
        };
        let validated = incoming.remote_address_validated();
        let connecting = match accept(incoming, quic) {
            Ok(connecting) => connecting,
            Err(err) => return tracing::debug!(%remote, %err, "handshake failed"),
        };
        let mut admitted = admitted;
        // From now on it awaits Hello (over a count: never closed to make room, bounded by `max_over_limit_handshakes`);
        // a newer connection that it has to make room for cancels its `shutdown`. From an address not validated it is
        // in the table already (`admit`: only where the table has room, and such an attempt gets a Retry while it is
        // full): an Initial anyone can forge entered a full table too, closed a real client awaiting Hello to make
        // room, freed its own handshake's place when the next forged one closed it, and counted the closes as limit
        // breaches. In the table it can still be closed to make room for a validated newcomer, at `max_connections`
        // too.
        if let Admitted::Serve(slot) = &mut admitted {
            slot.await_hello(&shutdown);
        }
        let conn = tokio::select! {
            handshake = tokio::time::timeout_at(deadline, connecting) => match handshake {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return tracing::debug!(%remote, %err, "handshake failed"),
                // From an address never validated (no Retry), an Initial anyone can forge: counted apart, not as a
                // limit breach, which forged packets must not be able to raise (and fire alerts with).
                Err(_) if !validated => {
                    crate::stats::bump(&stats.tls_handshakes_abandoned);
                    return tracing::debug!(%remote, "TLS handshake from an address not validated timed out");
                }
                Err(_) => {
                    stats.refused(ErrorCode::HandshakeTimeout);
                    return tracing::debug!(%remote, "TLS handshake timed out");
                }
            },
            // Dropping the handshake closes the connection (nothing can tell the client why before it completes): to
            // make room for a newer one, or the server shuts down.
            () = shutdown.cancelled() => {
                let (_, reason) = ended_early(&admitted, config.budget.max_awaiting_hello, remote.ip(), &stats);
                return tracing::debug!(%remote, %reason, "closed in its TLS handshake");
            }
        };
        if let Admitted::Serve(slot) = &mut admitted {
            slot.handshaken();
        }
        let span = tracing::info_span!(
            "conn",
            session = %format_args!("{session_id:016x}"),
            %remote,
            identity = tracing::field::Empty
        );
        let path = conn.clone();
        async move {
            let session = if alpn(&conn).as_deref() == Some(ALPN_H3) {
                // Boxed: a browser's CONNECT is a few kilobytes of state that an async fn would otherwise keep room
                // for in every connection's task for its whole life.
                let mut connect = Box::pin(webtransport::accept(conn.clone(), &config.web, deadline, &stats));
                let accepted = tokio::select! {
                    accepted = &mut connect => accepted,
                    () = shutdown.cancelled() => {
                        let max = config.budget.max_awaiting_hello;
                        let (code, reason) = ended_early(&admitted, max, remote.ip(), &stats);
                        // No session yet: an HTTP/3 code (a Quiver one means nothing to an HTTP/3 client).
                        let h3 = match code {
                            ErrorCode::TooManyConnections => webtransport::H3_EXCESSIVE_LOAD,
                            _ => webtransport::H3_NO_ERROR,
                        };
                        conn.close(h3, reason.as_bytes());
                        // The CONNECT's HTTP/3 streams go only after the close (webtransport.rs).
                        drop(connect);
                        return tracing::info!(%reason, "connection closed");
                    }
                };
                drop(connect);
                match accepted {
                    Ok(session) => session,
                    // (Counted where refused: `webtransport::accept`.)
                    Err(reason) => return tracing::info!(%reason, "WebTransport session refused"),
                }
            } else {
                Session::raw(conn)
            };
            let shared = Shared { config, rooms, ticks, stats, auth };
            // One shared handle kept here for `release` (a `Session` is 776 bytes; the handle, 8).
            let session = Arc::new(session);
            let wire = Wire::Quic(session.clone());
            let held = serve_wire(session_id, wire, Some(path), admitted, shared, (deadline, started), shutdown).await;
            // The session's HTTP/3 streams go with its last handle: only once the connection is closed. Its places
            // (`held`) are given back only then too.
            release(session).await;
            drop(held);
        }
        .instrument(span)
        .await
    }
}

/// What a served connection holds until its caller drops it: its admission slot (its place in
/// `max_connections_per_ip` and the like) and its place in the connection gauges. The caller keeps it until the
/// connection underneath is gone (`close::release`, the WebSocket's close grace): a peer that keeps it open
/// (withholding the close's ACKs, ignoring the close capsule) for seconds still counts meanwhile, where it had left
/// its place to a newcomer at once.
#[must_use = "dropping it gives the connection's places back: keep it until the connection is closed"]
pub(super) struct Held {
    _slot: Option<super::admit::Slot>,
    _open: Option<Open>,
    /// A connection over a limit: its place among the handshakes over limits (`max_over_limit_handshakes`).
    _over_limit: Option<super::admit::OverLimit>,
}

/// Serves a connection from its first stream on, whatever carries it: `path` is the QUIC connection underneath
/// (none for a WebSocket), for the tail probe and datagram copies, which only QUIC has. `deadline`: Hello's;
/// `started`: when the connection arrived. The connection is closed on return; what it holds ([`Held`]) is
/// returned.
/// (Not an `async fn`, for the reason [`control`] gives.)
pub(super) fn serve_wire<R: RoomHub>(
    session_id: u64,
    wire: Wire,
    path: Option<quinn::Connection>,
    admitted: Admitted,
    shared: Shared<R>,
    (deadline, started): (Instant, std::time::Instant),
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = Held> {
    let Shared { config, rooms, ticks, stats, auth } = shared;
    async move {
        tracing::debug!(kind = ?wire.kind(), "connected");
        // Over a connection limit: closed only now, so that the client sees the code and why.
        let mut slot = match admitted {
            // (A WebSocket connection awaits Hello from its admission at the TCP accept: this is a no-op for it.)
            Admitted::Serve(mut slot) => {
                slot.await_hello(&shutdown);
                slot
            }
            Admitted::TooMany(reason, over_limit) => {
                stats.refused(ErrorCode::TooManyConnections);
                wire.close(ErrorCode::TooManyConnections, &reason);
                tracing::info!(%reason, "connection refused");
                return Held { _slot: None, _open: None, _over_limit: Some(over_limit) };
            }
        };
        // Copies of redundant rooms' frames go out on the probe timer, in place of the tail probe (QUIC only).
        let tuning = &config.tuning;
        // The first copies go right after the stream write's packet (`TailProbe::sent_with_copies`).
        let queue = CopyQueue::new(tuning.copies, Duration::ZERO, tuning.copy_spacing);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let (probe, probing) = match (&wire, &path) {
            (Wire::Quic(session), Some(path)) => {
                let (probing, queued, counted, path) = (session.clone(), queue.clone(), stats.clone(), path.clone());
                let tail_probe = tuning.tail_probe.is_some();
                let sampled = path.clone();
                let (probe, task) = TailProbe::new(
                    tuning.probe_timing(),
                    move || quiver_transport::path_sample(&sampled),
                    move |written| {
                        copies::send_round((&probing, &path), &queued, tail_probe.then_some(written), &counted)
                    },
                );
                (probe, task.map(|task| tokio_util::task::AbortOnDropHandle::new(tokio::spawn(task))))
            }
            _ => (TailProbe::disabled(), None),
        };
        // Stopped when the connection's task returns.
        let _probing = probing;
        let copies = (path.is_some() && tuning.copies > 0).then_some(queue);
        let open = Open::new(&stats, session_id, path, wire.kind());
        let hubs = (rooms, ticks);
        let counted = (stats.clone(), slot.network_share());
        let mut connection = Connection::start(&wire, &config.limits, hubs, probe, copies, counted, shutdown.clone());
        let session = ControlSession::new(session_id, config.limits.clone(), auth.borrow().clone());
        let hello = (deadline, started, &mut slot, auth);
        let reason = control(&wire, &config, &stats, &mut connection, session, hello, &shutdown).await;
        if let Some(code) = wire.transport_refusal() {
            stats.refused(code); // a breach the WebSocket lane closed for: counted as the server's own refusals are
        }
        connection.close(now_us(), config.budget.frame_timeout()).await;
        tracing::info!(%reason, "connection ended");
        Held { _slot: Some(slot), _open: Some(open), _over_limit: None }
    }
}
