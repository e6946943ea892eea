//! Server-wide counters: what was dropped and why, so that hostile or broken peers show up in numbers, not in a
//! crash or a log flood.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Counters, updated with relaxed atomics from every connection task.
        #[derive(Debug, Default)]
        pub struct ServerStats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl ServerStats {
            /// The counters now.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Datagrams whose tick header does not decode.
    datagrams_malformed,
    /// Datagrams naming a channel id this connection never got.
    datagrams_unknown_channel,
    /// Datagrams on a channel this connection subscribed to but did not claim with Publish.
    datagrams_unclaimed,
    /// Ticks accepted from publishers.
    ticks_published,
    /// Ticks handed to QUIC for a subscriber.
    ticks_sent,
    /// Ticks replaced by a newer one before they could be sent (latest wins).
    ticks_conflated,
    /// Ticks dropped for being older than their channel's max age when their turn came.
    ticks_expired,
    /// Ticks that did not fit a subscriber's path (its max datagram size is smaller than the publisher's).
    ticks_too_large,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
