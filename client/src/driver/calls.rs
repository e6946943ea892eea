//! The application's calls that write to the control stream (requests, subscribes, claims, unsubscribes; joins
//! and leaves are in [`super::rooms`]). Each runs on a task of its own ([`Driver::detached`]): the application may
//! drop its future at any await (a timeout around it, a `select!`), and a frame half-written when it did would
//! corrupt the control stream, an unsubscribe stopped between ending its entry and writing its Unsubscribe would
//! leave the server's subscription behind. Once started, a call finishes whether or not anyone waits for it.

use std::{future::Future, sync::Arc, time::Instant};

use quiver_proto::{ErrorCode, Reply, RequestBody};

use super::{Driver, Live, PubEntry, SubEntry};
use crate::{clock::unix_us, error::RequestError};

/// How many connections [`Driver::across_reconnects`] tries a call on before its `Closed` is the application's.
pub(crate) const TRIES_ACROSS_RECONNECTS: u32 = 3;

/// How long after its last publisher is dropped a claim is given up: ticks sent just before arrive first.
pub(crate) const UNPUBLISH_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

impl Driver {
    /// Runs `work` on a task of its own and waits for its outcome; dropping the returned future does not stop it.
    pub(crate) async fn detached<T, F>(&self, work: impl FnOnce(Arc<Driver>) -> F) -> Result<T, RequestError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RequestError>> + Send + 'static,
    {
        let driver = self.me.upgrade().ok_or_else(|| RequestError::closed(self.end_reason()))?;
        match self.spawn(work(driver)).await {
            Ok(outcome) => outcome,
            Err(err) => Err(RequestError::closed((ErrorCode::Internal, format!("the request's task ended: {err}")))),
        }
    }

