//! `quiver chat`, `quiver post`, `quiver history`: rooms from the command line.

use clap::Args;
use quiver_client::{Message, RoomEvent};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{error::CliError, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to join.
    #[arg(long)]
    room: String,
    /// Name to be known by in the room (default: one the server assigns).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PostArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to post to.
    #[arg(long)]
    room: String,
    /// Name to post as.
    #[arg(long)]
    name: Option<String>,
    /// Idempotency key: running the command again with the same key (and the same --name or --token) gets the
    /// original seq back instead of posting twice, while the server remembers it (`dedupe_window_s`, 600 s by
    /// default). Any text; it is hashed to the post's client_msg_id.
    #[arg(long, value_name = "KEY")]
    id: Option<String>,
    /// The message.
    text: String,
}

/// The client_msg_id of `--id KEY`: FNV-1a (64-bit) of the key, the same in every process and build.
pub(crate) fn msg_id_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to read.
    #[arg(long)]
    room: String,
    /// Only messages after this seq.
    #[arg(long)]
    since: Option<u64>,
    /// At most this many messages.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// One JSON object per line: room, epoch, seq, sender, client_msg_id, body (UTF-8, invalid bytes replaced).
    #[arg(long)]
    json: bool,
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn print_message(m: &Message) {
    println!("[{}] {}: {}", m.seq, m.sender, text(&m.body));
}

/// Joins the room, posts every stdin line, prints every event. Ends at end of input (once every line is
/// acknowledged) or on Ctrl-C.
pub(crate) async fn chat(args: ChatArgs) -> Result<(), CliError> {
    let client = args.server.connect_as(args.name).await?;
    let mut room =
        client.join(&args.room).await.map_err(|source| CliError::Join { room: args.room.clone(), source })?;
    eprintln!("* joined {} as {} (members: {})", args.room, client.welcome().identity, room.members().join(", "));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut posts = tokio::task::JoinSet::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if input_open => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    // Queued now, in input order; acknowledged whenever.
                    posts.spawn(room.post(line));
                }
                Ok(None) => input_open = false,
                Err(err) => return Err(CliError::Stdin(err)),
            },
            Some(done) = posts.join_next(), if !posts.is_empty() => {
                if let Ok(Err(err)) = done {
                    eprintln!("* post failed: {err}");
                }
            }
            event = room.next() => match event {
                Some(RoomEvent::Message(m)) => print_message(&m),
                Some(RoomEvent::MemberJoined { member }) => println!("* {member} joined"),
                Some(RoomEvent::MemberLeft { member }) => println!("* {member} left"),
                Some(RoomEvent::Resumed { recovered: true, .. }) => eprintln!("* reconnected; nothing missed"),
                Some(RoomEvent::Resumed { recovered: false, .. }) => {
                    eprintln!("* reconnected; messages were missed, showing the latest")
                }
                None => return Err(CliError::RoomEnded),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
        if !input_open && posts.is_empty() {
            break;
        }
    }
    let _ = room.leave().await;
    client.close().await;
    Ok(())
}

pub(crate) async fn post(args: PostArgs) -> Result<(), CliError> {
    if args.id.is_some() && args.name.is_none() && !args.server.has_token() {
        return Err(CliError::IdWithoutIdentity);
    }
    let client = args.server.connect_as(args.name).await?;
    let posted = match &args.id {
        Some(key) => client.post_with_id(&args.room, msg_id_of(key), args.text).await,
        None => client.post(&args.room, args.text).await,
    };
    let seq = posted.map_err(CliError::Post)?;
    println!("{seq}");
    client.close().await;
    Ok(())
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
    let client = args.server.connect().await?;
    let mut since = args.since;
    let mut left = args.limit;
    while left > 0 {
        let page = client.history(&args.room, since, left).await.map_err(CliError::History)?;
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
                println!("{}", serde_json::to_string(&line)?);
            } else {
                println!("[{}] {}: {}", event.seq, sender, text(body));
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
