//! The `quiver-server` binary as an operator runs it: a configuration file with environment overrides, SIGTERM
//! whatever state stderr is in, SIGHUP reloading the certificate under live connections.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use quiver_client::{Client, ConnectOptions, TrustOptions};
use quiver_proto::ErrorCode;

/// A running server and the lines it prints on stdout (read on a thread, so its prints never block).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Running {
        let mut running = Running::spawn(args, env, stderr);
        running.wait_listening();
        running
    }

    /// Started, not yet waited for.
    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver-server"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        Running { child, lines, addr: String::new() }
    }

    fn wait_listening(&mut self) {
        let listening = self.line_starting("listening on ");
        self.addr = listening.trim_start_matches("listening on ").to_string();
    }

    /// The next printed line that starts with `prefix` (within 10 s).
    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line starting with {prefix:?}: {err}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let signal: nix::sys::signal::Signal = format!("SIG{name}").parse().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the exit (at most `within`); the exit status.
    fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > within {
                self.child.kill().unwrap();
                panic!("the server did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration file that is a FIFO: a SIGHUP while the server starts, or while a reload is stuck reading it.
#[path = "operations/fifo.rs"]
mod fifo;

fn options(trust: TrustOptions) -> ConnectOptions {
    ConnectOptions { trust, name: Some("ops".into()), reconnect: false, ..ConnectOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_a_limit_the_server_enforces_and_the_environment_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quiver.toml");
    let data = dir.path().join("data");
    let mut file = std::fs::File::create(&config).unwrap();
    write!(
        file,
        "listen = \"127.0.0.1:0\"\n[auth]\nanonymous = true\n[limits]\nmax_rooms = 1\n[web]\npage = \"off\"\n"
    )
    .unwrap();
    // Joins until refused: how many rooms the server let one connection join.
    async fn rooms_allowed(server: &Running, data: &Path) -> usize {
        let trust = TrustOptions::Auto { data_dir: data.into() };
        let client = Client::connect_with(&server.addr, options(trust)).await.unwrap();
        let mut joined = Vec::new();
        loop {
            match client.join(&format!("room{}", joined.len())).await {
                Ok(room) => joined.push(room),
                Err(err) => {
                    assert_eq!(err.code(), Some(ErrorCode::TooManyRooms), "{err}");
                    return joined.len();
                }
            }
        }
    }
    let args = ["--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    let server = Running::start(&args, &[], Stdio::null());
    assert_eq!(rooms_allowed(&server, &data).await, 1, "the file's max_rooms");
    drop(server);
    let server = Running::start(&args, &[("QUIVER_LIMITS_MAX_ROOMS", "3")], Stdio::null());
    assert_eq!(rooms_allowed(&server, &data).await, 3, "the environment's max_rooms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stderr_a_closed_pipe_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--listen", "127.0.0.1:0", "--no-web", "--drain-timeout-ms", "3000", "--data-dir"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(dir.path().to_str().unwrap());
    let mut server = Running::start(&args, &[("RUST_LOG", "debug")], Stdio::piped());
    // Nobody reads stderr any more: every log line the server writes from now on fails with EPIPE.
    drop(server.child.stderr.take());
    let client =
        Client::connect_with(&server.addr, options(TrustOptions::Auto { data_dir: dir.path().into() })).await.unwrap();
    let room = client.join("lobby").await.unwrap();
    room.post("before the signal").await.unwrap();
    server.signal("TERM");
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), client.closed()).await.unwrap();
    assert_eq!(code, ErrorCode::GoingAway, "the client was told to go away");
    let status = server.exit_within(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    let summary = server.line_starting("server stopped");
    assert_eq!(summary, "server stopped");
    assert!(server.line_starting("  posts").contains("1 ("));
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): `READY=1` once the server serves, `WATCHDOG=1` while it is alive,
/// `STOPPING=1` at SIGTERM (deploy/quiver.service; the watchdog is what restarts a server whose store failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_server_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = dir.path().join("data");
    let args = ["--listen", "127.0.0.1:0", "--no-web", "--data-dir", data.to_str().unwrap()];
    let env = [("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let mut server = Running::start(&args, &env, Stdio::null());
    let next = || {
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1", "every 100 ms (half of WATCHDOG_USEC)");
    server.signal("TERM");
    let stopping = (0..100).map(|_| next()).find(|state| state != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    assert!(server.exit_within(Duration::from_secs(15)).success());
}

/// A certificate and key (PEM) for localhost, written into `dir` as cert.pem and key.pem; its fingerprint.
fn write_cert(dir: &Path) -> quiver_certs::Fingerprint {
    let scratch = tempfile::tempdir().unwrap();
    let (cert, _) = quiver_certs::dev::load_or_generate(scratch.path(), std::time::SystemTime::now()).unwrap();
    for (from, to) in [(quiver_certs::dev::CERT_FILE, "cert.pem"), (quiver_certs::dev::KEY_FILE, "key.pem")] {
        // Written beside and renamed over: the server never reads half a file.
        std::fs::copy(scratch.path().join(from), dir.join(format!("{to}.new"))).unwrap();
        std::fs::rename(dir.join(format!("{to}.new")), dir.join(to)).unwrap();
    }
    cert.fingerprint()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_while_live_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let data = dir.path().join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--allow-anonymous",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut server = Running::start(&args, &[], Stdio::null());
    assert_eq!(server.line_starting("certificate sha256 "), format!("certificate sha256 {first}"));
    let old = Client::connect_with(&server.addr, options(TrustOptions::Pin(first))).await.unwrap();
    let old_room = old.join("lobby").await.unwrap();

    let second = write_cert(dir.path());
    assert_ne!(first, second);
    server.signal("HUP");
    assert_eq!(server.line_starting("reloaded: "), format!("reloaded: certificate sha256 {second}"));
    let new = Client::connect_with(&server.addr, options(TrustOptions::Pin(second))).await.unwrap();
    let new_room = new.join("lobby").await.unwrap();
    // The connection made before the reload is still served.
    let seq = old_room.post("from before the reload").await.unwrap();
    assert_eq!(new_room.post("from after").await.unwrap(), seq + 1);
    // New handshakes present the new certificate: a client pinning the old one is refused.
    // (Its session tickets, issued under the old certificate, resume no more: it runs the full handshake.)
    let stale = Client::connect_with(&server.addr, options(TrustOptions::Pin(first))).await.map(|_| ());
    let stale = stale.expect_err("a client pinning the replaced certificate connected");
    assert!(matches!(stale, quiver_client::ConnectError::PinMismatch { .. }), "{stale}");

    // A reload that fails (a missing key file) keeps the current certificate (checked once it has failed).
    std::fs::remove_file(&key).unwrap();
    server.signal("HUP");
    assert!(server.line_starting("reload failed: ").contains("(nothing changed)"));
    let again = Client::connect_with(&server.addr, options(TrustOptions::Pin(second))).await;
    assert!(again.is_ok(), "the failed reload took the certificate away");
}

/// SIGHUP reads the configuration file again: a key taken out of `auth.hs256_key_files` is no longer trusted (its
/// sessions are closed, its tokens refused), and what else changed is named as waiting for a restart. Before, the
/// settings read at start were used again: the key stayed trusted, and the reload said it had worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_configuration_again_and_a_key_taken_out_of_it_is_no_longer_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (leaked, kept) = ([0x11u8; 32], [0x22u8; 32]);
    let hex = |key: &[u8; 32]| key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (leaked_file, kept_file) = (dir.path().join("leaked.key"), dir.path().join("kept.key"));
    std::fs::write(&leaked_file, hex(&leaked)).unwrap();
    std::fs::write(&kept_file, hex(&kept)).unwrap();
    let config = dir.path().join("quiver.toml");
    let write_config = |files: &[&Path], max_rooms: u32| {
        let files: Vec<String> = files.iter().map(|f| format!("{:?}", f.display().to_string())).collect();
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[auth]\nhs256_key_files = [{}]\n[limits]\nmax_rooms = {max_rooms}\n[web]\npage = \"off\"\n",
            files.join(", ")
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config(&[&leaked_file, &kept_file], 4);
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    let mut server = Running::start(&args, &[], Stdio::null());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token =
        |key: &[u8; 32]| quiver_auth::mint_hs256(&quiver_auth::Claims::everything("ops", now, 600), key).unwrap();
    let (trust, addr) = (|| TrustOptions::Auto { data_dir: data.clone() }, server.addr.clone());
    let connect = |key: &[u8; 32]| {
        let options = ConnectOptions { token: Some(token(key)), ..options(trust()) };
        Client::connect_with(&addr, options)
    };
    let revoked = connect(&leaked).await.unwrap();
    let _room = revoked.join("lobby").await.unwrap();

    write_config(&[&kept_file], 8);
    server.signal("HUP");
    assert!(server.line_starting("reloaded: ").starts_with("reloaded: certificate sha256 "));
    assert_eq!(server.line_starting("changed, "), "changed, applied at the next restart: limits.max_rooms");
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), revoked.closed()).await.expect("closed");
    assert_eq!(code, ErrorCode::TokenInvalid, "{reason}");
    let refused = connect(&leaked).await.map(|_| ()).unwrap_err();
    // (By its code: any refusal that mentioned a token passed before.)
    assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    connect(&kept).await.unwrap().join("lobby").await.unwrap();

    // A configuration that no longer reads (a typo staged for the next restart) does not hold up the certificate:
    // it and the key files are read again with the settings the last reload read, and a line says so.
    std::fs::write(&config, "listen = 5\n").unwrap();
    server.signal("HUP");
    assert!(server.line_starting("reload: ").contains("the settings do not read"));
    assert!(server.line_starting("reloaded: ").starts_with("reloaded: certificate sha256 "));
    connect(&kept).await.unwrap();
    assert!(connect(&leaked).await.is_err(), "the key taken out stays out");
    // A list emptied would fall back to the dev key: refused, the keys kept.
    write_config(&[], 8);
    server.signal("HUP");
    assert!(server.line_starting("reload failed: ").starts_with("reload failed: auth: "));
    connect(&kept).await.unwrap();
}

/// Anonymous access turned off by a reload (`auth.anonymous` taken out, no key named: the dev key, as a start would
/// take) is applied: the anonymous sessions are closed `TokenRequired`. Before, the reload was refused as one that
/// named no token key any more, and the server stayed open to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_anonymous_access_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quiver.toml");
    let write_config = |anonymous: bool| {
        let auth = if anonymous { "[auth]\nanonymous = true\n" } else { "" };
        std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\n{auth}[web]\npage = \"off\"\n")).unwrap();
    };
    write_config(true);
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    let mut server = Running::start(&args, &[], Stdio::null());
    // Pinned, not `Auto`: no dev token either (the data directory's key, made with the certificate).
    let trust = TrustOptions::Pin(quiver_certs::sha256(&quiver_certs::dev::read(&data).unwrap()));
    let options = ConnectOptions { token: None, ..options(trust) };
    let anonymous = Client::connect_with(&server.addr, options.clone()).await.expect("anonymous access");
    write_config(false);
    server.signal("HUP");
    assert!(server.line_starting("reload").starts_with("reloaded: certificate sha256 "));
    let restart = server.line_starting("changed, ");
    assert!(restart.contains("the demo page's dev tokens"), "{restart}");
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), anonymous.closed()).await.expect("closed");
    assert_eq!(code, ErrorCode::TokenRequired, "{reason}");
    let refused = Client::connect_with(&server.addr, options).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenRequired), "{refused}");
    // Turned on again: said as loudly as at a start (it was applied with no more than "reloaded").
    write_config(true);
    server.signal("HUP");
    assert!(server.line_starting("reload").starts_with("reloaded: certificate sha256 "));
    assert!(server.line_starting("reload: ").contains("ANONYMOUS ACCESS from now on"));
}

