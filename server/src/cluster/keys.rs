//! Key and channel names in Redis. Every key of a room carries the room's name as its hash tag (`{…}`, with `%`, `{`
//! and `}` escaped), so that one script reaches all of them on Redis Cluster too.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `q:{room}:meta` | hash | `epoch` (decimal string), `seq` (last message), `op` (last published event) |
//! | `q:{room}:log` | stream | one entry per message, id `<seq>-0`, fields `o` (op), `t` (time µs), `p` (payload) |
//! | `q:{room}:members` | hash | identity → subscriptions on all nodes |
//! | `q:{room}:holders:<node>` | hash | subscription id → identity, for that node's subscriptions |
//! | `q:{room}:d:<identity>:<client_msg_id>` | string | `<epoch>:<seq>`, expiring after the dedupe window |
//! | `q:{room}:dring` | list | the room's dedupe keys, oldest first: past `dedupe_max_entries` (+ 64) the oldest are deleted |
//! | `q:{room}:gone:<node>:<subscription>` | string | a subscription's leave ran before its join: the join counts nothing (15 min) |
//! | `q:{room}:events` | channel | every event of the room, in script order |
//! | `q:{nodes}` | sorted set | node id → last heartbeat (ms since the Unix epoch) |
//! | `q:node:<node>:rooms` | set | rooms where the node holds members |
//! | `q:node:<node>:ticks` | set | tick channels the node has subscribers on |
//! | `q:{nodes}:mark:<node>` | string | the node's token, set by its beats, deleted when it is buried |
//! | `q:ticks:<channel>` | channel | ticks relayed between nodes |
//! | `q:control` | channel | `+ <node> <channel>`, `- <node> <channel>`, `dead <node>` |

/// The sorted set of live nodes.
pub const NODES: &str = "q:{nodes}";
/// The channel of interest announcements.
pub const CONTROL: &str = "q:control";

/// The hash tag of a room's keys: its name with `%`, `{` and `}` escaped.
fn tag(room: &str) -> String {
    let mut out = String::with_capacity(room.len() + 2);
    out.push('{');
    for c in room.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.push('}');
    out
}

/// The keys of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeys {
    /// `q:{room}:meta`.
    pub meta: String,
    /// `q:{room}:log`.
    pub log: String,
    /// `q:{room}:members`.
    pub members: String,
    /// `q:{room}:events` (a channel).
    pub events: String,
    prefix: String,
}

/// `q:{room}:`, what every key of `room` starts with.
fn prefix(room: &str) -> String {
    format!("q:{}:", tag(room))
}

/// Writes the post script's keys into `call` (meta, log, members, the post's dedupe key, the dedupe ring, as
/// [`RoomKeys`] names them)
/// and returns the room's events channel: a post's hot path, one buffer instead of a [`RoomKeys`] per post.
pub fn write_post_keys(call: &mut redis::Cmd, room: &str, identity: &str, client_msg_id: u64) -> String {
    use std::fmt::Write;
    let mut key = prefix(room);
    key.reserve(identity.len() + 24);
    let base = key.len();
    for suffix in ["meta", "log", "members"] {
        key.truncate(base);
        key.push_str(suffix);
        call.arg(key.as_str());
    }
    key.truncate(base);
    let _ = write!(key, "d:{identity}:{client_msg_id}"); // writing to a String cannot fail
    call.arg(key.as_str());
    key.truncate(base);
    key.push_str("dring");
    call.arg(key.as_str());
    key.truncate(base);
    key.push_str("events");
    key
}

impl RoomKeys {
    /// The keys of `room`.
    pub fn new(room: &str) -> RoomKeys {
        let prefix = prefix(room);
        RoomKeys {
            meta: format!("{prefix}meta"),
            log: format!("{prefix}log"),
            members: format!("{prefix}members"),
            events: format!("{prefix}events"),
            prefix,
        }
    }

    /// `q:{room}:holders:<node>`.
    pub fn holders(&self, node: &str) -> String {
        format!("{}holders:{node}", self.prefix)
    }

    /// `q:{room}:gone:<node>:<subscription>`: the tombstone of a subscription left before its join ran.
    pub fn gone(&self, node: &str, subscription: u64) -> String {
        format!("{}gone:{node}:{subscription}", self.prefix)
    }

    /// `q:{room}:buried:<node>`: the mark of `node`'s burial in the room, which keeps a join of the node's that
    /// runs late from counting a member nobody would take out.
    pub fn buried(&self, node: &str) -> String {
        format!("{}buried:{node}", self.prefix)
    }

    /// `q:{room}:d:<identity>:<client_msg_id>`.
    pub fn dedupe(&self, identity: &str, client_msg_id: u64) -> String {
        format!("{}d:{identity}:{client_msg_id}", self.prefix)
    }

    /// `q:{room}:dring`: the room's dedupe keys, oldest first.
    pub fn dedupe_ring(&self) -> String {
        format!("{}dring", self.prefix)
    }
}

/// `q:node:<node>:rooms`.
pub fn node_rooms(node: &str) -> String {
    format!("q:node:{node}:rooms")
}

/// `q:node:<node>:ticks`.
pub fn node_ticks(node: &str) -> String {
    format!("q:node:{node}:ticks")
}

/// `q:{nodes}:mark:<node>`: set by the node, deleted when it is buried.
pub fn node_mark(node: &str) -> String {
    format!("q:{{nodes}}:mark:{node}")
}

/// `q:ticks:<channel>`.
pub fn tick_channel(channel: &str) -> String {
    format!("q:ticks:{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_keys_share_one_hash_tag_whatever_its_name() {
        let keys = RoomKeys::new("a{b}%c");
        assert_eq!(keys.meta, "q:{a%7Bb%7D%25c}:meta");
        for key in
            [&keys.log, &keys.members, &keys.events, &keys.holders("n1"), &keys.dedupe("x}{", 7), &keys.gone("n1", 3)]
                .into_iter()
                .chain([&keys.dedupe_ring(), &keys.buried("n1")])
        {
            // Redis Cluster hashes the text between the first `{` and the first `}` after it.
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            assert_eq!(&key[open..=close], "{a%7Bb%7D%25c}", "{key}");
        }
        assert_ne!(RoomKeys::new("a%7B").meta, RoomKeys::new("a{").meta);
    }

    #[test]
    fn a_posts_keys_are_the_rooms_keys() {
        let keys = RoomKeys::new("a{b}%c");
        let mut call = redis::cmd("EVALSHA");
        let events = write_post_keys(&mut call, "a{b}%c", "x}{", 7);
        let written: Vec<Vec<u8>> = call
            .args_iter()
            .skip(1)
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => panic!("a key is a simple argument"),
            })
            .collect();
        let expected = [&keys.meta, &keys.log, &keys.members, &keys.dedupe("x}{", 7), &keys.dedupe_ring()];
        assert_eq!(written, expected.map(|key| key.as_bytes().to_vec()));
        assert_eq!(events, keys.events);
    }
}
