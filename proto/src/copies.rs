//! Datagram copies of reliable data (redundant delivery, opt-in per room with `Join::redundant`). A copy datagram
//! starts with the varint 0, a channel id the server never assigns to a tick channel, then its kind:
//!
//! ```text
//! room copy  (server → client): 0 || 0 || varint slot || varint first_position || frame+
//! post copy  (client → server): 0 || 1 || varint first_request || frame+
//! frame = varint length || postcard body      (the very bytes of the stream's frame)
//! ```
//!
//! A room copy carries frames of the room stream named by `slot` ([`crate::RoomFrame::Copies`]) at consecutive
//! positions from `first_position` (a frame's position is the number of frames before it on the stream). A post
//! copy carries `Request`s whose body is a `Post`, the first being the connection's `first_request`-th request after
//! Hello on its control stream (counting from 1; every request counts, not only posts: a Join written before the
//! post is numbered too), the next ones consecutive. The stream stays the source of truth: a receiver
//! takes each position (each post number) once, from whichever path brings it first, and never out of order.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};

use crate::varint;

/// The channel id of copy datagrams: tick channel ids start at 1.
pub const COPY_CHANNEL: u64 = 0;

/// Most frames one copy datagram may carry.
pub const MAX_COPY_FRAMES: usize = 16;

const ROOM: u64 = 0;
const POSTS: u64 = 1;

/// A decoded copy datagram. Frames are their bodies (the length prefix removed), slices of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// Frames of room stream `slot`, at positions `first`, `first + 1`, ...
    Room {
        /// The stream's slot ([`crate::RoomFrame::Copies`]).
        slot: u64,
        /// Position of the first frame.
        first: u64,
        /// Frame bodies (`postcard(RoomFrame)`).
        frames: Vec<Bytes>,
    },
    /// Post requests numbered `first`, `first + 1`, ... among the connection's requests after Hello (all of them,
    /// not only posts: docs/protocol.md, "Request numbers").
    Posts {
        /// Number of the first post's request (1 is the connection's first request after Hello).
        first: u64,
        /// Frame bodies (`postcard(Request)`).
        frames: Vec<Bytes>,
    },
}

/// Why a datagram is not a valid copy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// Its channel id is not [`COPY_CHANNEL`] (it may be a tick).
    #[error("not a copy datagram")]
    NotACopy,
    /// The kind is neither room (0) nor posts (1).
    #[error("unknown copy kind {0}")]
    UnknownKind(u64),
    /// The datagram ended inside its header or a frame.
    #[error("copy datagram ends inside {0}")]
    Truncated(&'static str),
    /// A frame announces more than the frame limit.
    #[error("copied frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// No frame, or more than [`MAX_COPY_FRAMES`].
    #[error("a copy carries 1 to {MAX_COPY_FRAMES} frames, this one {0}")]
    FrameCount(usize),
}

/// True when `datagram` starts with the copy channel id and is not the probe.
pub fn is_copy(datagram: &[u8]) -> bool {
    datagram.len() > 1 && matches!(varint::decode(datagram), Some((COPY_CHANNEL, _)))
}

/// Bytes of a room copy's header.
pub fn room_header_len(slot: u64, first: u64) -> usize {
    2 + varint::encoded_len(slot) + varint::encoded_len(first)
}

/// Bytes of a post copy's header.
pub fn posts_header_len(first: u64) -> usize {
    2 + varint::encoded_len(first)
}

/// Appends a room copy of `frames` (whole stream frames, length prefix included) to `out`.
pub fn encode_room(
    slot: u64,
    first: u64,
    frames: &[Bytes],
    out: &mut impl BufMut,
) -> Result<(), varint::VarintTooLarge> {
    varint::encode(COPY_CHANNEL, out)?;
    varint::encode(ROOM, out)?;
    varint::encode(slot, out)?;
    varint::encode(first, out)?;
    frames.iter().for_each(|frame| out.put_slice(frame));
    Ok(())
}

/// Appends a post copy of `frames` (whole control-stream frames of Post requests) to `out`.
pub fn encode_posts(first: u64, frames: &[Bytes], out: &mut impl BufMut) -> Result<(), varint::VarintTooLarge> {
    varint::encode(COPY_CHANNEL, out)?;
    varint::encode(POSTS, out)?;
    varint::encode(first, out)?;
    frames.iter().for_each(|frame| out.put_slice(frame));
    Ok(())
}

