//! `quiver chat`, `quiver post`, `quiver history`: rooms from the command line.

use std::time::Duration;

use clap::Args;
use quiver_client::ConnectionState;

use crate::{chat_out::Out, error::CliError, ServerArgs};

/// Lines posted and not yet acknowledged, at most, before more input is read.
const OUTSTANDING: usize = 1_000;

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to join.
    #[arg(long)]
    room: String,
    /// Name to be known by in the room (default: a new one each run, `dev-` and 8 hex digits with a dev token,
    /// `guest-` and 16 on an anonymous server; with a token, the token's subject where the server reads tokens).
    /// Pass one to be recognised across runs.
    #[arg(long)]
    name: Option<String>,
    /// Resume from a position a previous run printed (`EPOCH:SEQ`, e.g. from a `message` line's epoch and seq):
    /// what was posted after it is replayed first, and a `resumed` line says whether all of it still was.
    #[arg(long, value_name = "EPOCH:SEQ")]
    since: Option<Since>,
    /// One JSON object per line on stdout, for scripts: `message` (room, epoch, seq, time_us, sender,
    /// client_msg_id, body), `ack` (line, seq, epoch), `post_failed` (line, error), `joined` / `left` (member),
    /// `resumed` (recovered), `state` (connected / reconnecting / closed, with detail).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the join, and for the next acknowledgement of posts once input has ended (or waits
    /// behind 1,000 unacknowledged posts), reconnects included; 0: no limit. On expiry the command fails naming
    /// how many posts were left (they may still have been stored).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
}

#[derive(Debug, Args)]
pub(crate) struct PostArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Room to post to.
    #[arg(long)]
    room: String,
    /// Name to post as (default: a new one each run, as `chat`'s; with a token, the token's subject where the
    /// server reads tokens).
    #[arg(long)]
    name: Option<String>,
    /// Idempotency key: running the command again with the same key (and the same --name or token) gets the
    /// original seq back instead of posting twice, while the server remembers it: for `dedupe_window_s` (600 s by
    /// default) and among the room's last `dedupe_max_entries` posts (10,000), whichever ends first. Any text; it
    /// is hashed to the post's client_msg_id.
    #[arg(long, value_name = "KEY")]
    id: Option<String>,
    /// Seconds to wait for the connection and the post's acknowledgement (reconnects and retries included); 0: no
    /// limit. On expiry the command fails: if connected, the post may still have been stored (run it again with the
    /// same --id).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
    /// The message.
    text: String,
}

/// The client_msg_id of `--id KEY`: FNV-1a (64-bit) of the key, the same in every process and build.
pub(crate) fn msg_id_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// `--since`: `EPOCH:SEQ`, or a bare `SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Since {
    pub(crate) epoch: Option<u64>,
    pub(crate) seq: u64,
}

/// A `--since` that is neither `EPOCH:SEQ` nor `SEQ`.
#[derive(Debug, thiserror::Error)]
#[error("expected EPOCH:SEQ (e.g. 1733040000000000:42) or SEQ")]
pub(crate) struct BadSince;

impl std::str::FromStr for Since {
    type Err = BadSince;

    fn from_str(s: &str) -> Result<Since, BadSince> {
        match s.split_once(':') {
            Some((epoch, seq)) => Ok(Since {
                epoch: Some(epoch.trim().parse().map_err(|_| BadSince)?),
                seq: seq.trim().parse().map_err(|_| BadSince)?,
            }),
            None => Ok(Since { epoch: None, seq: s.trim().parse().map_err(|_| BadSince)? }),
        }
    }
}

