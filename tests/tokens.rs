//! Access tokens end to end: refused tokens get their own codes at Hello, grants are enforced per request with
//! the connection kept, the identity is the token's subject, and a token that expires mid-session ends the
//! connection with `TokenExpired`, after which a token provider reconnects with a fresh token and a fixed token
//! cannot. Tokens from `quiver-server token` are accepted by the servers they are signed for.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use quiver_auth::{mint_dev, mint_hs256, read_hs256_key, AuthConfig, ChannelRight, Claims, RoomRight, TokenKey};
use quiver_client::{Client, ConnectError, ConnectOptions, RequestError, TickError, TokenProvider, TrustOptions};
use quiver_proto::{ErrorCode, Limits};
use quiver_server::{
    token::{self, Signer, TokenCommandError, TokenRequest},
    ServerConfig,
};
use quiver_tests::TestServer;

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn pin(server: &TestServer) -> TrustOptions {
    TrustOptions::Pin(quiver_certs::sha256(&quiver_certs::dev::read(server.data_dir.path()).unwrap()))
}

async fn connect(server: &TestServer, token: Option<String>) -> Result<Client, ConnectError> {
    let options = ConnectOptions { trust: pin(server), token, reconnect: false, ..ConnectOptions::default() };
    Client::connect_with(&server.addr.to_string(), options).await
}

fn refused_code(result: Result<Client, ConnectError>) -> ErrorCode {
    match result {
        Err(ConnectError::Refused(failure)) => failure.code,
        Err(other) => panic!("not a refusal: {other}"),
        Ok(_) => panic!("admitted"),
    }
}

