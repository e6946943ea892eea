//! The receiving side of a WebSocket connection's streams: the control stream's bounded queue, or a room stream's
//! [`RoomQueue`].

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{room_in::RoomQueue, shared::Inbound, Handle, WsError};

/// The receiving side of a stream.
#[derive(Debug)]
pub struct WsRecv {
    session: Arc<Handle>,
    rx: InboundRx,
    ended: bool,
}

/// Where a stream's bytes wait: the control stream's bounded queue (the reader waits when it is full), or a room
/// stream's, bounded by bytes (see [`RoomQueue`]).
#[derive(Debug)]
enum InboundRx {
    Control(mpsc::Receiver<Inbound>),
    Room(Arc<RoomQueue>),
}

impl Drop for WsRecv {
    fn drop(&mut self) {
        // What its reader will never take no longer counts against the connection's bound.
        if let InboundRx::Room(queue) = &self.rx {
            queue.reader_gone();
        }
    }
}

impl WsRecv {
    pub(super) fn control(session: Arc<Handle>, rx: mpsc::Receiver<Inbound>) -> WsRecv {
        WsRecv { session, rx: InboundRx::Control(rx), ended: false }
    }

    pub(super) fn room(session: Arc<Handle>, queue: Arc<RoomQueue>) -> WsRecv {
        WsRecv { session, rx: InboundRx::Room(queue), ended: false }
    }

    /// Tells the server to stop sending this room stream (kind 6, with `code`: QUIC's STOP_SENDING) and drops what
    /// waits of it; reads end from now on. The control stream is not stopped (the connection's end is a close).
    pub fn stop(&mut self, code: quiver_proto::ErrorCode) {
        if let (InboundRx::Room(queue), false) = (&self.rx, self.ended) {
            queue.reader_gone();
            self.session.0.send_stop(queue.id(), code);
            self.ended = true;
        }
    }

    /// The stream's next bytes; `None` once it ended.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, WsError> {
        if self.ended {
            return Ok(None);
        }
        let next = match &mut self.rx {
            InboundRx::Control(rx) => rx.recv().await,
            InboundRx::Room(queue) => queue.next().await,
        };
        match next {
            Some(Inbound::Data(bytes)) => {
                if let InboundRx::Control(_) = self.rx {
                    let shared = &self.session.0;
                    shared.control_room.add_permits(shared.control_permits(bytes.len()) as usize);
                }
                Ok(Some(bytes))
            }
            Some(Inbound::Finish) => {
                self.ended = true;
                Ok(None)
            }
            Some(Inbound::Reset(code)) => {
                self.ended = true;
                Err(WsError::Reset(code))
            }
            None => Err(self.session.0.closed_error()),
        }
    }
}