impl Copy {
    /// Decodes a copy datagram, each frame at most `max_frame` bytes. Never panics on hostile bytes.
    pub fn decode(datagram: &Bytes, max_frame: usize) -> Result<Copy, CopyError> {
        let mut at = 0;
        let mut field = |name: &'static str| -> Result<u64, CopyError> {
            let (value, len) = varint::decode(&datagram[at..]).ok_or(CopyError::Truncated(name))?;
            at += len;
            Ok(value)
        };
        if field("the channel id")? != COPY_CHANNEL {
            return Err(CopyError::NotACopy);
        }
        let copy = match field("the kind")? {
            ROOM => {
                let slot = field("the slot")?;
                let first = field("the first position")?;
                Copy::Room { slot, first, frames: Vec::new() }
            }
            POSTS => Copy::Posts { first: field("the first request")?, frames: Vec::new() },
            other => return Err(CopyError::UnknownKind(other)),
        };
        let mut frames = Vec::new();
        while at < datagram.len() {
            let (len, prefix) = varint::decode(&datagram[at..]).ok_or(CopyError::Truncated("a frame's length"))?;
            if len > max_frame as u64 {
                return Err(CopyError::FrameTooLarge { len, max: max_frame });
            }
            let start = at + prefix;
            let end = start.checked_add(len as usize).filter(|&end| end <= datagram.len());
            let end = end.ok_or(CopyError::Truncated("a frame"))?;
            if frames.len() == MAX_COPY_FRAMES {
                return Err(CopyError::FrameCount(MAX_COPY_FRAMES + 1));
            }
            frames.push(datagram.slice(start..end));
            at = end;
        }
        if frames.is_empty() {
            return Err(CopyError::FrameCount(0));
        }
        Ok(match copy {
            Copy::Room { slot, first, .. } => Copy::Room { slot, first, frames },
            Copy::Posts { first, .. } => Copy::Posts { first, frames },
        })
    }
}

/// Frames waiting for copies at most: beyond, the oldest held one (not written yet) is dropped, else the oldest
/// (they are copies; the stream carries them).
pub const MAX_PENDING_COPIES: usize = 256;

/// What a queued frame is a copy of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyTarget {
    /// A frame of the room stream with this slot; positions are stream positions.
    Room(u64),
    /// A Post request; positions are post numbers.
    Posts,
}

#[derive(Debug)]
struct Pending {
    target: CopyTarget,
    position: u64,
    frame: Bytes,
    left: u8,
    /// When its next copy is due; `None`: held until [`CopyQueue::release`] (its frame is not written yet).
    due: Option<Instant>,
}

/// The chance, per direction, that a frame and every copy of it are lost, that the number of copies is chosen for.
/// 2.5 × 10⁻⁴ each way: at most about one message in 2,000 waits for the stream's retransmission.
pub const RESIDUAL_LOSS: f64 = 2.5e-4;

/// Packets per loss sample: the estimate moves once this many more were sent.
const LOSS_WINDOW: u64 = 32;

/// One connection's frames waiting for their datagram copies, sans IO (the caller passes the time): a frame's first
/// copy is due `first` after it was queued (just after its stream write, so never in the same packet), the next ones
/// `spacing` apart; the sender takes what is due when its timer fires ([`CopyQueue::take`], then
/// [`CopyQueue::next_due`]). Each frame goes in as many rounds as the path's loss calls for: the
/// fewest copies (at least one, at most the configured maximum) for which a frame and all its copies are lost
/// with a chance below [`RESIDUAL_LOSS`], from the loss the sender observes ([`CopyQueue::observe`]): one copy on a
/// clean path or at 1 %, two at 2–5 %, three at 10 %. Bounded by [`MAX_PENDING_COPIES`].
#[derive(Debug, Default)]
pub struct CopyQueue {
    max_copies: u8,
    copies: u8,
    first: Duration,
    spacing: Duration,
    pending: VecDeque<Pending>,
    /// The largest datagram the last [`CopyQueue::take`] was given, while frames wait (until then, and once none
    /// does, none is assumed): a frame that cannot fit one with its header is not queued at all.
    max_size: Option<usize>,
    /// Smoothed fraction of packets lost, and the packet counters at the last sample.
    loss: f64,
    sampled: Option<(u64, u64)>,
}

impl CopyQueue {
    /// A queue sending each frame at most `max_copies` times (0: never), the first copy `first` after the frame
    /// was queued, the next ones `spacing` apart (at least 1 ms).
    pub fn new(max_copies: u8, first: Duration, spacing: Duration) -> Self {
        let spacing = spacing.max(Duration::from_millis(1));
        CopyQueue { max_copies, copies: max_copies.min(1), first, spacing, ..CopyQueue::default() }
    }

    /// The connection has sent `sent` packets so far, of which `lost` were lost: updates the loss estimate and the
    /// number of copies frames queued from now on get.
    pub fn observe(&mut self, sent: u64, lost: u64) {
        let Some((sent_before, lost_before)) = self.sampled else {
            self.sampled = Some((sent, lost));
            return;
        };
        let packets = sent.saturating_sub(sent_before);
        if packets < LOSS_WINDOW {
            return;
        }
        let rate = (lost.saturating_sub(lost_before) as f64 / packets as f64).min(1.0);
        self.loss = if self.loss == 0.0 && lost_before == 0 { rate } else { 0.75 * self.loss + 0.25 * rate };
        self.sampled = Some((sent, lost));
        self.copies = (1..=self.max_copies)
            .find(|&k| self.loss.powi(i32::from(k) + 1) <= RESIDUAL_LOSS)
            .unwrap_or(self.max_copies);
    }

    /// Copies each frame queued now gets.
    pub fn copies(&self) -> u8 {
        self.copies
    }

