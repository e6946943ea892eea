//! A real browser: headless Chromium opens the demo page served by the server, joins a room over WebTransport,
//! receives a message a native Rust client posts, posts one the native client receives, and receives the native
//! client's ticks as datagrams. Then the same with WebTransport made to fail (pointed at a UDP port that drops
//! everything): the page falls back to the WebSocket within its configured timeout and does it all again.
//! Everything is asserted from the page's own state (`window.quiverState`), read over the DevTools protocol.
//!
//! Needs Chromium (`chromium-headless-shell` or `chromium`; `QUIVER_CHROMIUM` names another binary). Without it
//! the test says so loudly and passes, unless `QUIVER_REQUIRE_ALL=1` (CI), where a skip is a failure.
//! `QUIVER_SCREENSHOT=path.png` saves a screenshot of the page at the end (docs/web-demo.png is made so).
#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quiver_client::{Client, RoomEvent, TrustOptions};
use quiver_server::{Server, ServerConfig, WebConfig};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QUIVER_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = ["chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    let dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    names.iter().flat_map(|name| dirs.iter().map(move |dir| dir.join(name))).find(|path| path.is_file())
}

/// A page of a headless Chromium, driven over the DevTools protocol. Chromium runs in its own process group,
/// killed as a whole on drop: its renderer and GPU processes outlive a killed browser process otherwise. The
/// group's leader is a shell that waits for its stdin, a pipe from this process, to close and then kills the
/// group: so Chromium goes with this test also when the test is killed (the suite's bound in scripts/test.sh) and
/// nothing is dropped.
struct Browser {
    /// First: the group is killed before the shell is (its kill-on-drop).
    _group: GroupKiller,
    _process: tokio::process::Child,
    /// The watchdog shell's stdin: closed (by this process' drop or death), the group is killed.
    _lifeline: Option<tokio::process::ChildStdin>,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    async fn open(chromium: &PathBuf, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // `kill -KILL 0`: the shell's own process group, which Chromium's processes share.
        let watchdog = r#"("$0" "$@" </dev/null; echo "watchdog: Chromium exited with status $?" >&2) &
            read -r _; kill -KILL 0"#;
        let mut process = tokio::process::Command::new("sh")
            .args(["-c", watchdog])
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                // Nothing but the test's own page and server: no update checks, syncs or lookups of Google's hosts
                // (the machine's rules allow loopback only; full `chromium` makes more of them than the shell).
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-dev-shm-usage",
                "--window-size=1100,760",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        // From here on: a panic while opening (no DevTools address, a timeout) drops the locals, and the shell's
        // kill-on-drop raced its own `kill -KILL 0`, leaving Chromium running for the rest of the suite.
        let group = GroupKiller(process.id().and_then(|pid| i32::try_from(pid).ok()).map(nix::unistd::Pid::from_raw));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let lifeline = process.stdin.take();
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
                assert!(!line.starts_with("watchdog: "), "no DevTools address: {line}");
            }
            panic!("Chromium exited without a DevTools address");
        })
        .await
        .expect("Chromium starts within 30 s");
        // Keep draining stderr so Chromium never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let page_ws = tokio::time::timeout(WAIT, async {
            loop {
                let targets: Value = serde_json::from_str(&http_get(port, "/json/list").await).unwrap_or(json!([]));
                let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page");
                if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                    return ws.to_string();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the page target appears");
        let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
        Browser { _group: group, _process: process, _lifeline: lifeline, _profile: profile, ws, next_id: 1 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.ws.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).await.unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("DevTools reply").unwrap().unwrap();
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value (JSON-serialisable).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    async fn state(&mut self) -> Value {
        self.eval("JSON.parse(JSON.stringify(window.quiverState || null))").await
    }

    /// Polls the page's state until `check` holds.
    async fn wait_for(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state().await;
            if check(&state) {
                return state;
            }
            if Instant::now() > deadline {
                panic!("page never showed {what}; its state: {state:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Kills Chromium's process group when dropped (its id is the watchdog shell's pid: `process_group(0)`).
struct GroupKiller(Option<nix::unistd::Pid>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return body.to_string();
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => {
                return String::from_utf8_lossy(&response)
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default()
            }
        }
    }
}

/// A dual-stack server (Chromium tries ::1 for localhost first) with the page on a TCP port, a native client in
/// `room` publishing on `channel`, and the page opened with `query` added.
struct Setup {
    browser: Browser,
    native: Client,
    room: quiver_client::Room,
    publisher: Option<quiver_client::TickPublisher>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<quiver_server::Summary>,
    _dir: tempfile::TempDir,
}

/// Every address of this machine, port 0: IPv6's wildcard (dual-stack: `localhost` may be `::1` for Chromium), or
/// IPv4's on a machine without IPv6 (where binding `[::]` failed the tests instead of running them).
fn wildcard() -> std::net::SocketAddr {
    let v6 = "[::]:0".parse().unwrap();
    match std::net::UdpSocket::bind(v6) {
        Ok(_) => v6,
        Err(_) => "0.0.0.0:0".parse().unwrap(),
    }
}

async fn setup(chromium: &PathBuf, room_name: &str, query: impl Fn(u16, u16) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let web = WebConfig { http: Some(wildcard()), ..WebConfig::default() };
    let config = ServerConfig { web, ..ServerConfig::dev(wildcard(), dir.path().into()) };
    let server = Server::bind(config).unwrap();
    let (udp, page) = (server.local_addr().port(), server.page_addr().unwrap().port());
    let ws = server.websocket_addr().unwrap().port();
    let printed = server.page_url().unwrap();
    let key = printed.split_once("#key=").map(|(_, key)| key.to_string()).expect("the printed URL carries the key");
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));

    let trust = TrustOptions::Auto { data_dir: dir.path().into() };
    let native = Client::connect(&format!("127.0.0.1:{udp}"), trust).await.unwrap();
    let room = native.join(room_name).await.unwrap();
    let publisher = native.publisher("browser.ticks").await.unwrap();
    // The page key (`#key=`) of the URL the server prints: without it the page gets no dev token.

    let url = format!(
        "http://localhost:{page}/?room={room_name}&channel=browser.ticks&name=chromium{}#key={key}",
        query(udp, ws)
    );
    let browser = Browser::open(chromium, &url).await;
    Setup { browser, native, room, publisher: Some(publisher), stop, task, _dir: dir }
}