#[test]
fn config_check_names_the_line_and_print_redacts_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\n[limits]\nposts_per_sec = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server")).args(["config", "check"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("unknown field `posts_per_sec`"), "{stderr}");

    let init = Command::new(env!("CARGO_BIN_EXE_quiver-server")).args(["config", "init"]).output().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &init.stdout).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server")).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The files the server reads at start are read here too: a key or certificate it would refuse is refused now,
    // named (before, `config check` said "ok" and the server then exited at start, an Ed25519 key unnamed).
    let garbage = dir.path().join("typo.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let keyed = dir.path().join("keyed.toml");
    std::fs::write(&keyed, format!("[auth]\ned25519_public_key_files = [{:?}]\n", garbage.display().to_string()))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server")).args(["config", "check"]).arg(&keyed).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("auth.ed25519_public_key_files") && stderr.contains("typo.pem"), "{stderr}");
    let missing = dir.path().join("missing.toml");
    let cert = dir.path().join("none.pem");
    std::fs::write(
        &missing,
        format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), cert.display().to_string()),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_quiver-server")).args(["config", "check"]).arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tls.cert") && stderr.contains("none.pem"), "{stderr}");
    // A relative path is read from the working directory, the server's too (not from the file's directory): said,
    // with the path it reads here (it passed here and the service, started elsewhere, refused to start).
    let relative = dir.path().join("relative.toml");
    std::fs::write(&relative, "data_dir = \"/tmp/q\"\n[tls]\ncert = \"chain.pem\"\nkey = \"key.pem\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server"))
        .args(["config", "check"])
        .arg(&relative)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let read_as = format!("read here as {}", dir.path().join("chain.pem").display());
    assert!(stderr.contains("note: tls.cert = chain.pem is relative") && stderr.contains(&read_as), "{stderr}");
    assert!(stderr.contains("note: tls.key = key.pem") && !stderr.contains("note: data_dir"), "{stderr}");
    // With the environment the server would start with: a bad variable (in a service's environment) is named now,
    // not at the next start.
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server"))
        .args(["config", "check"])
        .arg(&good)
        .env("QUIVER_AUTH_HS256_SECRET", "zz")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("QUIVER_AUTH_HS256_SECRET"), "{stderr}");

    let secret = "5e".repeat(32);
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-server"))
        .args(["--config", good.to_str().unwrap(), "--admin", "off", "config", "print"])
        .env("QUIVER_AUTH_HS256_SECRET", &secret)
        .env("QUIVER_LIMITS_POSTS_PER_S", "20")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains(&secret) && printed.contains("hs256_secret = \"<redacted>\""), "{printed}");
    assert!(printed.contains("posts_per_s = 20") && printed.contains("listen = \"off\""), "{printed}");
}

