//! Joining a room again after a reconnect or a slow-consumer kick, retrying the server's refusals for now.

use quiver_proto::{ErrorCode, Join, Reply, RequestBody};

use super::rooms::RoomEntry;
use crate::{
    connection::{Connection, Handler},
    error::RequestError,
    sync::lock,
};

/// A rejoin refused for now (`Unavailable`: the server's broker unreachable; `RateLimited`; `ServerFull`;
/// `Internal`, e.g. a store read that failed) is tried again, this many times at most, with the delay doubling from 50 ms to 2 s (about a minute in all).
pub(crate) const RETRIED_REJOINS: u32 = 40;

/// The refusals a rejoin (or resubscribe) tries again: the server may take it back later.
pub(crate) fn refused_for_now(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::ServerFull | ErrorCode::Internal)
}

/// Joins a room again from its position (after a reconnect, or a slow-consumer kick). A rejoin the server refuses
/// for good (or for longer than [`RETRIED_REJOINS`] tries: with the last refusal's code) ends the room: its reader
/// gets `None` and the reason, instead of waiting for events that will never come.
pub(crate) async fn rejoin<H: Handler>(connection: &Connection<H>, entry: &RoomEntry) {
    let mut delay = std::time::Duration::from_millis(50);
    // The last refusal for now: the room ends with its code once the tries are used up (it ended `Unavailable`
    // whatever the server said, a `ServerFull` read as a broker down; a review's find).
    let mut last = (ErrorCode::Unavailable, String::new());
    for _ in 0..RETRIED_REJOINS {
        let sent = {
            let _order = entry.order.lock().await;
            if entry.ended.is_cancelled() {
                return; // left meanwhile (or ended)
            }
            let since = lock(&entry.state).rejoin_position();
            let join = Join { room: entry.name.clone(), since, redundant: entry.redundant };
            let joining = |req_id| lock(&entry.state).joining((connection.id, req_id));
            connection.send_noting(RequestBody::Join(join), joining).await
        };
        let reply = match sent {
            Ok(reply) => crate::connection::reply(reply).await,
            Err(err) => Err(err),
        };
        match reply {
            // (Joined already: a kick meanwhile is not noted here; its handler has a rejoin follow this one.)
            Ok(Reply::Joined(joined)) => {
                entry.replied(&joined);
            }
            Ok(other) => entry.end(ErrorCode::ProtocolViolation, format!("unexpected reply to Join: {other:?}")),
            // The connection went again: the supervisor rejoins once it is back.
            Err(RequestError::Closed { .. }) => {}
            // The application's own join of the room got there first (it joined while the client reconnected).
            Err(RequestError::Failed(failure)) if failure.code == ErrorCode::AlreadyJoined => {}
            Err(RequestError::Failed(failure)) if refused_for_now(failure.code) => {
                tracing::info!(room = %entry.name, reason = %failure.message, ?delay, "rejoin refused for now; retrying");
                // (The connection gone meanwhile, or the client closed: the supervisor rejoins on the next one.)
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = connection.link.closed() => return,
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                last = (failure.code, failure.message);
                continue;
            }
            Err(RequestError::Failed(failure)) => entry.end(failure.code, failure.message),
            Err(err) => entry.end(ErrorCode::Internal, err.to_string()),
        }
        return;
    }
    let (code, why) = last;
    entry.end(code, format!("the server refused to take the room back {RETRIED_REJOINS} times, the last: {why}"));
}