/// The page joins and subscribes; a native post reaches it, its post reaches the native client, and the native
/// client's ticks arrive (60 Hz).
async fn chat_and_ticks(setup: &mut Setup, room_name: &str) {
    let publisher = setup.publisher.take().unwrap();
    let browser = &mut setup.browser;
    let ready = async {
        while browser.eval("window.quiverReady === true").await != json!(true) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, ready).await.expect("the page joins and subscribes");

    // Native → browser.
    setup.native.post(room_name, "hello from native").await.unwrap();
    browser
        .wait_for("the native message", |s| {
            s["messages"].as_array().into_iter().flatten().any(|m| m["text"] == "hello from native")
        })
        .await;

    // Browser → native, typed into the page's form.
    browser
        .eval(
            "document.querySelector('#message').value = 'hello from chromium';
             document.querySelector('#send-form').requestSubmit(); true",
        )
        .await;
    let room = &mut setup.room;
    let from_browser = quiver_tests::first_event(room, WAIT, |event| match event {
        RoomEvent::Message(m) if &m.body[..] == b"hello from chromium" => Some(m),
        _ => None,
    })
    .await
    .expect("the browser's post reaches the native client");
    assert_eq!(from_browser.sender, "chromium");

    // Ticks: 60 Hz from the native publisher, into the page.
    let ticks = tokio::spawn(async move {
        for i in 0..240u32 {
            let price = format!("{:.2}", 100.0 + 5.0 * (f64::from(i) / 15.0).sin());
            let _ = publisher.send(Bytes::from(price));
            tokio::time::sleep(Duration::from_millis(16)).await;
        }
    });
    let state = browser.wait_for("30 ticks", |s| s["ticks"]["received"].as_u64().is_some_and(|n| n >= 30)).await;
    assert!(state["errors"].as_array().is_some_and(|e| e.is_empty()), "page errors: {state:#}");
    ticks.await.unwrap();
}

async fn finish(setup: Setup) {
    let Setup { mut browser, native, stop, task, .. } = setup;
    let _ = tokio::time::timeout(Duration::from_secs(2), browser.call("Browser.close", json!({}))).await;
    drop(browser);
    native.close().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_chats_with_a_native_client_and_receives_ticks() {
    let Some(chromium) = find_chromium() else {
        let why = "Chromium not found (install chromium-headless-shell or set QUIVER_CHROMIUM)";
        return quiver_tests::skip("the browser test", why);
    };
    let mut setup = setup(&chromium, "browser-test", |_, _| String::new()).await;
    let state = setup.browser.wait_for("quiverReady", |s| s["status"] == "connected").await;
    assert_eq!(state["room"], "browser-test", "{state:#}");
    assert_eq!(state["transport"], "webtransport", "{state:#}");
    chat_and_ticks(&mut setup, "browser-test").await;
    if let Some(path) = std::env::var_os("QUIVER_SCREENSHOT") {
        let shot = setup.browser.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot written to {}", PathBuf::from(path).display());
    }
    finish(setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_falls_back_to_the_websocket_when_udp_is_blocked() {
    let Some(chromium) = find_chromium() else {
        let why = "Chromium not found (install chromium-headless-shell or set QUIVER_CHROMIUM)";
        return quiver_tests::skip("the browser fallback test", why);
    };
    // WebTransport is pointed at a UDP port that never answers (bound and never read: UDP dropped, as by a
    // firewall); the page's WebSocket URL is the server's own.
    let blackhole = std::net::UdpSocket::bind(wildcard()).unwrap();
    let dead = blackhole.local_addr().unwrap().port();
    const FALLBACK_MS: u64 = 1500;
    let started = Instant::now();
    let mut setup = setup(&chromium, "fallback-test", |_, ws| {
        format!(
            "&url=https://localhost:{dead}/quiver&websocketUrl=ws://localhost:{ws}/quiver\
             &fallbackTimeoutMs={FALLBACK_MS}"
        )
    })
    .await;
    let state = setup.browser.wait_for("connected over the WebSocket", |s| s["status"] == "connected").await;
    let took = started.elapsed();
    assert_eq!(state["transport"], "websocket", "{state:#}");
    // The page loads, gives WebTransport FALLBACK_MS, then connects over TCP on loopback (a loaded CI machine's
    // Chromium may take seconds more; what the bound tells apart is a WebSocket chosen only at a timeout, 10 s).
    let at = state["transportAtMs"].as_u64().unwrap_or(u64::MAX);
    assert!((FALLBACK_MS..FALLBACK_MS + 4000).contains(&at), "the WebSocket was chosen {at} ms after the page began");
    assert!(took < Duration::from_secs(20), "{took:?}");
    chat_and_ticks(&mut setup, "fallback-test").await;
    finish(setup).await;
}