/// A second signal exits at once, without the drain and the store's clean close; under `os` the store is sealed first
/// (synced, its open mark removed: `Store::seal_for_exit`), so that a reboot of the machine afterwards is not taken for
/// its crash. The two signals go back to back (a SIGTERM and a SIGINT: two of one kind may be taken as one), so the
/// second comes while the first's drain still runs, most times: a run whose drain won is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_seals_an_os_store_before_exiting() {
    let mut exits = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let args = ["--listen", "127.0.0.1:0", "--no-web", "--durability", "os", "--data-dir"];
        let mut args: Vec<&str> = args.to_vec();
        args.push(dir.path().to_str().unwrap());
        let mut server = Running::start(&args, &[("RUST_LOG", "info")], Stdio::piped());
        let trust = TrustOptions::Auto { data_dir: dir.path().into() };
        let client = Client::connect_with(&server.addr, options(trust)).await.unwrap();
        let room = client.join("lobby").await.unwrap();
        room.post("before the signals").await.unwrap();
        let pid = server.child.id();
        let status = Command::new("sh").arg("-c").arg(format!("kill -TERM {pid}; kill -INT {pid}")).status();
        assert!(status.unwrap().success());
        let status = server.exit_within(Duration::from_secs(10));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut server.child.stderr.take().unwrap(), &mut stderr).unwrap();
        if status.success() {
            exits.push("drained before the second signal");
            continue;
        }
        assert!(stderr.contains("second signal"), "{status}: {stderr}");
        assert!(stderr.contains("room store synced before exiting"), "the store was not sealed: {stderr}");
        return;
    }
    panic!("the second signal never came during the drain: {exits:?}");
}