    /// The smoothed loss estimate (fraction of packets).
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Queues `frame` (a whole stream frame) at `position` of `target`, written at `written` (its first copy is due
    /// `first` later), or not written yet (`None`: held until [`CopyQueue::release`], so that no copy leaves before
    /// its frame, or in the frame's packet).
    /// A frame that cannot fit a datagram (as large as the last [`CopyQueue::take`] allowed) is not queued: it goes
    /// by the stream only. Full, the queue makes room by dropping its oldest held frame (a stream that is not being
    /// written: its copies may never be due), else its oldest.
    /// Returns whether it was queued (not when copies are off or the frame is too large for a datagram): a write
    /// with nothing queued is probed as any other ([`crate::copies`]' callers tell the tail probe which).
    pub fn push(&mut self, target: CopyTarget, position: u64, frame: Bytes, written: Option<Instant>) -> bool {
        if self.copies == 0 {
            return false;
        }
        let header = match target {
            CopyTarget::Room(slot) => room_header_len(slot, position),
            CopyTarget::Posts => posts_header_len(position),
        };
        if self.max_size.is_some_and(|max| header + frame.len() > max) {
            return false;
        }
        if self.pending.len() == MAX_PENDING_COPIES {
            match self.pending.iter().position(|p| p.due.is_none()) {
                Some(held) => drop(self.pending.remove(held)),
                None => drop(self.pending.pop_front()),
            }
        }
        let due = written.map(|at| at + self.first);
        self.pending.push_back(Pending { target, position, frame, left: self.copies, due });
        true
    }

    /// `target`'s held frames at positions before `written` were written at `now`: their first copies are due
    /// `first` later. Frames at `written` or after (left unwritten by flow control, or queued meanwhile) stay held.
    /// Returns how many were released.
    pub fn release(&mut self, target: CopyTarget, written: u64, now: Instant) -> usize {
        let held = |p: &&mut Pending| p.target == target && p.due.is_none() && p.position < written;
        let mut released = 0;
        for pending in self.pending.iter_mut().filter(held) {
            pending.due = Some(now + self.first);
            released += 1;
        }
        released
    }

    /// Drops every frame of `target` (its stream ended: reset, kicked, left): none of them is sent, and they no
    /// longer take places from other targets' frames.
    pub fn forget(&mut self, target: CopyTarget) {
        self.pending.retain(|pending| pending.target != target);
    }

    /// How long from `now` until the next copy is due (zero when one is due already); `None` when nothing is due
    /// (held frames are not).
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.pending.iter().filter_map(|p| p.due).map(|due| due.saturating_duration_since(now)).min()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The copies due at `now`, once each, in the order queued, consecutive positions of one target packed into one
    /// datagram of at most `max_size` bytes (and [`MAX_COPY_FRAMES`] frames); their next copies are due `spacing`
    /// later. A frame that cannot fit a datagram on its own is dropped: it goes by the stream only.
    pub fn take(&mut self, now: Instant, max_size: usize) -> Vec<Bytes> {
        self.max_size = Some(max_size);
        let mut out = Vec::new();
        // The datagram being filled: its target, first position, frames and size.
        let mut open: Option<(CopyTarget, u64, Vec<Bytes>, usize)> = None;
        let header = |target: CopyTarget, first: u64| match target {
            CopyTarget::Room(slot) => room_header_len(slot, first),
            CopyTarget::Posts => posts_header_len(first),
        };
        for pending in &mut self.pending {
            if pending.due.is_none_or(|due| due > now) {
                continue;
            }
            if header(pending.target, pending.position) + pending.frame.len() > max_size {
                pending.left = 0;
                continue;
            }
            pending.left -= 1;
            pending.due = Some(now + self.spacing);
            if let Some((target, first, frames, size)) = &mut open {
                let next = *first + frames.len() as u64;
                if *target == pending.target
                    && next == pending.position
                    && *size + pending.frame.len() <= max_size
                    && frames.len() < MAX_COPY_FRAMES
                {
                    *size += pending.frame.len();
                    frames.push(pending.frame.clone());
                    continue;
                }
            }
            out.extend(open.take().and_then(encode));
            let size = header(pending.target, pending.position) + pending.frame.len();
            open = Some((pending.target, pending.position, vec![pending.frame.clone()], size));
        }
        out.extend(open.and_then(encode));
        self.pending.retain(|pending| pending.left > 0);
        if self.pending.is_empty() {
            // Nothing waits, so no take will come to see a new size (a path whose MTU grew): frames are not judged
            // by an old one meanwhile.
            self.max_size = None;
        }
        out
    }
}

fn encode((target, first, frames, size): (CopyTarget, u64, Vec<Bytes>, usize)) -> Option<Bytes> {
    let mut datagram = BytesMut::with_capacity(size);
    // Fails only for a slot or position above 2^62, which counters do not reach.
    match target {
        CopyTarget::Room(slot) => encode_room(slot, first, &frames, &mut datagram).ok()?,
        CopyTarget::Posts => encode_posts(first, &frames, &mut datagram).ok()?,
    }
    Some(datagram.freeze())
}

#[cfg(test)]
mod tests;