fn denied(result: Result<impl std::fmt::Debug, RequestError>) -> String {
    match result {
        Err(RequestError::Failed(failure)) if failure.code == ErrorCode::PermissionDenied => failure.message,
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_hello_each_with_its_code() {
    let server = TestServer::start(Limits::default());
    let dir = server.data_dir.path();
    let claims = Claims::everything("alice", now_s(), 60);
    assert_eq!(refused_code(connect(&server, None).await), ErrorCode::TokenRequired);
    assert_eq!(refused_code(connect(&server, Some("garbage".into())).await), ErrorCode::TokenMalformed);
    let forged = mint_hs256(&claims, b"not the server's key, 32 bytes!!").unwrap();
    assert_eq!(refused_code(connect(&server, Some(forged)).await), ErrorCode::TokenInvalid);
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()));
    assert_eq!(refused_code(connect(&server, Some(unsigned)).await), ErrorCode::TokenInvalid, "alg none");
    let expired = Claims { exp: now_s() - 1, ..claims.clone() };
    assert_eq!(refused_code(connect(&server, Some(mint_dev(dir, &expired).unwrap())).await), ErrorCode::TokenExpired);
    let early = Claims { nbf: Some(now_s() + 600), ..claims.clone() };
    let code = refused_code(connect(&server, Some(mint_dev(dir, &early).unwrap())).await);
    assert_eq!(code, ErrorCode::TokenNotYetValid);
    // The good one, whatever name Hello asks for: the identity is the token's subject.
    let options = ConnectOptions {
        trust: pin(&server),
        token: Some(mint_dev(dir, &claims).unwrap()),
        name: Some("mallory".into()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    assert_eq!(client.welcome().identity, "alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_grants_are_denied_and_the_connection_stays() {
    let server = TestServer::start(Limits::default());
    let claims = Claims {
        sub: "reader".into(),
        exp: now_s() + 60,
        nbf: None,
        rooms: BTreeMap::from([
            ("lobby".into(), vec![RoomRight::Join]),
            ("game.*".into(), vec![RoomRight::Join, RoomRight::Post]),
        ]),
        channels: BTreeMap::from([("prices.**".into(), vec![ChannelRight::Subscribe])]),
    };
    let client = connect(&server, Some(mint_dev(server.data_dir.path(), &claims).unwrap())).await.unwrap();
    let _lobby = client.join("lobby").await.unwrap();
    assert!(denied(client.post("lobby", "hi").await).contains("post to room lobby"));
    assert!(denied(client.join("staff").await.map(|_| ())).contains("join room staff"));
    assert!(denied(client.history("staff", None, 10).await).contains("staff"));
    let _game = client.join("game.7").await.unwrap();
    client.post("game.7", "gg").await.unwrap();
    let _ticks = client.subscribe("prices.eu.btc").await.unwrap();
    assert!(denied(client.subscribe("news").await.map(|_| ())).contains("subscribe to channel news"));
    assert!(denied(client.publisher("prices.eu.btc").await.map(|_| ())).contains("publish"));
    // A name over max_name is a bad request, whatever the grants: not a refusal that repeats it (a name of
    // nearly a frame made a reply too large to send).
    for long in ["staff".repeat(30), "x".repeat(60_000)] {
        match client.join(&long).await.map(|_| ()) {
            Err(RequestError::Failed(failure)) => {
                assert_eq!(failure.code, ErrorCode::BadRequest, "{}", failure.message);
                assert!(failure.message.len() < 200, "{}", failure.message);
            }
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }
    // Still connected and served.
    client.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_connection_and_a_provider_renews_it() {
    let server = TestServer::start(Limits::default());
    let dir = server.data_dir.path().to_owned();
    // Tokens valid for 2 s from each connect.
    let minted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = minted.clone();
    let provider = TokenProvider::new(move || {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        mint_dev(&dir, &Claims::everything("renewer", now_s(), 2)).map_err(Into::into)
    });
    let options = ConnectOptions { trust: pin(&server), token_provider: Some(provider), ..ConnectOptions::default() };
    let renewing = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let mut room = renewing.join("expiry").await.unwrap();
    let first = renewing.connection().unwrap();

    // A fixed token with the same short life: the reconnect after expiry is refused and the client ends.
    let fixed = mint_dev(server.data_dir.path(), &Claims::everything("fixed", now_s(), 2)).unwrap();
    let options = ConnectOptions { trust: pin(&server), token: Some(fixed), ..ConnectOptions::default() };
    let stuck = Client::connect_with(&server.addr.to_string(), options).await.unwrap();

    let closed = tokio::time::timeout(Duration::from_secs(10), first.closed()).await.expect("closed at exp");
    assert_eq!(quiver_transport::close::describe(&closed).0, ErrorCode::TokenExpired);
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), stuck.closed()).await.expect("ended");
    assert_eq!(code, ErrorCode::TokenExpired, "{reason}");
    assert!(server.stats.snapshot().sessions_expired >= 2, "both expiries counted");
    // Among the refusals by code too: the two sessions it ended, and the fixed token's Hello at the reconnect.
    assert!(server.stats.refusals(ErrorCode::TokenExpired) >= 3, "{}", server.stats.refusals(ErrorCode::TokenExpired));
    // The tokens refused are the Hellos' only: the sessions ended at exp are not (an operator's alert on forged or
    // bad tokens fired on every short-lived token's normal end).
    let (snapshot, by_code) = (server.stats.snapshot(), server.stats.refusals(ErrorCode::TokenExpired));
    assert_eq!(snapshot.tokens_refused, by_code - snapshot.sessions_expired, "{snapshot:?}");

    // The renewing client is back, with a fresh token, in its room.
    let seq = tokio::time::timeout(Duration::from_secs(10), renewing.post("expiry", "after renewal")).await.unwrap();
    seq.unwrap();
    assert!(minted.load(std::sync::atomic::Ordering::Relaxed) >= 2, "a second token was minted");
    let got = quiver_tests::first_event(&mut room, Duration::from_secs(10), |event| match event {
        quiver_client::RoomEvent::Message(m) => Some(m),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(&got.body[..], b"after renewal");
    server.stop().await;
}

fn token_request(sub: &str, signer: Signer) -> TokenRequest {
    TokenRequest::every_right(sub, signer)
}

/// `quiver-server token`'s library half: with `--init-key` its token is accepted by a server then started on that
/// data directory; with `--hs256-key FILE`, by a server started with `--hs256-key FILE`; neither by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_tokens_are_accepted_by_the_servers_they_are_signed_for() {
    let localhost = "127.0.0.1:0".parse().unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let dev = |create| Signer::DevKey { data_dir: data_dir.path().to_owned(), create };
    let refused = token::mint(&token_request("alice", dev(false)), SystemTime::now()).unwrap_err();
    assert!(matches!(refused, TokenCommandError::NoDevKey { .. }), "{refused}");
    let minted = token::mint(&token_request("alice", dev(true)), SystemTime::now()).unwrap();
    assert!(minted.created_key.is_some());
    let dev_server = TestServer::start_at(localhost, data_dir, Limits::default());
    assert_eq!(connect(&dev_server, Some(minted.token.clone())).await.unwrap().welcome().identity, "alice");

    let hs_dir = tempfile::tempdir().unwrap();
    let secret = hs_dir.path().join("secret.hex");
    std::fs::write(&secret, "7e".repeat(32)).unwrap();
    let hs_token = token::mint(&token_request("svc", Signer::Hs256Key(secret.clone())), SystemTime::now()).unwrap();
    // What `quiver-server --hs256-key FILE` is started with.
    let auth = AuthConfig::Keys(vec![TokenKey::Hs256(read_hs256_key(&secret).unwrap())]);
    let config = ServerConfig { auth, ..ServerConfig::dev(localhost, hs_dir.path().to_owned()) };
    let hs_server = TestServer::start_with(config, hs_dir);
    assert_eq!(connect(&hs_server, Some(hs_token.token.clone())).await.unwrap().welcome().identity, "svc");

    assert_eq!(refused_code(connect(&dev_server, Some(hs_token.token)).await), ErrorCode::TokenInvalid);
    assert_eq!(refused_code(connect(&hs_server, Some(minted.token)).await), ErrorCode::TokenInvalid);
    dev_server.stop().await;
    hs_server.stop().await;
}

/// A room the server will not take back after a reconnect (the renewed token no longer grants it) ends for its
/// reader: `next()` hands out what arrived before, then `None`, and `end_reason` says why, while the client and its
/// other rooms go on. A client that ends for good ends its rooms' readers the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_refused_at_the_rejoin_ends_for_its_reader_with_the_reason() {
    let server = TestServer::start(Limits::default());
    let dir = server.data_dir.path().to_owned();
    let minted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = minted.clone();
    let provider = TokenProvider::new(move || {
        let mut claims = Claims::everything("narrowed", now_s(), 3600);
        if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
            claims.rooms = BTreeMap::from([("open.*".into(), vec![RoomRight::Join, RoomRight::Post])]);
            claims.channels = BTreeMap::from([("open.*".into(), vec![ChannelRight::Subscribe, ChannelRight::Publish])]);
        }
        mint_dev(&dir, &claims).map_err(Into::into)
    });
    let options = ConnectOptions { trust: pin(&server), token_provider: Some(provider), ..ConnectOptions::default() };
    let client = Client::connect_with(&server.addr.to_string(), options).await.unwrap();
    let mut secret = client.join("secret").await.unwrap();
    let mut hall = client.join("open.hall").await.unwrap();
    let mut secret_ticks = client.subscribe("secret.ticks").await.unwrap();
    let secret_publisher = client.publisher("secret.ticks").await.unwrap();
    client.post("secret", "before").await.unwrap();
    // Arrived (the acknowledgement can come before the event), and left unread until the room ends.
    tokio::time::timeout(Duration::from_secs(10), async {
        while secret.pending() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the event arrived");
    assert_eq!(secret.end_reason(), None);

    // A new connection, with the narrower token.
    client.connection().unwrap().close(0u32.into(), b"test: reconnect");
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        let mut events = Vec::new();
        while let Some(event) = secret.next().await {
            events.push(event);
        }
        events
    })
    .await
    .expect("the refused room's reader ends");
    let bodies: Vec<&[u8]> = events
        .iter()
        .filter_map(|e| match e {
            quiver_client::RoomEvent::Message(m) => Some(&m.body[..]),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [b"before"], "what arrived before the end is handed out first");
    let (code, reason) = secret.end_reason().expect("why the room ended");
    assert_eq!(code, ErrorCode::PermissionDenied, "{reason}");
    assert!(minted.load(std::sync::atomic::Ordering::Relaxed) >= 2, "the reconnect minted the narrower token");
    // A subscription refused at the resubscribe ends the same way (it waited forever).
    let tick = tokio::time::timeout(Duration::from_secs(10), secret_ticks.next()).await;
    assert!(matches!(tick, Ok(None)), "the refused subscription's reader ends: {tick:?}");
    let (code, reason) = secret_ticks.end_reason().expect("why the subscription ended");
    assert_eq!(code, ErrorCode::PermissionDenied, "{reason}");
    // And a claim refused at the reclaim: its publisher's ticks fail with the reason (they failed as NotConnected
    // for good), and a new publisher of the channel claims it anew (denied here).
    let claim_ended = tokio::time::timeout(Duration::from_secs(10), async {
        while secret_publisher.end_reason().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(claim_ended.is_ok(), "the refused claim ends");
    let sent = secret_publisher.send("late");
    assert!(matches!(sent, Err(TickError::Ended { code: ErrorCode::PermissionDenied, .. })), "{sent:?}");
    assert!(denied(client.publisher("secret.ticks").await.map(|_| ())).contains("secret.ticks"));

    // The client and its granted room go on; the ended room is joined again like any room (and denied here).
    client.post("open.hall", "after").await.unwrap();
    let got = quiver_tests::first_event(&mut hall, Duration::from_secs(10), |event| match event {
        quiver_client::RoomEvent::Message(m) if &m.body[..] == b"after" => Some(()),
        _ => None,
    })
    .await;
    assert!(got.is_some(), "the granted room was rejoined");
    assert!(denied(client.join("secret").await.map(|_| ())).contains("join room secret"));

    // A client that ends ends its rooms' readers.
    client.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async { while hall.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "a closed client's room reader gets None");
    assert_eq!(hall.end_reason().map(|(code, _)| code), Some(ErrorCode::NoError));
    server.stop().await;
}

/// A reload of the token keys (SIGHUP) ends the sessions whose token was signed with a key it removed, with
/// `TokenInvalid` and why, a connection accepted before the reload that says Hello after it too; sessions of the
/// keys kept go on, and the removed key's tokens are refused at Hello. Before, every open session ran on to its
/// token's `exp` (a leaked key could only be cut off by a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_key_ends_the_sessions_its_tokens_opened() {
    use quiver_tests::hostile::{frame, hello};
    let localhost = "127.0.0.1:0".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (leaked, kept) = ([0x11u8; 32], [0x22u8; 32]);
    let keys = |keys: &[&[u8; 32]]| AuthConfig::Keys(keys.iter().map(|k| TokenKey::Hs256(k.to_vec())).collect());
    let config = ServerConfig { auth: keys(&[&leaked, &kept]), ..ServerConfig::dev(localhost, dir.path().to_owned()) };
    let server = TestServer::start_with(config, dir);
    let token = |sub: &str, key: &[u8; 32]| mint_hs256(&Claims::everything(sub, now_s(), 600), key).unwrap();
    let revoked = connect(&server, Some(token("mallory", &leaked))).await.unwrap();
    let _room = revoked.join("lobby").await.unwrap();
    let staying = connect(&server, Some(token("alice", &kept))).await.unwrap();
    let early = server.raw().await;

    server.reloader.reload(keys(&[&kept])).unwrap();
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), revoked.closed()).await.expect("ended");
    assert_eq!(code, ErrorCode::TokenInvalid, "{reason}");
    assert!(reason.contains("no longer trusted"), "{reason}");
    // Accepted with the old keys, its Hello checked with the new ones (or, said just before the reload, checked
    // again once welcomed): refused either way.
    let (mut send, _recv) = early.open_bi().await.unwrap();
    send.write_all(&frame(0, hello(token("eve", &leaked)))).await.unwrap();
    assert_eq!(quiver_tests::closed_with(&early).await.0, ErrorCode::TokenInvalid);
    // The kept key's session goes on; the removed key's tokens are refused from now on.
    staying.join("lobby").await.unwrap();
    staying.ping().await.unwrap();
    assert_eq!(refused_code(connect(&server, Some(token("mallory", &leaked))).await), ErrorCode::TokenInvalid);
    server.stop().await;
}

/// On a server that admits anonymous sessions, a client without a name is known by a name of its own, the same on
/// every connection: posts in flight when the connection drops, re-sent on the next one, are each stored once.
/// Before, its identity was the session's (`anon-<session id>`), new at every reconnect, and the server's
/// deduplication (by identity and `client_msg_id`) took the re-sent posts for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_client_of_an_anonymous_server_keeps_its_identity_and_its_resent_posts_are_stored_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), data_dir.path().to_owned());
    let server = TestServer::start_with(ServerConfig { auth: AuthConfig::Anonymous, ..dev }, data_dir);
    let options = ConnectOptions { reconnect_delay: Duration::from_millis(20), ..ConnectOptions::default() };
    let poster = server.client_with(options).await.unwrap();
    let identity = poster.welcome().identity;
    assert!(identity.starts_with("guest-") && identity == poster.name(), "{identity}");
    let acked = quiver_tests::posts_across_a_dropped_connection(&poster, "ops", 200, 100).await;
    assert_eq!(acked, (1..=200).collect::<Vec<_>>(), "each stored once");
    assert_eq!(poster.welcome().identity, identity, "the same identity after the reconnect");
    let history = poster.history("ops", None, 1_000).await.unwrap();
    assert_eq!(history.messages.len(), 200, "nothing stored twice");
    server.stop().await;
}
