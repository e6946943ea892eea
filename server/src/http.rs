//! The small HTTP/1.1 server the demo page and the admin listener share: GET and HEAD only, one request per
//! connection, bounded head size, time and connections, each answer decided by a sans-IO `respond` function.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Largest request head read; anything longer is refused with 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client has to send its request and take the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves HTTP/1.1 on `listener` until `shutdown`: one request per connection, at most [`MAX_CONNECTIONS`] at
/// once, each head at most [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_TIMEOUT`] long, answered by `respond` (the
/// demo page's, or the admin listener's).
pub(crate) async fn serve_http(
    listener: TcpListener,
    shutdown: CancellationToken,
    respond: impl Fn(&[u8], IpAddr) -> Response + Send + Sync + 'static,
) {
    let respond = Arc::new(respond);
    let tasks = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let respond = respond.clone();
        tasks.spawn(async move {
            if let Err(err) = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, peer.ip(), &*respond)).await {
                tracing::debug!(%peer, %err, "HTTP request timed out");
            }
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn handle(mut stream: TcpStream, peer: IpAddr, respond: &(impl Fn(&[u8], IpAddr) -> Response + ?Sized)) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let response = match complete {
        true => respond(&head, peer),
        false => Response::error(431, "request head too large"),
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) head_only: bool,
}

impl Response {
    pub(crate) fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {message}\n").into_bytes(),
            head_only: false,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            503 => "Service Unavailable",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.status == 405 {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// A GET or HEAD request head: (HEAD?, the target, the header lines); anything else is the error to answer.
pub(crate) fn parse_request(head: &[u8]) -> Result<(bool, &str, std::str::Split<'_, &str>), Response> {
    let Ok(text) = std::str::from_utf8(head) else { return Err(Response::error(400, "request is not UTF-8")) };
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (request_line.next(), request_line.next(), request_line.next(), request_line.next())
    else {
        return Err(Response::error(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::error(400, "HTTP/1.x only"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Response::error(405, "GET or HEAD only")),
    };
    Ok((head_only, target, lines))
}

/// The page server's address as bound (for port 0).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
