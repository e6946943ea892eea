//! A queue from a connection's other tasks to its control loop that allocates no slots until it is used (the
//! mailbox itself is about 100 bytes). tokio's mpsc channels allocate their first block of 32 slots when they are
//! made: 0.8 KB (kicks) and 1.1 KB (post copies) for every connection, where most connections never see either
//! (docs/benchmarks.md, "10,000 idle connections"). One reader; any number of writers.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::Notify;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    items: Mutex<VecDeque<T>>,
    wake: Notify,
    capacity: usize,
}

impl<T> Mailbox<T> {
    /// A mailbox holding at most `capacity` items (`usize::MAX`: unbounded).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Mailbox { items: Mutex::new(VecDeque::new()), wake: Notify::new(), capacity })
    }

    /// Queues `item`; returns it when the mailbox is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            if items.len() >= self.capacity {
                return Err(item);
            }
            items.push_back(item);
        }
        // Stores a permit when the reader is not waiting: an item pushed between its check and its wait is seen.
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest item, if any.
    pub(crate) fn try_pop(&self) -> Option<T> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }

    /// Waits for the oldest item. Cancel-safe: an item stays queued until this returns it.
    pub(crate) async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin, task::Poll, time::Duration};

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_a_full_mailbox_refuses() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.push(1), Ok(()));
        assert_eq!(mailbox.push(2), Ok(()));
        assert_eq!(mailbox.push(3), Err(3));
        assert_eq!(mailbox.pop().await, 1);
        assert_eq!(mailbox.try_pop(), Some(2));
        assert_eq!(mailbox.try_pop(), None);
        assert_eq!(mailbox.push(3), Ok(()), "room again once read");
    }

    /// Polls `fut` once.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
    }

    /// The control loop's case: a wait woken by a push, then dropped because another branch of its select won.
    #[tokio::test]
    async fn a_wait_dropped_after_its_wake_loses_nothing_and_the_next_wait_still_waits() {
        let mailbox = Mailbox::new(usize::MAX);
        let mut waiting = Box::pin(mailbox.pop());
        assert!(poll_once(&mut waiting).await.is_pending());
        mailbox.push(1).unwrap();
        drop(waiting);
        assert_eq!(mailbox.try_pop(), Some(1), "the item stayed queued");
        // The dropped wake may have left a permit behind: a new wait must not return without an item.
        let mut waiting = Box::pin(mailbox.pop());
        assert!(poll_once(&mut waiting).await.is_pending());
        mailbox.push(2).unwrap();
        assert_eq!(poll_once(&mut waiting).await, Poll::Ready(2));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push_from_another_task() {
        let mailbox = Mailbox::new(usize::MAX);
        // A wait given up before anything arrives (as when another branch of a select wins).
        assert!(tokio::time::timeout(Duration::from_millis(10), mailbox.pop()).await.is_err());
        let writer = mailbox.clone();
        let pushed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            writer.push("a").unwrap();
            writer.push("b").unwrap();
        });
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), mailbox.pop()).await, Ok("a"));
        pushed.await.unwrap();
        assert_eq!(mailbox.pop().await, "b");
    }
}
