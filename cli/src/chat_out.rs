//! How `quiver chat` prints what it reads and posts: lines for people (every peer-controlled text made safe for a
//! terminal), or one JSON object per line for scripts.

use quiver_client::{ConnectionState, Message, RoomEvent};
use serde::Serialize;

use crate::chat::{terminal_line, terminal_name, terminal_text, text};

/// One line of `quiver chat --json`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChatLine<'a> {
    Message { room: &'a str, epoch: u64, seq: u64, time_us: u64, sender: &'a str, client_msg_id: u64, body: String },
    Ack { room: &'a str, line: u64, seq: u64, epoch: Option<u64> },
    PostFailed { room: &'a str, line: u64, error: String },
    Joined { member: &'a str },
    Left { member: &'a str },
    Resumed { recovered: bool },
    State { state: &'static str, detail: String },
}

/// How `quiver chat` prints: lines for people, or JSON objects.
pub(crate) struct Out {
    pub(crate) json: bool,
    pub(crate) room: String,
}

impl Out {
    fn json(&self, line: &ChatLine<'_>) {
        match serde_json::to_string(line) {
            Ok(text) => crate::out!("{text}"),
            Err(err) => crate::err!("* cannot encode an event: {err}"),
        }
    }

    /// Prints `event`; returns its seq when it is a message (else 0).
    pub(crate) fn event(&self, event: &RoomEvent) -> u64 {
        let seq = match event {
            RoomEvent::Message(m) => m.seq,
            _ => 0,
        };
        self.print_event(event);
        seq
    }

    fn print_event(&self, event: &RoomEvent) {
        if self.json {
            let line = match event {
                RoomEvent::Message(m) => ChatLine::Message {
                    room: &self.room,
                    epoch: m.epoch,
                    seq: m.seq,
                    time_us: m.time_us,
                    sender: &m.sender,
                    client_msg_id: m.client_msg_id,
                    body: text(&m.body),
                },
                RoomEvent::MemberJoined { member } => ChatLine::Joined { member },
                RoomEvent::MemberLeft { member } => ChatLine::Left { member },
                RoomEvent::Resumed { recovered, .. } => ChatLine::Resumed { recovered: *recovered },
            };
            return self.json(&line);
        }
        match event {
            RoomEvent::Message(m) => print_message(m),
            RoomEvent::MemberJoined { member } => crate::out!("* {} joined", terminal_name(member)),
            RoomEvent::MemberLeft { member } => crate::out!("* {} left", terminal_name(member)),
            RoomEvent::Resumed { recovered: true, .. } => crate::err!("* resumed; nothing missed"),
            RoomEvent::Resumed { recovered: false, .. } => {
                crate::err!("* resumed; messages were missed, showing the latest")
            }
        }
    }

    pub(crate) fn state(&self, state: &ConnectionState) {
        if self.json {
            let name = match state {
                ConnectionState::Connected { .. } => "connected",
                ConnectionState::Reconnecting { .. } => "reconnecting",
                ConnectionState::Closed { .. } => "closed",
            };
            return self.json(&ChatLine::State { state: name, detail: state.to_string() });
        }
        crate::err!("* {}", terminal_line(&state.to_string()));
    }

    pub(crate) fn posted(
        &self,
        line: u64,
        result: Result<u64, quiver_client::RequestError>,
        epoch: Option<u64>,
        text: &str,
    ) {
        match (result, self.json) {
            (Ok(seq), true) => self.json(&ChatLine::Ack { room: &self.room, line, seq, epoch }),
            (Ok(_), false) => {}
            (Err(err), true) => self.json(&ChatLine::PostFailed { room: &self.room, line, error: err.to_string() }),
            (Err(err), false) => {
                crate::err!("* post of line {line} failed ({}): {text}", terminal_line(&err.to_string()))
            }
        }
    }
}

fn print_message(m: &Message) {
    crate::out!("[{}] {}: {}", m.seq, terminal_name(&m.sender), terminal_text(&m.body));
}