    /// Spawns `task` on the client's runtime, tracked with its other tasks.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.tasks.spawn_on(task, &self.runtime)
    }

    /// One request on the current connection. Not retried.
    pub(crate) async fn request(&self, body: RequestBody) -> Result<Reply, RequestError> {
        let sent = self.detached(move |driver| async move { driver.live().await?.send(body).await }).await?;
        crate::connection::reply(sent).await
    }

    /// A request that only reads (History): sent again on the next connection if its own drops before the reply
    /// ([`Driver::across_reconnects`]).
    pub(crate) async fn read(&self, body: RequestBody) -> Result<Reply, RequestError> {
        self.detached(move |driver| async move {
            let body = &body;
            let read = |live: Arc<Live>| async move { crate::connection::reply(live.send(body.clone()).await?).await };
            driver.across_reconnects(read, || false).await
        })
        .await
    }

    /// Runs `attempt` on the current connection; if that connection is lost before the attempt is answered (its
    /// `Closed`, or `Unavailable` from a server that then closes it: [`ends_soon`]), runs it again on the next one, up
    /// to [`TRIES_ACROSS_RECONNECTS`] connections in all. For what
    /// the server may take twice without harm, and what a lost connection undoes anyway (a Join or Subscribe of a
    /// connection that is gone holds nothing), so a reconnect of a moment does not fail the application's call.
    /// Once the client ends, the caller gives up (`given_up`), or no connection comes back within `connect_timeout`,
    /// the last `Closed` is returned.
    pub(crate) async fn across_reconnects<T, F>(
        &self,
        mut attempt: impl FnMut(Arc<Live>) -> F,
        given_up: impl Fn() -> bool,
    ) -> Result<T, RequestError>
    where
        F: Future<Output = Result<T, RequestError>>,
    {
        let mut live = self.live().await?;
        let mut tries = 1;
        loop {
            let done = attempt(live.clone()).await;
            let may_retry = || tries < TRIES_ACROSS_RECONNECTS && !self.stop.is_cancelled() && !given_up();
            let lost = match &done {
                Err(RequestError::Closed { .. }) => live.is_done(),
                // A draining server (its shutdown, the token's expiry) refuses what it holds so, then closes.
                Err(RequestError::Failed(failure)) if failure.code == ErrorCode::Unavailable && may_retry() => {
                    ends_soon(&live).await
                }
                _ => false,
            };
            match done {
                Err(err) if lost && may_retry() => {
                    tracing::debug!(%err, "the connection went under a request; sending it again on the next one");
                    live = self.live().await.map_err(|_| err)?;
                    tries += 1;
                }
                done => return done,
            }
        }
    }

    /// A Ping on the current connection: its reply, when it was written and its `client_time_us`.
    pub(crate) async fn ping(&self) -> Result<(Reply, Instant, u64), RequestError> {
        let (sent, at, client_time_us) = self
            .detached(move |driver| async move {
                let live = driver.live().await?;
                let (at, client_time_us) = (Instant::now(), unix_us());
                Ok((live.send(RequestBody::Ping { client_time_us }).await?, at, client_time_us))
            })
            .await?;
        Ok((crate::connection::reply(sent).await?, at, client_time_us))
    }

    /// The driver's current connection, if it is no longer `used`: a request answered on `used` was answered on a
    /// connection that has been replaced, perhaps after the reconnect put back what was confirmed then.
    pub(crate) fn replaced(&self, used: &Live) -> Option<Arc<Live>> {
        self.current.borrow().clone().filter(|current| current.id != used.id)
    }

    /// Subscribes to `channel`: a handle of it (held by `handle`'s client). Answered on a connection replaced
    /// meanwhile, the subscription is put on the new one too (the server's subscribe is idempotent: a reconnect
    /// that put it back already costs nothing). The handle is made on the detached task: one the caller gave up
    /// waiting for is dropped there, and counts no more.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        handle: super::WeakHandle,
    ) -> Result<crate::TickSubscription, RequestError> {
        let channel = channel.to_string();
        self.detached(move |driver| async move {
            let (ticks, channel) = (&driver.ticks, &channel);
            let subscribe = |live: Arc<Live>| async move { Ok((ticks.subscribe(&*live, channel).await?, live)) };
            let ((entry, asked), live) = driver.across_reconnects(subscribe, || false).await?;
            let subscription = crate::TickSubscription { entry, handle: handle.upgrade()? };
            // (A subscription shared without asking is the reconnect's to put back, as any confirmed one.)
            if let Some(current) = driver.replaced(&live).filter(|_| asked) {
                let again = subscription.entry.clone();
                let me = driver.clone();
                driver.spawn(async move {
                    if super::ticks::resubscribe(&current, &again).await {
                        me.ticks.forget(&again);
                    }
                });
            }
            Ok(subscription)
        })
        .await
    }

    /// Claims `channel` for publishing: a handle of the claim (held by `handle`'s client), made on the detached
    /// task as a subscription's is.
    pub(crate) async fn publisher(
        &self,
        channel: &str,
        max_age_ms: Option<u32>,
        handle: super::WeakHandle,
    ) -> Result<crate::TickPublisher, RequestError> {
        let channel = channel.to_string();
        self.detached(move |driver| async move {
            let (ticks, channel) = (&driver.ticks, &channel);
            let claim =
                |live: Arc<Live>| async move { Ok((ticks.publisher(&*live, channel, max_age_ms).await?, live)) };
            let (entry, live) = driver.across_reconnects(claim, || false).await?;
            let publisher = crate::TickPublisher { entry, handle: handle.upgrade()? };
            if let Some(current) = driver.replaced(&live) {
                // As a subscribe's (above): claims are idempotent too.
                let (again, order) = (publisher.entry.clone(), driver.ticks.claim_order());
                driver.spawn(async move { super::ticks::reclaim(&current, &again, &order).await });
            }
            Ok(publisher)
        })
        .await
    }

    /// Gives up `entry`'s claim ([`super::ticks::Ticks::unpublish`]); `Ok` at once if it had ended already. As an
    /// unsubscribe, never fails for the connection's sake (a connection lost under it took the claim with it).
    pub(crate) async fn unpublish(&self, entry: &Arc<PubEntry>) -> Result<(), RequestError> {
        let entry = entry.clone();
        let sent = self
            .detached(
                move |driver| async move { driver.ticks.unpublish(|| driver.current.borrow().clone(), &entry).await },
            )
            .await;
        let_go(sent, |reply| matches!(reply, Reply::Unpublished { .. })).await
    }

    /// One of `entry`'s publishers was dropped: the last one gives the claim up on the server, [`UNPUBLISH_GRACE`]
    /// later, in the background
    /// (as the last subscription handle unsubscribes): it counted against `max_publish_channels` until the
    /// connection ended, so a publisher made and dropped per match ran out of channels.
    pub(crate) fn publisher_dropped(&self, entry: &Arc<PubEntry>) {
        let last = self.ticks.publisher_dropped(entry);
        // (A version-4 session has no Unpublish: it keeps the claim until the connection ends, as before.)
        let speaks_unpublish = self.welcome().version >= 5;
        let going_on = last && speaks_unpublish && entry.end_reason().is_none() && !self.stop.is_cancelled();
        let driver = self.me.upgrade().filter(|_| going_on);
        let Some(driver) = driver else { return };
        let entry = entry.clone();
        self.spawn(async move {
            // After a grace: ticks sent just before the drop are read on the server by another task than the
            // Unpublish, and one taken after it would be dropped as unclaimed.
            tokio::select! {
                () = driver.stop.cancelled() => return,
                () = tokio::time::sleep(UNPUBLISH_GRACE) => {}
            }
            let current = || driver.current.borrow().clone();
            drop(driver.ticks.unpublish_unheld(current, &entry).await);
        });
    }

    /// Ends `entry` for all its readers and tells the server; `Ok` at once if it had ended already (unsubscribed
    /// through another handle, or refused at a resubscribe: the server has no such subscription, and a newer one
    /// of the channel is not touched). As a room's leave, never fails for the connection's sake.
    pub(crate) async fn unsubscribe(&self, entry: &Arc<SubEntry>) -> Result<(), RequestError> {
        let entry = entry.clone();
        let sent = self.detached(move |driver| async move { driver.write_unsubscribe(&entry, false).await }).await;
        let_go(sent, |reply| matches!(reply, Reply::Unsubscribed { .. })).await
    }

    /// One of `entry`'s handles was dropped: the last one unsubscribes, in the background (not waiting for the reply).
    pub(crate) fn subscription_dropped(&self, entry: &Arc<SubEntry>) {
        let last = entry.handles.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1;
        let driver = self.me.upgrade().filter(|_| last && !entry.ended.is_cancelled() && !self.stop.is_cancelled());
        let Some(driver) = driver else { return };
        let entry = entry.clone();
        self.spawn(async move { drop(driver.write_unsubscribe(&entry, true).await) });
    }

    /// Ends `entry` and writes its Unsubscribe (unless it had ended, or, `if_unheld`, a subscribe handed out a new
    /// handle of it meanwhile); its reply, if one was written. Refused `RateLimited`, it goes again
    /// ([`crate::connection::until_taken`]), a subscribe of the channel meanwhile waiting for it.
    async fn write_unsubscribe(
        &self,
        entry: &Arc<SubEntry>,
        if_unheld: bool,
    ) -> Result<Option<crate::connection::Answered<Driver>>, RequestError> {
        // Ordered with the entry's subscribes and resubscribes (`SubEntry::order`), which count its handles.
        let _order = entry.order.lock().await;
        let held = if_unheld && entry.handles.load(std::sync::atomic::Ordering::Acquire) > 0;
        if entry.ended.is_cancelled() || held {
            return Ok(None);
        }
        entry.end(ErrorCode::NoError, "unsubscribed".into());
        // A channel subscribed again gets a new id from the server: the old route would only grow the table.
        let current = self.current.borrow().clone();
        if let Some(connection) = current {
            connection.unroute(|route| Arc::ptr_eq(route, entry));
        }
        // No connection up now: nothing of it is on a server, and no resubscribe takes an ended entry back (they
        // write under this lock): nothing to write or wait for.
        let live = self.current.borrow().clone().filter(|live| live.close_reason().is_none());
        let answered = match live {
            Some(live) => {
                let body = RequestBody::Unsubscribe { channel: entry.channel.clone() };
                Some((crate::connection::until_taken(&live, body).await, live))
            }
            None => None,
        };
        // Forgotten once its Unsubscribe is answered: a subscribe of the channel meanwhile found it (ended) and
        // waits for this lock, so that its Subscribe comes after.
        self.ticks.forget(entry);
        Ok(answered)
    }
}

