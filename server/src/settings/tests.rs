use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load_text(text: &str, vars: &[(&str, &str)], flags: Vec<Override>) -> Result<Settings, SettingsError> {
    let file = file(text);
    load(Some(file.path()), env(vars), flags).map(|(s, _)| s)
}

#[test]
fn the_template_is_every_setting_at_its_default() {
    let parsed: Settings = toml::from_str(TEMPLATE).expect("the template parses");
    assert_eq!(parsed, Settings::default());
    // Every key is written out, none left to its default silently.
    let template: toml::Table = TEMPLATE.parse().unwrap();
    let mut written = Vec::new();
    for (name, value) in &template {
        match value {
            toml::Value::Table(section) => written.extend(section.keys().map(|k| format!("{name}.{k}"))),
            _ => written.push(name.clone()),
        }
    }
    let (mut all, mut written) = (keys(), written);
    all.sort();
    written.sort();
    assert_eq!(written, all);
    assert!(all.len() >= 50, "{} keys", all.len());
    Settings::default().check().expect("the defaults are valid");
}

#[test]
fn docs_operations_lists_every_setting() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
    let missing: Vec<String> = keys().into_iter().filter(|key| !docs.contains(&format!("`{key}`"))).collect();
    assert!(missing.is_empty(), "docs/operations.md does not describe {missing:?}");
}

#[test]
fn a_file_sets_limits_and_unset_keys_keep_their_defaults() {
    let settings = load_text("listen = \"127.0.0.1:5000\"\n[limits]\nposts_per_s = 5\n", &[], vec![]).unwrap();
    assert_eq!(settings.limits.posts_per_s, 5);
    assert_eq!(settings.limits.requests_per_s, Limits::default().requests_per_s);
    assert_eq!(settings.listen.port(), 5000);
    let config = settings.server_config().unwrap();
    assert_eq!(config.limits.posts_per_s, 5);
    assert_eq!(config.admin, Some("127.0.0.1:9433".parse().unwrap()));
}

