//! Many Quiver nodes on one Redis (DESIGN.md §6, docs/cluster.md): rooms sequenced, stored and fanned out through
//! Redis ([`RedisRooms`]), presence kept there with per-node heartbeats, and ticks relayed between nodes only for
//! channels another node has subscribers on ([`ClusterTicks`]). Without a broker the single-node hubs stay.
//!
//! - [`Broker`]: this node's connections to Redis (a pipelined, reconnecting connection for commands and scripts,
//!   one Pub/Sub connection re-subscribed after every reconnect), its id and heartbeat, and the clean-up of nodes
//!   that stopped beating.
//! - [`keys`]: every key and channel name; the keys of one room share a hash tag (Redis Cluster).
//! - `scripts`: the Lua scripts that make each room operation atomic in Redis.

mod broker;
mod error;
mod event;
mod history;
mod interest;
pub mod keys;
mod membership;
mod node_room;
mod posts;
mod replay;
mod rollback;
mod rooms;
mod scripts;
mod settings;
mod stream;
mod ticks;
mod transit;

pub use broker::{Broker, BrokerConfig};
pub use error::{BrokerError, Unreachable};
pub use rooms::RedisRooms;
pub use settings::BrokerSettings;
pub use ticks::ClusterTicks;

/// The post script's source, for tests that play another node loading it into Redis.
#[doc(hidden)]
pub fn post_script_source() -> &'static str {
    &scripts::POST_SOURCE
}

/// The SHA-1 of the script that reads a room's stream for a gap fill or a paged replay (its `EVALSHA` names it):
/// for tests that stage a failed or held read.
#[doc(hidden)]
pub fn stream_read_script_sha() -> &'static str {
    scripts::RANGE_IN_EPOCH_SCRIPT.get_hash()
}
