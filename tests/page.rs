//! The demo page's `/config.json` hands out dev tokens only to this machine, with the page key: asked over loopback
//! with the key of the URL the server prints it carries a token the server accepts, without it none; asked from
//! another address of the machine (a non-loopback source address, so the server sees a peer that is not loopback)
//! it answers 403 with the reason.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use quiver_server::{auth::Auth, auth::AuthConfig, Server, ServerConfig, WebConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// This machine's non-loopback IPv4 addresses, from the kernel's local routing table.
fn local_addresses() -> Vec<IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let lines: Vec<&str> = trie.lines().collect();
    let mut found: Vec<IpAddr> = lines
        .windows(2)
        .filter(|pair| pair[1].trim() == "/32 host LOCAL")
        .filter_map(|pair| pair[0].trim().trim_start_matches("|-- ").parse().ok())
        .filter(|ip: &IpAddr| !ip.is_loopback())
        .collect();
    found.sort();
    found.dedup();
    found
}

async fn get(page: SocketAddr, from: Option<IpAddr>, target: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let mut stream = socket.connect(page).await.unwrap();
    stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn dev_tokens_only_for_this_machine() {
    let Some(elsewhere) = local_addresses().into_iter().next() else {
        let why = "this machine has no non-loopback IPv4 address to ask /config.json from";
        return quiver_tests::skip("the page's remote-peer test", why);
    };
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let web = WebConfig { http: Some(quiver_server::web::default_page_addr(listen)), ..WebConfig::default() };
    let server = Server::bind(ServerConfig { web, ..ServerConfig::dev(listen, dir.path().into()) }).unwrap();
    let page = server.page_addr().unwrap();
    let server_url = server.page_url();
    assert_eq!(
        server_url.as_deref().map(|url| url.starts_with(&format!("http://127.0.0.1:{}/#key=", page.port()))),
        Some(true),
        "the address the page holds, not localhost (whose other address another user could hold): {server_url:?}"
    );
    assert!(page.ip().is_loopback(), "the page listens on loopback by default: {page}");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    // From this machine without the page key (a reverse proxy's visitor, another user): where to go, no token.
    let (status, body) = get(page, None, "/config.json?name=alice").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((&json["token"], &json["devTokens"]), (&serde_json::Value::Null, &serde_json::Value::Bool(true)));
    // With the key the server prints in the page's URL: a token.
    let url = server_url.expect("the page is served");
    let key = url.split_once("#key=").map(|(_, key)| key.to_string()).expect("the printed URL carries the key");
    let (status, body) = get(page, None, &format!("/config.json?name=alice&key={key}")).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = Auth::from_config(&AuthConfig::DevKey, dir.path()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = auth.verify(json["token"].as_str(), now).unwrap().unwrap();
    assert_eq!(claims.sub, "alice");

    let (status, body) = get(page, Some(elsewhere), &format!("/config.json?name=alice&key={key}")).await;
    assert_eq!(status, 403, "asked from {elsewhere}: {body}");
    assert!(body.contains("only to pages opened on the server's own machine"), "{body}");
    assert!(!body.contains("token\""), "{body}");
    // The page itself is not secret.
    assert_eq!(get(page, Some(elsewhere), "/").await.0, 200);

    shutdown.cancel();
    task.await.unwrap();
}

/// The URL the server prints names an address no other local user can hold at the page's port: `localhost` only
/// where the listener holds both loopback addresses (`[::]`, IPv4 taken too whatever `net.ipv6.bindv6only` says),
/// else the address it holds. It printed `localhost` for a page on 127.0.0.1 alone: a browser taking `localhost` to
/// `::1` then sent the key to whoever listened there.
#[tokio::test]
async fn the_printed_page_url_names_an_address_no_one_else_can_hold() {
    for listen in ["[::]", "127.0.0.1", "0.0.0.0"] {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = listen.trim_matches(['[', ']']).parse().unwrap();
        // A port of its own, as quiver-server's 4433 (with port 0 the page gets a listener of its own), tried again
        // where another process took it meanwhile.
        let mut tries = 0;
        let server = loop {
            let addr = SocketAddr::new(ip, quiver_tests::ports::restartable_port());
            // As quiver-server sets it up by default: the page on loopback at the QUIC port, served by the
            // WebSocket listener there.
            let web = WebConfig { http: Some(quiver_server::web::default_page_addr(addr)), ..WebConfig::default() };
            match Server::bind(ServerConfig { web, ..ServerConfig::dev(addr, dir.path().into()) }) {
                Ok(server) => break Some(server),
                Err(quiver_server::ServerError::Bind(err) | quiver_server::ServerError::WebSocket(_, err))
                    if err.kind() == std::io::ErrorKind::AddrInUse && tries < 5 =>
                {
                    tries += 1;
                }
                Err(quiver_server::ServerError::Bind(err))
                    if ip.is_ipv6()
                        && (err.kind() == std::io::ErrorKind::AddrNotAvailable || err.raw_os_error() == Some(97)) =>
                {
                    quiver_tests::skip("the page URL test on [::]", &format!("{err}"));
                    break None;
                }
                Err(err) => panic!("{listen}: {err}"),
            }
        };
        let Some(server) = server else { continue };
        let url = server.page_url().unwrap();
        let port = server.page_addr().unwrap().port();
        let held = |addr: &str| std::net::TcpListener::bind((addr, port)).is_err();
        match listen {
            "[::]" => {
                assert!(url.starts_with(&format!("http://localhost:{port}/#key=")), "{url}");
                // (Linux: elsewhere the same user may bind a more specific address beside a listening one; other
                // users are refused by the kernel all the same.)
                if cfg!(target_os = "linux") {
                    assert!(held("127.0.0.1"), "127.0.0.1:{port} was free to another listener");
                    let has_v6_loopback = std::net::TcpListener::bind(("::1", 0)).is_ok();
                    assert!(!has_v6_loopback || held("::1"), "[::1]:{port} was free to another listener");
                }
            }
            _ => assert!(url.starts_with(&format!("http://127.0.0.1:{port}/#key=")), "{listen}: {url}"),
        }
    }
}
