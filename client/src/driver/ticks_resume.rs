//! Putting a connection's subscriptions and publish claims back on a new connection after a reconnect, retrying
//! the server's refusals for now like a room's rejoin.

use std::sync::Arc;

use quiver_proto::ErrorCode;

use super::ticks::{claim_on, subscribe_on, ClaimOrder, PubEntry, SubEntry, TickHandler};
use crate::{
    connection::{Connection, Handler},
    error::RequestError,
    sync::lock,
};

/// Puts a subscription back on a new connection. Refused for good (or for longer), it ends: its readers get `None` and
/// the reason, instead of waiting for ticks that will never come. True when it ended so: the caller forgets it
/// ([`super::ticks::Ticks::forget`]; nothing else would, and each kept its tick buffer and latency histogram, about
/// 190 KB, for as long as the client lived unless the channel was subscribed again). Refused for now (the codes a
/// rejoin retries), it is tried again with the same backoff.
pub(crate) async fn resubscribe<H: TickHandler>(connection: &Connection<H>, entry: &Arc<SubEntry>) -> bool {
    lock(&entry.state).resync(connection.id);
    let refused = retried(&entry.channel, "subscription", connection, || async {
        let _order = entry.order.lock().await;
        if entry.ended.is_cancelled() {
            return None; // unsubscribed meanwhile: nothing to put back
        }
        Some(subscribe_on(connection, entry).await)
    });
    match refused.await {
        Some((code, reason)) => ended(connection, entry, code, reason),
        None => false,
    }
}

/// Puts a publish claim back on a new connection, retrying a refusal for now like [`resubscribe`]; refused for good
/// (or for longer), the claim ends: [`crate::TickPublisher::send`] fails with [`crate::error::TickError::Ended`], and a new
/// publisher of the channel claims it anew. Before, a refused claim was only logged, and its publisher's ticks
/// failed with `NotConnected` for good.
pub(crate) async fn reclaim<H: Handler>(connection: &Connection<H>, entry: &PubEntry, order: &Arc<ClaimOrder>) {
    let refused = retried(&entry.channel, "claim", connection, || async {
        let _turn = order.turn(&entry.channel).await;
        if entry.end_reason().is_some() {
            return None; // another reclaim of it ended it, or it was unpublished: nothing to put back
        }
        Some(claim_on(connection, entry).await)
    });
    let Some((code, reason)) = refused.await else { return };
    // Not if this connection is gone meanwhile (a newer one puts the claim back), nor if a publisher of the channel
    // claimed it on this connection meanwhile; the first reason is kept.
    if connection.close_reason().is_some() || lock(&entry.claim).is_some_and(|(on, _)| on == connection.id) {
        return;
    }
    tracing::warn!(channel = %entry.channel, %code, %reason, "cannot claim the channel again; the claim ends here");
    lock(&entry.ended).get_or_insert((code, reason));
}

/// Runs `attempt` (a request putting `what` of `channel` back) until it is done, retrying a refusal for now (the
/// codes a rejoin retries) with the rejoins' backoff. The refusal for good (after the last try, the last refusal's
/// code), or `None`: done, the connection went again (the supervisor puts it back once it is back; a pause between
/// tries ends with it), or `attempt` found nothing to put back (`None`).
async fn retried<F, Fut, H: Handler>(
    channel: &str,
    what: &str,
    connection: &Connection<H>,
    mut attempt: F,
) -> Option<(ErrorCode, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Result<(), RequestError>>>,
{
    // (A pause ends with the connection: a client closed, or a connection lost, does not keep this task.)
    let closed = connection.link.closed();
    tokio::pin!(closed);
    let mut delay = std::time::Duration::from_millis(50);
    let mut last = (ErrorCode::Unavailable, String::new()); // (the last refusal for now: what it ends with)
    for _ in 0..crate::driver::rooms::RETRIED_REJOINS {
        match attempt().await? {
            Ok(()) | Err(RequestError::Closed { .. }) => return None,
            Err(RequestError::Failed(failure)) if crate::driver::rooms::refused_for_now(failure.code) => {
                tracing::info!(%channel, reason = %failure.message, ?delay, "{what} refused for now; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut closed => return None,
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                last = (failure.code, failure.message);
            }
            Err(RequestError::Failed(failure)) => return Some((failure.code, failure.message)),
            // The server broke the protocol, as for a rejoin answered so (before: `Internal`, "something failed
            // inside the server").
            Err(err @ RequestError::UnexpectedReply(_)) => {
                return Some((ErrorCode::ProtocolViolation, err.to_string()))
            }
            Err(err) => return Some((ErrorCode::Internal, err.to_string())),
        }
    }
    let times = crate::driver::rooms::RETRIED_REJOINS;
    let (code, why) = last;
    Some((code, format!("the server refused to take the {what} back {times} times, the last: {why}")))
}

/// Ends `entry`, refused on `connection`, unless that connection is gone meanwhile: a newer one puts it back. True
/// if it ended it.
fn ended<H: Handler>(connection: &Connection<H>, entry: &SubEntry, code: ErrorCode, reason: String) -> bool {
    if connection.close_reason().is_some() {
        return false;
    }
    tracing::warn!(channel = %entry.channel, %code, %reason, "cannot resubscribe; the subscription ends here");
    entry.end(code, reason);
    true
}
