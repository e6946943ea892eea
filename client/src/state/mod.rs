//! The client's protocol state without IO, mirroring the browser client's `state.js`: everything here is plain Rust
//! fed with replies, frames and numbers, tested without sockets or clocks. The driver owns the tasks and sockets
//! and asks these types what to do.
//!
//! - [`requests`]: the control stream's outstanding requests (ids, one reply each, failing all on close).
//! - [`room`]: a joined room's position, members and the events a stream's frames become (dedupe, resume).
//! - [`merge`]: a redundant room stream's frames from the stream and from datagram copies, each once, in order.
//! - [`posts`]: posts in order, pipelined, re-sent after a reconnect until acknowledged.
//! - [`pacer`]: posts paced under the server's post rate.
//! - [`backoff`]: the reconnect delays.
//! - [`ticks`]: a subscription's latest-wins bookkeeping and statistics.
//! - [`clock`]: the server clock's offset from Ping/Pong samples.

pub mod backoff;
pub mod clock;
pub mod merge;
pub mod pacer;
pub mod posts;
pub mod requests;
pub mod room;
pub mod ticks;
