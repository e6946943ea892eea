//! Every limit of the protocol, in one place. The server is configured with a [`Limits`], enforces it, and reports
//! it to each client in `Welcome`, so a client knows the bounds before it hits them.

use serde::{Deserialize, Serialize};

/// The bounds a server enforces on each connection. Defaults are documented on each field and in `docs/limits.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// Largest stream frame (length prefix value) either side accepts, in bytes. Default 65,536.
    pub max_frame: u32,
    /// Largest post body, in bytes. Default 16,384 (leaves room for the frame's other fields).
    pub max_body: u32,
    /// Longest room or channel name, in bytes of UTF-8. Default 128.
    pub max_name: u32,
    /// Rooms one connection may have joined at once. Default 64.
    pub max_rooms: u32,
    /// Tick channels one connection may subscribe to at once. Default 256.
    pub max_subscriptions: u32,
    /// Tick channels one connection may claim for publishing at once. Default 64.
    pub max_publish_channels: u32,
    /// Bytes a room stream may have queued toward a slow client before it is reset with `SlowConsumer`.
    /// Default 262,144.
    pub room_queue_bytes: u32,
    /// Time a new connection has to send Hello, in milliseconds. Default 10,000.
    pub handshake_timeout_ms: u32,
    /// Messages each room retains for history and resume. Default 1,000.
    pub history_max_messages: u32,
    /// Seconds a message stays in a room's history. Default 86,400 (one day).
    pub history_max_age_s: u32,
    /// Latest messages replayed on a Join whose `since` cannot be recovered. Default 100.
    pub gap_replay: u32,
    /// Seconds a `(identity, client_msg_id)` is remembered per room so a retried post is not delivered twice.
    /// Default 600.
    pub dedupe_window_s: u32,
    /// `(identity, client_msg_id)` entries remembered per room at most (oldest forgotten first). Default 10,000.
    pub dedupe_max_entries: u32,
}

impl Limits {
    /// Bytes a room event adds around a post body at most: seq, time, client_msg_id (10 bytes each as varints),
    /// the sender name (length + `max_name` bytes), enum tags and the body's length prefix.
    pub fn event_overhead(&self) -> u32 {
        3 * 10 + 5 + self.max_name + 16
    }

    /// Checks that the limits fit together: any post within `max_body` must fit a room frame, and a room stream's
    /// queue must hold at least one frame.
    pub fn check(&self) -> Result<(), String> {
        let needed = self.max_body.saturating_add(self.event_overhead());
        if self.max_frame < needed {
            return Err(format!(
                "max_frame {} is too small for max_body {} (a room event needs up to {needed} bytes)",
                self.max_frame, self.max_body
            ));
        }
        if self.room_queue_bytes < self.max_frame {
            return Err(format!(
                "room_queue_bytes {} is smaller than max_frame {}",
                self.room_queue_bytes, self.max_frame
            ));
        }
        if self.max_name == 0 || self.max_rooms == 0 {
            return Err("max_name and max_rooms must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 * 1024,
            max_body: 16 * 1024,
            max_name: 128,
            max_rooms: 64,
            max_subscriptions: 256,
            max_publish_channels: 64,
            room_queue_bytes: 256 * 1024,
            handshake_timeout_ms: 10_000,
            history_max_messages: 1_000,
            history_max_age_s: 86_400,
            gap_replay: 100,
            dedupe_window_s: 600,
            dedupe_max_entries: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_together_and_bad_combinations_are_named() {
        Limits::default().check().unwrap();
        let err = Limits { max_frame: 1000, ..Limits::default() }.check().unwrap_err();
        assert!(err.contains("max_frame 1000"), "{err}");
        let err = Limits { room_queue_bytes: 10, ..Limits::default() }.check().unwrap_err();
        assert!(err.contains("room_queue_bytes 10"), "{err}");
    }
}