/// How long a connection whose server refused a request `Unavailable` is given to close before the refusal is
/// taken as the answer ([`ends_soon`]): a draining server closes once the posts it took are answered, which it waits
/// for up to its `frame_timeout_ms` (5 s by default) when its room store is behind. A refusal that stands (the
/// server's broker unreachable) reaches the application this much later.
const ENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// True when `live`, whose server refused a request `Unavailable`, is gone or goes within [`ENDING_WAIT`]: a server
/// shutting down (or a session whose token expired) refuses the requests it still holds so, "retry once
/// reconnected", and closes; the request then belongs on the next connection. A refusal on a connection that stays
/// (the server's broker or room store unreachable for now) is the answer.
async fn ends_soon(live: &Live) -> bool {
    if !live.is_done() {
        let _ = tokio::time::timeout(ENDING_WAIT, live.link.closed()).await;
    }
    live.is_done()
}

/// A Leave's, an Unsubscribe's or an Unpublish's outcome (`answer`: its reply, if one was written, and the
/// connection it came on: [`crate::connection::until_taken`]; `answered`: the reply expected). Never fails for the
/// connection's sake: a connection lost under it ends what it let go with it (so does one whose draining server
/// refused it `Unavailable` and closed it), and `NotJoined` means the server had let it go already (a reconnect that
/// did not take it back).
pub(crate) async fn let_go(
    answer: Result<Option<crate::connection::Answered<Driver>>, RequestError>,
    answered: fn(&Reply) -> bool,
) -> Result<(), RequestError> {
    let (reply, live) = match answer {
        Ok(Some((reply, live))) => (reply, Some(live)),
        Ok(None) => return Ok(()),
        Err(err) => (Err(err), None),
    };
    match reply {
        Ok(reply) if answered(&reply) => Ok(()),
        Err(RequestError::Closed { .. }) => Ok(()),
        Err(RequestError::Failed(failure)) if failure.code == ErrorCode::NotJoined => Ok(()),
        Err(RequestError::Failed(failure)) if failure.code == ErrorCode::Unavailable => match live {
            Some(live) if ends_soon(&live).await => Ok(()),
            _ => Err(RequestError::Failed(failure)),
        },
        Ok(other) => Err(RequestError::unexpected(other)),
        Err(err) => Err(err),
    }
}