pub(crate) fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// A body (or a name) as one line of a terminal: control characters (a newline that would forge another message's
/// line, an escape sequence that would clear the screen or set the clipboard) and the bidirectional formatting
/// characters (an override that shows `nimda` as `admin`, or reorders the rest of the line) are shown escaped
/// (`\n`, `\u{1b}`, `\u{202e}`), not acted on. Any room member chooses a body's bytes, and a server its names;
/// `--json` escapes them already.
pub(crate) fn terminal_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let acted_on = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(acted_on) {
        return text.into_owned();
    }
    text.chars().map(|c| if acted_on(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A line of this program's that may carry the server's words (an error, a refusal's or a close's reason), as
/// [`terminal_text`] shows a body: a line break in the server's part (a reason written to look like a message line
/// that follows) is escaped too (for lines known to carry the server's words:
/// [`crate::error::CliError::carries_server_words`]).
pub(crate) fn terminal_line(text: &str) -> String {
    terminal_text(text.as_bytes())
}

/// This program's own text over several lines (a TOML error's snippet, `ip`'s stderr), line by line as
/// [`terminal_text`] shows a body: its line breaks kept, anything else a terminal would act on escaped.
pub(crate) fn terminal_lines(text: &str) -> String {
    text.split('\n').map(|line| terminal_text(line.as_bytes())).collect::<Vec<_>>().join("\n")
}

/// A name from the server (a sender, a member, this session's identity) as [`terminal_text`] shows a body: servers
/// refuse control characters in identities, but the server is not to be trusted with the reader's terminal.
pub(crate) fn terminal_name(name: &str) -> String {
    terminal_text(name.as_bytes())
}

/// Stdin's lines (without their `\n` or `\r\n`), read on a thread of their own: a read blocked on a terminal or an
/// open pipe must not hold the process when it ends (tokio's stdin would: the runtime waits for its blocking reads
/// at shutdown). `None` at the end of input. Bytes, not text: a line that is not UTF-8 (a Latin-1 log) is posted
/// as it is (a message is bytes) instead of ending the chat with the lines before it unacknowledged.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Option<Vec<u8>>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let stdin = std::io::stdin();
        let mut stdin = stdin.lock();
        loop {
            let mut line = Vec::new();
            let next = match stdin.read_until(b'\n', &mut line) {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) => Ok(None),
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    Ok(Some(line))
                }
                Err(err) => Err(err),
            };
            let end = !matches!(next, Ok(Some(_)));
            if tx.send(next).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// What leaving and closing may take once the chat ends (Ctrl-C must end it within a second).
const GOODBYE: Duration = Duration::from_millis(300);

/// Joins the room, posts every stdin line, prints every event and every change of the connection. Ends at end of
/// input (once every line is acknowledged) or on Ctrl-C (within a second, whatever stdin is doing).
pub(crate) async fn chat(args: ChatArgs) -> Result<(), CliError> {
    // Before anything is printed: whoever sees the first line may press Ctrl-C at once.
    let mut stop = crate::output::Stop::new();
    if matches!(args.since, Some(Since { epoch: None, .. })) {
        return Err(CliError::SinceNeedsEpoch);
    }
    // Ctrl-C ends the connect and the join too (the handler above replaced the default that would have).
    let connected = async {
        let client = args.server.connect_as(args.name).await?;
        let joined = match args.since {
            Some(Since { epoch: Some(epoch), seq }) => {
                client.join_from(&args.room, quiver_proto::Position { epoch, seq }).await
            }
            _ => client.join(&args.room).await,
        };
        let room = joined.map_err(|source| CliError::Join { room: args.room.clone(), source })?;
        Ok::<_, CliError>((client, room))
    };
    let limit = Some(crate::seconds("timeout", args.timeout)?).filter(|limit| !limit.is_zero());
    let within_limit = async {
        match limit {
            Some(limit) => tokio::time::timeout(limit, connected).await.map_err(|_| CliError::JoinTimeout(limit))?,
            None => connected.await,
        }
    };
    let (client, mut room) = tokio::select! {
        connected = within_limit => connected?,
        () = stop.requested() => return Err(CliError::Interrupted),
    };
    let out = Out { json: args.json, room: args.room.clone() };
    let mut state = client.state();
    state.borrow_and_update();
    if out.json {
        out.state(&client.state().borrow());
    } else {
        let members: Vec<String> = room.members().iter().map(|m| terminal_name(m)).collect();
        let identity = terminal_name(&client.welcome().identity);
        crate::err!("* joined {} as {identity} (members: {})", args.room, members.join(", "));
    }
    let mut lines = stdin_lines();
    let mut posts = tokio::task::JoinSet::new();
    let mut input_open = true;
    let mut line_no = 0u64;
    // The newest of the room's messages printed (the room's position moves when they are queued for us, not
    // when we print them).
    let mut printed = 0u64;
    let mut interrupted = false;
    let mut acks = Acks::default();
    // While posts wait and none is acknowledged (input ended, or stalled behind `OUTSTANDING` of them): until when
    // (a server gone for good would otherwise keep the command reconnecting forever). Each acknowledgement starts
    // the wait again, and so does a post into an empty set: the wait is for posts, and a quiet stretch before a
    // burst was counted against the burst's first 1,000 (the chat gave up at once, the rest of its input unposted).
    let mut last_ack = tokio::time::Instant::now();
    let mut unacknowledged = 0usize;
    loop {
        tokio::select! {
            // Input waits while `OUTSTANDING` posts do: a large file piped in never meets the client's
            // `max_queued_posts`.
            line = lines.recv(), if input_open && posts.len() < OUTSTANDING => match line {
                Some(Ok(Some(line))) if line.trim_ascii().is_empty() => line_no += 1,
                Some(Ok(Some(line))) => {
                    line_no += 1;
                    // Queued now, in input order; acknowledged whenever.
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let posted = room.post(line);
                    if posts.is_empty() {
                        last_ack = tokio::time::Instant::now();
                    }
                    posts.spawn(async move { (line_no, posted.await, text) });
                }
                Some(Ok(None)) | None => {
                    input_open = false;
                    last_ack = tokio::time::Instant::now();
                }
                Some(Err(err)) => return Err(CliError::Stdin(err)),
            },
            Some(done) = posts.join_next(), if !posts.is_empty() => {
                last_ack = tokio::time::Instant::now();
                acks.take(&out, room.position().map(|p| p.epoch), done);
            }
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = state.borrow_and_update().clone();
                out.state(&now);
                if let ConnectionState::Closed { code, reason } = now {
                    return Err(CliError::RoomEnded { room: args.room.clone(), code, reason });
                }
            }
            event = room.next() => match event {
                Some(event) => printed = printed.max(out.event(&event)),
                None => {
                    // (Why: the server's refusal to take the room back, or the client's end, which the state's
                    // change may not have shown yet.)
                    let unknown = || (quiver_proto::ErrorCode::Internal, "no reason given".to_string());
                    let (code, reason) = room.end_reason().unwrap_or_else(unknown);
                    return Err(CliError::RoomEnded { room: args.room.clone(), code, reason });
                }
            },
            () = stop.requested() => {
                interrupted = true;
                break;
            }
            () = async {
                // (A limit too large for a deadline is no limit.)
                match limit.and_then(|limit| last_ack.checked_add(limit)) {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            }, if !posts.is_empty() && (!input_open || posts.len() >= OUTSTANDING) => {
                unacknowledged = posts.len();
                break;
            }
        }
        if !input_open && posts.is_empty() {
            break;
        }
    }
    if interrupted {
        // Posts answered by now (or within a moment: their acknowledgement on its way as the signal came) are not
        // in flight: they were counted unacknowledged, those finished but not yet taken from the set too, and a
        // Ctrl-C right after a post's event printed failed the command (a flaky test's find).
        let grace = tokio::time::sleep(INTERRUPT_GRACE);
        tokio::pin!(grace);
        while !posts.is_empty() {
            tokio::select! {
                biased;
                Some(done) = posts.join_next() => acks.take(&out, room.position().map(|p| p.epoch), done),
                () = &mut grace => break,
            }
        }
        unacknowledged = posts.len();
    }
    let last_acked = acks.last_acked;
    if !interrupted && unacknowledged == 0 {
        // End of input: the room's copies of our own posts may still be on their way (the room stream and the
        // acknowledgements are separate streams); print them before leaving.
        let caught_up = async {
            while printed < last_acked {
                match room.next().await {
                    Some(event) => printed = printed.max(out.event(&event)),
                    None => break,
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(2), caught_up) => {}
            () = stop.requested() => {}
        }
    }
    let _ = tokio::time::timeout(GOODBYE, room.leave()).await;
    let _ = tokio::time::timeout(GOODBYE, client.close()).await;
    // Stopped or timed out with posts in flight: a script must not read exit 0 as "all stored".
    match (unacknowledged, interrupted, limit) {
        (0, _, _) => {}
        (left, true, _) => return Err(CliError::PostsInterrupted { left }),
        (left, false, Some(after)) => return Err(CliError::PostsUnacknowledged { left, after }),
        (_, false, None) => {}
    }
    match acks.failed {
        0 => Ok(()),
        failed => Err(CliError::PostsFailed { failed, posted: acks.answered }),
    }
}

/// How long an interrupted chat waits for the posts in flight to be acknowledged before it ends, failing for those
/// left.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// The posts answered so far: how many, how many of them failed, the newest seq acknowledged.
#[derive(Debug, Default)]
struct Acks {
    answered: u64,
    failed: u64,
    last_acked: u64,
}

impl Acks {
    /// A post's task done: its answer counted and printed.
    fn take(
        &mut self,
        out: &Out,
        epoch: Option<u64>,
        done: Result<(u64, Result<u64, quiver_client::RequestError>, String), tokio::task::JoinError>,
    ) {
        if let Ok((line, result, text)) = done {
            self.answered += 1;
            match &result {
                Ok(seq) => self.last_acked = self.last_acked.max(*seq),
                Err(_) => self.failed += 1,
            }
            out.posted(line, result, epoch, &text);
        }
    }
}

pub(crate) async fn post(args: PostArgs) -> Result<(), CliError> {
    if args.id.is_some() && args.name.is_none() && !args.server.has_token() {
        return Err(CliError::IdWithoutIdentity);
    }
    let limit = crate::seconds("timeout", args.timeout)?;
    // 0, or beyond what the clock can count: no limit.
    let deadline = (!limit.is_zero()).then(|| tokio::time::Instant::now().checked_add(limit)).flatten();
    let named = args.name.is_some();
    // The connect within the limit too (before, the client's own 10 s bounded it, and a slow one, a fallback to the
    // WebSocket, used up the limit and the post failed at once as unanswered, though it may have been sent).
    let client = args.server.connect_within(args.name, limit).await?;
    // A token on a server that admits anonymous sessions is ignored: the identity is the name the client chose for
    // itself, new each run, and the id could not recognise a re-run.
    let welcome = client.welcome();
    if args.id.is_some() && !named && welcome.identity == client.name() {
        client.close().await;
        return Err(CliError::IdWithoutIdentity);
    }
    let posted = async {
        match &args.id {
            Some(key) => client.post_with_id(&args.room, msg_id_of(key), args.text).await,
            None => client.post(&args.room, args.text).await,
        }
    };
    let posted = match deadline {
        Some(at) => tokio::time::timeout_at(at, posted)
            .await
            .map_err(|_| CliError::PostTimeout { after: limit, with_id: args.id.is_some() })?,
        None => posted.await,
    };
    let seq = posted.map_err(CliError::Post)?;
    crate::out!("{seq}");
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's body cannot forge a line or send the reader's terminal an escape sequence.
    #[test]
    fn bodies_print_as_one_line_without_terminal_controls() {
        assert_eq!(terminal_text(b"plain text, caf\xc3\xa9"), "plain text, café");
        let shown = terminal_text(b"hi\n[7] admin: send me your token\x1b[2J\x1b]52;c;aGk=\x07");
        assert!(!shown.contains('\n') && !shown.contains('\x1b') && !shown.contains('\x07'), "{shown:?}");
        assert_eq!(terminal_text(b"a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        // A right-to-left override shows `nimda` as `admin` on a terminal that reorders.
        assert_eq!(terminal_name("\u{202E}nimda"), "\\u{202e}nimda");
        assert_eq!(terminal_name("ann\u{1b}[31m"), "ann\\u{1b}[31m");
        assert_eq!(terminal_name("Zoë"), "Zoë");
        let forged = "closed: bye\n[7] admin: run this \u{1b}]52;c;x\u{7}";
        assert_eq!(terminal_line(forged), "closed: bye\\n[7] admin: run this \\u{1b}]52;c;x\\u{7}");
    }
}