#[test]
fn unknown_keys_and_wrong_types_are_errors_naming_the_line() {
    let err =
        load_text("listen = \"127.0.0.1:0\"\n\n[limits]\nposts_per_sec = 5\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 4") && err.contains("unknown field `posts_per_sec`"), "{err}");
    let err = load_text("[store]\nkind = \"tape\"\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("tape"), "{err}");
    let err = load_text("[limits]\nmax_rooms = \"many\"\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("invalid type"), "{err}");
    let err = load_text("[nonsense]\nx = 1\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("nonsense"), "{err}");
}

#[test]
fn out_of_range_values_are_errors_naming_the_line() {
    let err = load_text("[limits]\nmax_body = 1000\nmax_frame = 100\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 3: limits.max_frame"), "{err}");
    let huge = "[limits]\nmax_frame = 33554432\nroom_queue_bytes = 33554432\n";
    let err = load_text(huge, &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2: limits.max_frame: max_frame 33554432 is above the protocol's ceiling"), "{err}");
    let err = load_text("drain_timeout_ms = 0\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 1: drain_timeout_ms: must be at least 1"), "{err}");
    let err = load_text("[admin]\nlisten = \"everywhere\"\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2: admin.listen"), "{err}");
    let err = load_text("[tls]\ncert = \"c.pem\"\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("tls.key") && err.contains("default"), "{err}");
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let text = "[limits]\nposts_per_s = 5\nrequests_per_s = 50\n";
    let vars = [("QUIVER_LIMITS_POSTS_PER_S", "7"), ("QUIVER_LISTEN", "127.0.0.1:7000"), ("HOME", "/root")];
    let settings = load_text(text, &vars, vec![]).unwrap();
    assert_eq!((settings.limits.posts_per_s, settings.limits.requests_per_s), (7, 50));
    assert_eq!(settings.listen.port(), 7000);
    let flag = Override::flag("--listen", "listen", "127.0.0.1:8000");
    let settings = load_text(text, &vars, vec![flag]).unwrap();
    assert_eq!(settings.listen.port(), 8000);
    // Lists, strings that look like numbers, and booleans from the environment.
    let vars = [
        ("QUIVER_WEB_ORIGINS", "https://a.example, https://b.example"),
        ("QUIVER_AUTH_HS256_SECRET", &"1".repeat(64)),
        ("QUIVER_STORE_KIND", "memory"),
    ];
    let settings = load_text("", &vars, vec![]).unwrap();
    assert_eq!(settings.web.origins, ["https://a.example", "https://b.example"]);
    assert_eq!(settings.auth.hs256_secret, "1".repeat(64));
    assert_eq!(settings.durability(), Durability::Memory);
}

#[test]
fn bad_overrides_name_their_variable_or_flag() {
    let err = load_text("", &[("QUIVER_LIMITS_POSTS_PER_SEC", "5")], vec![]).unwrap_err().to_string();
    assert!(err.starts_with("QUIVER_LIMITS_POSTS_PER_SEC: there is no setting limits.posts_per_sec"), "{err}");
    // A section alone (named after a flag), or a key but for its underscores or its unit: refused, with the name
    // meant (passed over, they started the server on its defaults).
    let err = load_text("", &[("QUIVER_STORE", "memory")], vec![]).unwrap_err().to_string();
    assert!(err.starts_with("QUIVER_STORE: names the section [store], not a setting"), "{err}");
    assert!(err.ends_with("QUIVER_STORE_DURABILITY, QUIVER_STORE_KIND"), "{err}");
    let err = load_text("", &[("QUIVER_DATADIR", "/srv")], vec![]).unwrap_err().to_string();
    assert!(err.starts_with("QUIVER_DATADIR: there is no such setting; did you mean QUIVER_DATA_DIR?"), "{err}");
    let err = load_text("", &[("QUIVER_DRAIN_TIMEOUT", "5")], vec![]).unwrap_err().to_string();
    assert!(err.contains("did you mean QUIVER_DRAIN_TIMEOUT_MS?"), "{err}");
    let err = load_text("", &[("QUIVER_BROKER_HEARTBEAT", "5")], vec![]).unwrap_err().to_string();
    assert!(err.contains("no setting broker.heartbeat (") && err.contains("mean QUIVER_BROKER_HEARTBEAT_MS?"), "{err}");
    // Other programs' variables are theirs.
    for var in ["QUIVER_TOKEN", "QUIVER_KEY", "QUIVER_SERVER_BIN", "QUIVER_REQUIRE_ALL", "QUIVER_NODE_LOG"] {
        load_text("", &[(var, "x")], vec![]).unwrap_or_else(|err| panic!("{var}: {err}"));
    }
    let err = load_text("", &[("QUIVER_LIMITS_POSTS_PER_S", "lots")], vec![]).unwrap_err().to_string();
    assert!(err.starts_with("QUIVER_LIMITS_POSTS_PER_S: limits.posts_per_s"), "{err}");
    let err = load_text("", &[("QUIVER_LIMITS_POSTS_PER_S", "0")], vec![]).unwrap_err().to_string();
    assert!(err.starts_with("QUIVER_LIMITS_POSTS_PER_S: limits.posts_per_s: posts_per_s must be at least 1"), "{err}");
    // Other programs' variables are not ours.
    load_text("", &[("QUIVER_REQUIRE_ALL", "1"), ("QUIVER_SERVER_BIN", "/x")], vec![]).unwrap();
    let err = load_text("", &[], vec![Override::flag("--admin", "admin.listen", "nowhere")]).unwrap_err().to_string();
    assert!(err.starts_with("--admin: admin.listen"), "{err}");
}

#[test]
fn print_redacts_the_hs256_secret() {
    let secret = "ab".repeat(32);
    let settings = load_text(&format!("[auth]\nhs256_secret = \"{secret}\"\n"), &[], vec![]).unwrap();
    let printed = settings.to_redacted_toml();
    assert!(!printed.contains(&secret), "{printed}");
    assert!(printed.contains("hs256_secret = \"<redacted>\""), "{printed}");
    // What is printed reads back (with the secret's placeholder) as the same settings.
    let back: Settings = toml::from_str(&printed).unwrap();
    assert_eq!(back.limits, settings.limits);
    match settings.server_config().unwrap().auth {
        AuthConfig::Keys(keys) => assert_eq!(keys.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn transport_settings_round_trip_to_the_tuning() {
    let default = TransportSettings::default();
    assert_eq!(default.tuning(), TransportTuning::quiver());
    let off = TransportSettings { keep_alive_ms: 0, tail_probe_ms: 0, congestion_floor: 0, ..default };
    let tuning = off.tuning();
    assert_eq!((tuning.keep_alive, tuning.tail_probe, tuning.congestion_floor), (None, None, None));
    assert_eq!(default.mtu_discovery, 0, "path MTU discovery is off by default");
    assert_eq!(TransportSettings { mtu_discovery: 1452, ..default }.tuning().mtu_discovery, Some(1452));
    for bad in ["1199", "65528"] {
        let err = load_text(&format!("[transport]\nmtu_discovery = {bad}\n"), &[], vec![]).unwrap_err().to_string();
        assert!(err.contains("transport.mtu_discovery"), "{err}");
    }
}

#[test]
fn errors_never_show_the_hs256_secret() {
    let secret = "0123456789".repeat(7);
    // Without quotes: toml quotes the offending line in its message.
    let err = load_text(&format!("[auth]\nhs256_secret = {secret}\n"), &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2") && !err.contains(&secret), "{err}");
    let settings = load_text(&format!("[auth]\nhs256_secret = \"{}\"\n", "ab".repeat(32)), &[], vec![]).unwrap();
    assert!(!format!("{settings:?}").contains(&"ab".repeat(32)));
}

/// A secret in a dotted key or an inline table (a mistyped neighbour makes toml quote the line): not shown either.
#[test]
fn errors_never_show_a_secret_in_a_dotted_key_or_an_inline_table() {
    let secret = "0123456789".repeat(7);
    for text in [
        format!("auth.hs256_secret = {secret}\n"),
        format!("auth = {{ hs256_secret = \"{secret}\", anonymus = true }}\n"),
        format!("broker = {{ url = \"redis://:{secret}@h:6379\", typo = 1 }}\n"),
    ] {
        let err = load_text(&text, &[], vec![]).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains(&secret), "{err}");
    }
}

/// The broker's password, in the URL's user information or its `pass` parameter, is not in a parse error (toml
/// quotes the offending line: here an unquoted URL) nor in `config print`.
#[test]
fn errors_and_print_never_show_the_brokers_password() {
    for url in ["redis://:S3CRETPW@10.0.0.1:6379/0", "redis+unix:///run/redis.sock?db=1&pass=S3CRETPW"] {
        let err = load_text(&format!("[broker]\nurl = {url}\n"), &[], vec![]).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("S3CRETPW"), "{err}");
        let settings = load_text(&format!("[broker]\nurl = \"{url}\"\n"), &[], vec![]).unwrap();
        let printed = settings.to_redacted_toml();
        assert!(!printed.contains("S3CRETPW") && printed.contains("<redacted>"), "{printed}");
    }
}

#[test]
fn of_two_contradicting_limits_the_one_moved_from_its_default_is_named() {
    let err = load_text("[limits]\nmax_body = 65530\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2: limits.max_body"), "{err}");
    let err = load_text("[limits]\nmax_connections = 10\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2: limits.max_connections:"), "{err}");
}

/// `config check` (`Settings::check`) refuses what the server would refuse at start: the `[web]` ranges and
/// addresses too (a `websocket_send_buffer` of 100 passed the check, then the server did not start).
#[test]
fn the_check_refuses_web_settings_the_server_refuses() {
    for (text, key) in [
        ("[web]\nwebsocket_send_buffer = 100\n", "web.websocket_send_buffer"),
        ("[web]\nwebsocket = \"x\"\n", "web.websocket"),
        // Paths a URL parser rewrites (the WebTransport lane compares the parsed path): they never matched.
        ("[web]\npath = \"quiver\"\n", "web.path"),
        ("[web]\npath = \"/my room\"\n", "web.path"),
        ("[web]\npath = \"/a/../quiver\"\n", "web.path"),
        ("[web]\npath = \"/a/%2E%2E/quiver\"\n", "web.path"),
        ("[web]\npath = \"/caf%c3%a9\"\n", "web.path"),
        ("[web]\npath = \"/100%\"\n", "web.path"),
        ("[web]\npath = \"/quiver?x=1\"\n", "web.path"),
        ("[web]\npath = \"/café\"\n", "web.path"),
    ] {
        match load_text(text, &[], Vec::new()) {
            Err(SettingsError::Invalid { key: refused, .. }) => assert_eq!(refused, key),
            other => panic!("{text}: {other:?}"),
        }
    }
    for path in ["/", "/quiver", "/api/v1/quiver", "/a-b_c.d~e:f@g", "/quiver/", "/a//b", "/caf%C3%A9", "/...x"] {
        let text = format!("[web]\npath = {path:?}\n");
        assert!(load_text(&text, &[], Vec::new()).is_ok(), "{path} is plain");
    }
}

#[test]
fn values_that_would_lock_every_client_out_are_refused() {
    for (text, key) in [
        // Times out every handshake at its first poll.
        ("[limits]\nhandshake_timeout_ms = 0\n", "limits.handshake_timeout_ms"),
        // Origins a browser never sends: every WebTransport CONNECT and WebSocket upgrade from a page gets 403.
        ("[web]\norigins = [\"https://app.example/\"]\n", "web.origins"),
        ("[web]\norigins = [\"https://app.example:443\"]\n", "web.origins"),
        ("[web]\norigins = [\"http://app.example:80\"]\n", "web.origins"),
        ("[web]\norigins = [\"https://app.example/chat\"]\n", "web.origins"),
        ("[web]\norigins = [\"app.example\"]\n", "web.origins"),
        ("[web]\norigins = [\"https://bücher.example\"]\n", "web.origins"),
        // A post of max_body could be stored but never paged through History.
        ("[limits]\nmax_body = 65200\n", "limits.max_body"),
        // A room name longer than a store key: every request of such a room failed inside the store.
        ("[limits]\nmax_frame = 1048576\nroom_queue_bytes = 1048576\nmax_name = 70000\n", "limits.max_name"),
        // Names the admin listener could never match (Prometheus' target form, a URL).
        ("[admin]\nhosts = [\"quiver:9433\"]\n", "admin.hosts"),
        ("[admin]\nhosts = [\"http://quiver\"]\n", "admin.hosts"),
        ("[admin]\nhosts = [\"quiver.\"]\n", "admin.hosts"),
    ] {
        match load_text(text, &[], Vec::new()) {
            Err(SettingsError::Invalid { key: refused, .. }) => assert_eq!(refused, key, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    let fine = "[web]\norigins = [\"https://app.example\", \"https://app.example:8443\", \"http://localhost:3000\"]\n";
    load_text(fine, &[], Vec::new()).unwrap();
}

/// Values that would undo the server's own safety (a slot held for days before Hello, hundreds of copies per
/// frame, congestion control off, megabytes per connection outside the budget) or silently turn dedupe off are
/// refused, naming the key; the largest accepted values load.
#[test]
fn values_that_undo_the_servers_safety_are_refused() {
    for (text, key) in [
        ("[limits]\nhandshake_timeout_ms = 60001\n", "limits.handshake_timeout_ms"),
        ("[transport]\ncopies = 9\n", "transport.copies"),
        ("[transport]\nmax_ack_delay_ms = 4294967295\n", "transport.max_ack_delay_ms"),
        ("[transport]\nmax_ack_delay_ms = 26\n", "transport.max_ack_delay_ms"),
        ("[transport]\ncongestion_floor = 120001\n", "transport.congestion_floor"),
        ("[transport]\ndatagram_send_buffer = 1048577\n", "transport.datagram_send_buffer"),
        ("[limits]\ndedupe_window_s = 0\n", "limits.dedupe_window_s"),
        ("[limits]\ndedupe_max_entries = 0\n", "limits.dedupe_max_entries"),
        ("[limits]\nhistory_max_messages = 0\n", "limits.history_max_messages"),
        // A history smaller than one message of max_frame: acknowledged posts forgotten at once.
        ("[budget]\nroom_history_bytes = 8192\n", "budget.room_history_bytes"),
        ("[budget]\nretained_bytes = 8192\n", "budget.retained_bytes"),
        ("[budget]\nwebsocket_max_upgrading = 1000001\n", "budget.websocket_max_upgrading"),
        ("[budget]\nhttp_max_connections = 100001\n", "budget.http_max_connections"),
        ("[budget]\nhttp_max_connections = 0\n", "budget.http_max_connections"),
        ("[budget]\nhttp_max_connections_per_ip = 0\n", "budget.http_max_connections_per_ip"),
        ("[budget]\nmax_connections_per_network = 0\n", "budget.max_connections_per_network"),
        ("[budget]\nnew_connections_per_s_per_network = 0\n", "budget.new_connections_per_s_per_network"),
        // One address is in one network: a bound above the network's is never reached.
        ("[limits]\nmax_connections_per_ip = 2561\n", "limits.max_connections_per_ip"),
        // A room event carries names: a long max_name outgrows the frame, and max_name is what moved.
        ("[limits]\nmax_name = 60000\n", "limits.max_name"),
    ] {
        match load_text(text, &[], Vec::new()) {
            Err(SettingsError::Invalid { key: refused, message, .. }) => assert_eq!(refused, key, "{text}: {message}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    let largest = "[limits]\nhandshake_timeout_ms = 60000\n[transport]\ncopies = 8\ncongestion_floor = 120000\n\
                   datagram_send_buffer = 1048576\n[budget]\nwebsocket_max_upgrading = 1000000\n\
                   websocket_max_upgrading_per_ip = 1000000\nhttp_max_connections = 100000\n";
    load_text(largest, &[], Vec::new()).unwrap();
    load_text("[admin]\nhosts = [\"quiver\", \"*.quiver.svc\", \"metrics-1.example\"]\n", &[], Vec::new()).unwrap();
}

/// The default filter keeps the server's own info lines and drops what a peer can make a library log without
/// limit: web-transport-quinn's warning for every stream opened with a bad header.
#[test]
fn the_default_log_filter_drops_what_a_peer_can_repeat() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use tracing_subscriber::layer::SubscriberExt;

    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let seen = |emit: fn()| {
        let count = Arc::new(AtomicUsize::new(0));
        let filter = tracing_subscriber::EnvFilter::new(&LogSettings::default().filter);
        let subscriber = tracing_subscriber::registry().with(filter).with(Count(count.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        count.load(Ordering::Relaxed)
    };
    assert_eq!(seen(|| tracing::info!(target: "quiver_server::net", "connection ended")), 1);
    assert_eq!(seen(|| tracing::warn!(target: "web_transport_quinn::session", "failed to decode stream header")), 0);
    assert_eq!(seen(|| tracing::error!(target: "web_transport_quinn::session", "a real failure")), 1);
    assert_eq!(seen(|| tracing::info!(target: "quinn_proto::connection", "a packet")), 0);
}

/// A reload (SIGHUP) takes a deleted key file for a key removed (an operator revokes a key so), where the start
/// refuses it; a reload that would leave no key is refused rather than falling back to the dev key.
#[test]
fn a_reload_takes_a_deleted_key_file_for_a_key_removed_but_never_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.hex"), dir.path().join("b.hex"));
    std::fs::write(&a, "aa".repeat(32)).unwrap();
    std::fs::write(&b, "bb".repeat(32)).unwrap();
    let text = format!("[auth]\nhs256_key_files = [{:?}, {:?}]\n", a.display().to_string(), b.display().to_string());
    let settings = load_text(&text, &[], vec![]).unwrap();
    let keys = |auth: AuthConfig| match auth {
        AuthConfig::Keys(keys) => keys.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(keys(settings.auth_config_for_reload().unwrap().0), 2);

    std::fs::remove_file(&a).unwrap();
    let err = settings.auth_config().unwrap_err();
    assert!(err.key == "auth.hs256_key_files" && err.message.contains("a.hex"), "{err:?}");
    let (auth, gone) = settings.auth_config_for_reload().unwrap();
    assert_eq!((keys(auth), gone), (1, vec![a.clone()]));

    std::fs::write(&b, "not hex").unwrap();
    assert!(settings.auth_config_for_reload().is_err(), "a damaged key file is an error, not a key removed");
    std::fs::remove_file(&b).unwrap();
    let err = settings.auth_config_for_reload().unwrap_err();
    assert!(err.message.contains("at least one key") && err.message.contains("b.hex"), "{err:?}");
}

/// A key file listed anew by the reload's settings must be there: only one the settings before listed can be gone
/// (a key removed). A path mistyped while adding a key was taken for a key removed, the reload applied without the
/// new key (its clients refused), and the next start refused the settings.
#[test]
fn a_key_file_listed_anew_and_missing_fails_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.hex"), dir.path().join("new.hex"));
    std::fs::write(&old, "aa".repeat(32)).unwrap();
    let list = |paths: &[&std::path::Path]| {
        let paths: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        load_text(&format!("[auth]\nhs256_key_files = [{}]\n", paths.join(", ")), &[], vec![]).unwrap()
    };
    let before = list(&[&old]);
    let after = list(&[&old, &new]); // new.hex mistyped: not there
    let err = after.auth_config_for_reload_after(&before).unwrap_err();
    assert!(err.key == "auth.hs256_key_files" && err.message.contains("new.hex"), "{err:?}");
    // Deleted after it was applied: a key removed.
    std::fs::write(&new, "bb".repeat(32)).unwrap();
    std::fs::remove_file(&old).unwrap();
    let (_, gone) = after.auth_config_for_reload_after(&after).unwrap();
    assert_eq!(gone, vec![old]);
}

/// Ranges that looked valid and quietly broke a guarantee: a frame timeout of days (a half-sent frame held a
/// connection), a sweep once a month (expired history kept), a datagram buffer smaller than a datagram (every
/// full-size tick refused), and the admin listener on the WebSocket's TCP port (the server failed at start, naming
/// the other listener).
#[test]
fn ranges_that_quietly_broke_a_guarantee_and_a_shared_tcp_port_are_refused() {
    for (text, key) in [
        ("[budget]\nframe_timeout_ms = 4000000000\n", "budget.frame_timeout_ms"),
        ("[budget]\nsweep_interval_ms = 2592000000\n", "budget.sweep_interval_ms"),
        ("[budget]\nsweep_interval_ms = 9\n", "budget.sweep_interval_ms"),
        ("[transport]\ndatagram_send_buffer = 1000\n", "transport.datagram_send_buffer"),
        ("[transport]\nmtu_discovery = 1452\ndatagram_send_buffer = 1400\n", "transport.datagram_send_buffer"),
        // Of a pair, the key the file set is named, at its line (the message names both).
        ("[transport]\nmtu_discovery = 65527\n", "line 2: transport.mtu_discovery: transport.datagram_send_buffer"),
        ("[budget]\nmax_connections_per_network = 100\n", "line 2: budget.max_connections_per_network"),
        ("[limits]\nmax_connections_per_ip = 9999\n", "line 2: limits.max_connections_per_ip"),
        ("[budget]\nnew_connections_per_s_per_network = 50\n", "line 2: budget.new_connections_per_s_per_network"),
        ("[limits]\nnew_connections_per_s_per_ip = 5000\n", "line 2: limits.new_connections_per_s_per_ip"),
        ("listen = \"[::]:4433\"\n[admin]\nlisten = \"[::]:4433\"\n", "admin.listen"),
        ("listen = \"[::]:4433\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n[web]\npage = \"off\"\nwebsocket = \"0.0.0.0:8080\"\n", "admin.listen"),
        ("[web]\nwebsocket = \"127.0.0.1:9433\"\n", "web.websocket"),
        ("[transport]\ncopy_spacing_ms = 0\n", "transport.copy_spacing_ms"),
        ("[web]\npage = \"0.0.0.0:8080\"\nwebsocket = \"127.0.0.1:8080\"\n", "web.page"),
    ] {
        let err = load_text(text, &[], vec![]).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    for text in [
        "[budget]\nframe_timeout_ms = 60000\nsweep_interval_ms = 60000\n",
        "[transport]\ndatagram_send_buffer = 1232\n",
        "listen = \"[::]:4433\"\n[admin]\nlisten = \"127.0.0.1:9433\"\n",
        "[admin]\nlisten = \"0.0.0.0:8080\"\n[web]\npage = \"off\"\nwebsocket = \"[::1]:8080\"\n",
        "[web]\npage = \"127.0.0.1:8080\"\nwebsocket = \"0.0.0.0:8080\"\n",
        "[web]\npage = \"127.0.0.1:8080\"\nwebsocket = \"127.0.0.1:8080\"\n",
    ] {
        load_text(text, &[], vec![]).unwrap_or_else(|err| panic!("{text}: {err}"));
    }
}

/// A bad value set by a dotted key or in an inline table is named at its line, not as "default".
#[test]
fn a_bad_value_in_a_dotted_key_or_an_inline_table_is_named_at_its_line() {
    for text in ["\nlimits.max_frame = 100\n", "\nlimits = { max_rooms = 8, max_frame = 100 }\n"] {
        let err = load_text(text, &[], vec![]).unwrap_err().to_string();
        assert!(err.contains("line 2: limits.max_frame"), "{text}: {err}");
    }
}

#[test]
fn trusted_proxies_are_addresses_or_blocks_named_when_not() {
    let settings =
        load_text("[web]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n", &[], vec![]).unwrap();
    assert_eq!(settings.server_config().unwrap().web.trusted_proxies.len(), 3);
    let err = load_text("[web]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("line 2: web.trusted_proxies") && err.contains("prefix length"), "{err}");
}

/// `config check` checks the certificate and key as the server's TLS takes them: a key of another certificate (a
/// renewal half done) passed the check and failed the start.
#[test]
fn config_check_refuses_a_key_of_another_certificate() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&one, &two] {
        quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
    }
    let cert = one.path().join(quiver_certs::dev::CERT_FILE);
    let settings = |key: &std::path::Path| {
        let mut settings = Settings { data_dir: one.path().to_owned(), ..Settings::default() };
        (settings.tls.cert, settings.tls.key) = (cert.clone(), key.to_owned());
        settings
    };
    settings(&one.path().join(quiver_certs::dev::KEY_FILE)).check_files().expect("its own key");
    let err = settings(&two.path().join(quiver_certs::dev::KEY_FILE)).check_files().unwrap_err();
    assert_eq!(err.key, "tls.key", "{}", err.message);
}
