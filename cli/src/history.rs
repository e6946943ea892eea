//! `quiver history`: a room's retained messages, page by page, from a position on.

use clap::Args;
use serde::Serialize;

use crate::{
    chat::{terminal_name, terminal_text, text, Since},
    error::CliError,
    ServerArgs,
};

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to read.
    #[arg(long)]
    room: String,
    /// Only messages after this position: `EPOCH:SEQ` (as `chat --json` and `history --json` print them; a
    /// different epoch means the room's history was lost, and that is said), or a bare SEQ in the current epoch.
    #[arg(long, value_name = "EPOCH:SEQ")]
    since: Option<Since>,
    /// At most this many messages.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// One JSON object per line: room, epoch, seq, sender, client_msg_id, body (UTF-8, invalid bytes replaced).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the connection, and for each page of history (reconnects included); 0: no limit. On
    /// expiry the command fails.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
}

#[derive(Debug, Serialize)]
struct HistoryLine<'a> {
    room: &'a str,
    epoch: u64,
    seq: u64,
    sender: &'a str,
    client_msg_id: u64,
    body: String,
}

pub(crate) async fn history(args: HistoryArgs) -> Result<(), CliError> {
    let limit = crate::seconds("timeout", args.timeout)?;
    // (The connect within the limit too: the client's own 10 s bounded it.)
    let client = args.server.connect_within(None, limit).await?;
    // One page, within --timeout (a server that keeps the connection alive but never answers must not hold a
    // script for ever).
    let page_of = |since: Option<u64>, left: u32| {
        let client = &client;
        let room = &args.room;
        async move {
            let page = client.history(room, since, left);
            let page = match limit.is_zero() {
                true => page.await,
                false => tokio::time::timeout(limit, page).await.map_err(|_| CliError::HistoryTimeout(limit))?,
            };
            page.map_err(CliError::History)
        }
    };
    let mut since = args.since.map(|s| s.seq);
    let mut left = args.limit;
    let mut first = true;
    while left > 0 {
        let mut page = page_of(since, left).await?;
        if first {
            first = false;
            if let Some(Since { epoch: Some(asked), seq }) = args.since {
                if page.epoch != asked {
                    // Seqs of another epoch mean nothing here: everything retained now is after the position.
                    crate::err!(
                        "* room {} is in epoch {} now, not {asked}: its history up to seq {seq} of that epoch was \
                         lost (a server without a store restarted, or the room was evicted); showing what is retained",
                        args.room,
                        page.epoch
                    );
                    page = page_of(None, left).await?;
                }
            }
            let after = if page.epoch == args.since.and_then(|s| s.epoch).unwrap_or(page.epoch) { since } else { None };
            if let (Some(first_seq), Some(after)) = (page.messages.first().map(|m| m.seq), after) {
                if first_seq > after + 1 {
                    crate::err!(
                        "* history was trimmed: seqs {} to {} of room {} are no longer retained",
                        after + 1,
                        first_seq - 1,
                        args.room
                    );
                }
            }
        }
        for event in &page.messages {
            let quiver_proto::EventKind::Message { sender, client_msg_id, body } = &event.kind else { continue };
            if args.json {
                let line = HistoryLine {
                    room: &page.room,
                    epoch: page.epoch,
                    seq: event.seq,
                    sender,
                    client_msg_id: *client_msg_id,
                    body: text(body),
                };
                crate::out!("{}", serde_json::to_string(&line)?);
            } else {
                crate::out!("[{}] {}: {}", event.seq, terminal_name(sender), terminal_text(body));
            }
        }
        left = left.saturating_sub(page.messages.len() as u32);
        match page.messages.last() {
            Some(last) if page.more => since = Some(last.seq),
            _ => break,
        }
    }
    client.close().await;
    Ok(())
}
