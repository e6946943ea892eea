//! The `quiver-server` binary: what it prints, how it stops, how it reports bad certificate files.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

#[path = "binary/config.rs"]
mod config;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quiver-server"))
}

/// A server process killed (and reaped) when dropped: a failing assertion must not leave it running.
struct Guarded(std::process::Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guarded {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// How long a test waits for the server's next line, or for a command that should end at once: bounded, so that a
/// server that neither prints nor exits (the regression a test guards) fails the test instead of holding the run.
const WAIT: Duration = Duration::from_secs(20);

/// The lines `child` prints on stdout, read by a thread of their own until the pipe closes (reading on keeps a
/// server's later prints from failing on a closed pipe).
fn stdout_lines(child: &mut Guarded) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    lines
}

/// The next line of `lines` ([`stdout_lines`]), within [`WAIT`].
fn next_line(lines: &mpsc::Receiver<String>) -> String {
    lines.recv_timeout(WAIT).unwrap_or_else(|err| panic!("no line from the server within {WAIT:?}: {err}"))
}

/// Runs `command` to its end as `Command::output` does, but kills it and fails the test if it has not ended within
/// [`WAIT`] (a refusal that became a start, a command that waits for input).
fn output_within(command: &mut Command) -> Output {
    let mut child =
        Guarded(command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let (stdout, stderr) = (read(Box::new(child.stdout.take().unwrap())), read(Box::new(child.stderr.take().unwrap())));
    let status = exit_within(&mut child, WAIT);
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// `child`'s exit status, once it has exited; fails the test (the guard kills it) if it has not within `wait`.
fn exit_within(child: &mut Guarded, wait: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < wait, "still running after {wait:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn prints_address_and_hash_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Guarded(
        server()
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = stdout_lines(&mut child);
    let listening = next_line(&lines);
    let addr: std::net::SocketAddr = listening.strip_prefix("listening on ").unwrap().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the bound port is printed, not 0");
    let hash_line = next_line(&lines);
    let hash = hash_line.strip_prefix("certificate sha256 ").unwrap();
    let stored = quiver_certs::dev::read(dir.path()).unwrap();
    assert_eq!(hash, quiver_certs::sha256(&stored).to_string());

    terminate(&child);
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
}

/// A server on `dir` that has printed its address (so it holds the directory).
fn listening(dir: &std::path::Path) -> Guarded {
    let mut child = Guarded(
        server()
            .args(["--listen", "127.0.0.1:0", "--no-web", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = stdout_lines(&mut child);
    assert!(next_line(&lines).starts_with("listening on "), "the server did not start");
    child
}

/// A server started with a low soft limit of open files (a shell's or a container's 1,024; 256 here) raises it to
/// its hard limit: Rust keeps the limit it inherits, and each WebSocket and HTTP connection and much of the store
/// take a descriptor. With the hard limit low too, it warns, naming the settings.
#[cfg(target_os = "linux")]
#[test]
fn the_server_raises_its_soft_limit_of_open_files_to_the_hard_one() {
    let limits = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text.lines().find(|line| line.starts_with("Max open files")).unwrap().to_string();
        let numbers: Vec<String> = line.split_whitespace().skip(3).take(2).map(str::to_string).collect();
        (numbers[0].clone(), numbers[1].clone())
    };
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -Sn 256 && exec {} --listen 127.0.0.1:0 --no-web --data-dir {}",
        env!("CARGO_BIN_EXE_quiver-server"),
        dir.path().display()
    );
    let mut child =
        Guarded(Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let lines = stdout_lines(&mut child);
    assert!(next_line(&lines).starts_with("listening on "), "the server did not start");
    let (soft, hard) = limits(child.id());
    assert_eq!(soft, hard, "the soft limit was left where the shell put it");
    terminate(&child);
    exit_within(&mut child, WAIT);
    // Both limits low: it starts, and says why it may fail.
    let script = format!(
        "ulimit -n 300 && exec {} --listen 127.0.0.1:0 --no-web --data-dir {}",
        env!("CARGO_BIN_EXE_quiver-server"),
        dir.path().display()
    );
    let out = Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut child = Guarded(out);
    let lines = stdout_lines(&mut child);
    let mut stderr = child.stderr.take().unwrap();
    // (Read as it comes: a server that wrote more than a pipe holds would otherwise never exit.)
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    assert!(next_line(&lines).starts_with("listening on "), "the server did not start");
    terminate(&child);
    exit_within(&mut child, WAIT);
    let stderr = stderr.join().unwrap();
    assert!(stderr.contains("limits.max_connections") && stderr.contains("LimitNOFILE"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn a_second_server_on_the_same_data_directory_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = listening(dir.path());
    let second = output_within(server().args(["--listen", "127.0.0.1:0", "--no-web", "--data-dir"]).arg(dir.path()));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second server ran: {stderr}");
    assert!(stderr.contains(&format!("in use by another quiver-server (pid {})", first.id())), "{stderr}");
    first.kill().unwrap();
    first.wait().unwrap();
    // SIGKILLed: the lock went with the process, so a new server starts.
    let mut third = listening(dir.path());
    third.kill().unwrap();
    third.wait().unwrap();
}

#[test]
fn missing_certificate_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = &mut server();
    output
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--cert")
        .arg(dir.path().join("cert.pem"))
        .arg("--key")
        .arg(dir.path().join("key.pem"));
    let output = output_within(output);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cert.pem: no such file"), "{stderr}");
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    quiver_certs::dev::load_or_generate(a.path(), std::time::SystemTime::now()).unwrap();
    quiver_certs::dev::load_or_generate(b.path(), std::time::SystemTime::now()).unwrap();
    let output = &mut server();
    output
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(b.path())
        .arg("--cert")
        .arg(a.path().join(quiver_certs::dev::CERT_FILE))
        .arg("--key")
        .arg(b.path().join(quiver_certs::dev::KEY_FILE));
    let output = output_within(output);
    assert!(!output.status.success(), "a mismatched key must not start a server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TLS configuration"), "{stderr}");
}

/// A relative `--data-dir` to be made inside another data directory (the working directory, here) is refused naming
/// both whole: the working directory was named as nothing, twice ("and  holds a quiver-server's data").
#[test]
fn a_relative_data_directory_inside_another_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lock"), b"1\n").unwrap(); // a server ran here
    let output =
        output_within(server().current_dir(dir.path()).args(["--listen", "127.0.0.1:0", "--data-dir", "node-b"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let whole = dir.path().canonicalize().unwrap();
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("and {} holds", whole.display())), "{stderr}");
    assert!(stderr.contains(&format!("{}/node-b does not exist", whole.display())), "{stderr}");
}

#[test]
fn cert_without_key_is_a_usage_error() {
    let output = output_within(server().args(["--cert", "x.pem"]));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--key"));
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn token_subcommand_mints_tokens_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        server()
            .args(["token", "--sub", "alice", "--room", "lobby", "--post", "--ttl", "2h", "--init-key", "--data-dir"])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let key = dir.path().join(quiver_server::auth::DEV_KEY_FILE);
    assert!(stderr.contains(&format!("created the dev key {}", key.display())), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = quiver_server::auth::Auth::from_config(&quiver_server::auth::AuthConfig::DevKey, dir.path()).unwrap();
    let now = now_s();
    let claims = auth.verify(Some(token.trim()), now).unwrap().unwrap();
    assert_eq!(claims.sub, "alice");
    assert!((7100..=7200).contains(&(claims.exp - now)), "2 h");
    assert!(claims.may_room("lobby", quiver_server::auth::RoomRight::Post));
    assert!(!claims.may_room("other", quiver_server::auth::RoomRight::Join));
    assert!(!claims.may_channel("prices", quiver_server::auth::ChannelRight::Subscribe));
    let bad = output_within(server().args(["token", "--sub", "x", "--ttl", "5y", "--data-dir"]).arg(dir.path()));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit"), "a clear error");
    // The key exists now: no --init-key needed, and nothing said about creating it.
    let again = output_within(server().args(["token", "--sub", "bob", "--data-dir"]).arg(dir.path()));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(again.stderr.is_empty(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn token_subcommand_without_a_dev_key_refuses_naming_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(server().args(["token", "--sub", "alice", "--data-dir"]).arg(dir.path()));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no token printed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let key = dir.path().join(quiver_server::auth::DEV_KEY_FILE);
    assert!(stderr.contains(&format!("no dev key at {}", key.display())), "{stderr}");
    assert!(stderr.contains(&format!("data directory {}", dir.path().display())), "{stderr}");
    assert!(stderr.contains("--init-key"), "{stderr}");
    assert!(!key.exists(), "no key created");
}

#[test]
fn token_subcommand_signs_with_an_hs256_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.hex");
    std::fs::write(&file, "c3".repeat(32)).unwrap();
    let out = output_within(server().args(["token", "--sub", "svc", "--hs256-key"]).arg(&file));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    // What the server does with `--hs256-key FILE`.
    let key = quiver_server::auth::TokenKey::Hs256(quiver_server::auth::read_hs256_key(&file).unwrap());
    let config = quiver_server::auth::AuthConfig::Keys(vec![key]);
    let auth = quiver_server::auth::Auth::from_config(&config, dir.path()).unwrap();
    assert_eq!(auth.verify(Some(token.trim()), now_s()).unwrap().unwrap().sub, "svc");
    let both = output_within(server().args(["token", "--sub", "svc", "--init-key", "--hs256-key"]).arg(&file));
    assert!(!both.status.success(), "--init-key is for the dev key only");
}

/// `token` signs with what the server's own configuration verifies tokens with: the dev key of the data directory
/// `QUIVER_DATA_DIR` names (as the shipped Docker image and systemd unit set it), the HS256 key file a
/// configuration file's `[auth]` names. A server that verifies EdDSA public keys, or admits anyone, gets no token
/// but the reason. Before, `token` read no configuration: it looked for `.quiver` under the working directory.
#[test]
fn token_subcommand_follows_the_servers_configuration() {
    let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let init = output_within(server().args(["token", "--sub", "x", "--init-key", "--data-dir"]).arg(dir.path()));
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let token = |cmd: &mut Command| {
        let out = output_within(cmd.current_dir(elsewhere.path()).env_remove("QUIVER_CONFIG"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, minted, stderr) = token(server().env("QUIVER_DATA_DIR", dir.path()).args(["token", "--sub", "alice"]));
    assert!(ok, "{stderr}");
    let auth = quiver_server::auth::Auth::from_config(&quiver_server::auth::AuthConfig::DevKey, dir.path()).unwrap();
    assert_eq!(auth.verify(Some(&minted), now_s()).unwrap().unwrap().sub, "alice");

    let file = dir.path().join("secret.hex");
    std::fs::write(&file, "c3".repeat(32)).unwrap();
    let config = dir.path().join("quiver.toml");
    std::fs::write(&config, format!("[auth]\nhs256_key_files = [{:?}]\n", file.display().to_string())).unwrap();
    let (ok, minted, stderr) = token(server().arg("--config").arg(&config).args(["token", "--sub", "svc"]));
    assert!(ok, "{stderr}");
    let key = quiver_server::auth::TokenKey::Hs256(quiver_server::auth::read_hs256_key(&file).unwrap());
    let config_keys = quiver_server::auth::AuthConfig::Keys(vec![key]);
    let auth = quiver_server::auth::Auth::from_config(&config_keys, dir.path()).unwrap();
    assert_eq!(auth.verify(Some(&minted), now_s()).unwrap().unwrap().sub, "svc");
    let (ok, _, stderr) = token(server().arg("--config").arg(&config).args(["token", "--sub", "svc", "--init-key"]));
    assert!(!ok && stderr.contains("would not accept the dev key"), "{stderr}");
    // A key given on the command line needs no configuration (which may be unreadable to whoever mints).
    let mut minting = server();
    minting.env("QUIVER_CONFIG", "/nonexistent/quiver.toml").args(["token", "--sub", "svc", "--hs256-key"]);
    let out = output_within(minting.arg(&file));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(&config, "[auth]\ned25519_public_key_files = [\"public.pem\"]\n").unwrap();
    let (ok, minted, stderr) = token(server().arg("--config").arg(&config).args(["token", "--sub", "svc"]));
    assert!(!ok && minted.is_empty() && stderr.contains("--ed25519-private-key"), "{stderr}");
    let (ok, _, stderr) = token(server().args(["--allow-anonymous", "token", "--sub", "svc"]));
    assert!(!ok && stderr.contains("auth.anonymous"), "{stderr}");
}

#[test]
fn token_subcommand_refuses_subjects_servers_refuse_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(quiver_proto::Limits::MAX_IDENTITY as usize + 1);
    let out = output_within(server().args(["token", "--init-key", "--sub", &long, "--data-dir"]).arg(dir.path()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sub: the subject is 129 bytes; identities are at most 128 bytes"), "{stderr}");
}

/// Runs the server on `dir` and returns its exit status and stderr, failing the test if it is still running after
/// 20 s (it started instead of refusing).
fn refused_start(dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    let mut child = Guarded(
        server()
            .args(["--listen", "127.0.0.1:0", "--no-web", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status, stderr);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("the server started on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The table files of the store in `dir`, largest first.
fn tables(store: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for keyspace in std::fs::read_dir(store.join("keyspaces")).unwrap() {
        let tables = keyspace.unwrap().path().join("tables");
        for table in std::fs::read_dir(tables).into_iter().flatten() {
            found.push(table.unwrap().path());
        }
    }
    found.sort_by_key(|t| std::cmp::Reverse(t.metadata().unwrap().len()));
    found
}

#[cfg(unix)]
#[test]
fn a_damaged_store_stops_the_server_with_a_clear_error_and_is_left_alone() {
    for damage in ["truncated", "corrupted"] {
        let dir = tempfile::tempdir().unwrap();
        let first = listening(dir.path());
        // SIGTERM: a graceful stop flushes the store's tables.
        terminate(&first);
        let mut first = first;
        assert!(first.wait().unwrap().success());
        let store = dir.path().join("store");
        let table = tables(&store).into_iter().next().expect("a table file after a graceful stop");
        let len = table.metadata().unwrap().len();
        match damage {
            // A table file cut short (a copy or a disk that lost its end).
            "truncated" => std::fs::OpenOptions::new().write(true).open(&table).unwrap().set_len(len / 2).unwrap(),
            // Bytes in the middle of a table overwritten (a bad sector): its checksum no longer matches.
            _ => {
                use std::io::{Seek, Write};
                let mut file = std::fs::OpenOptions::new().write(true).open(&table).unwrap();
                file.seek(std::io::SeekFrom::Start(len / 2)).unwrap();
                file.write_all(&[0xa5; 16]).unwrap();
            }
        }
        let listing = |dir: &std::path::Path| {
            let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            files.sort();
            files
        };
        let before = (listing(&store), std::fs::read(&table).unwrap());
        let (status, stderr) = refused_start(dir.path());
        assert!(!status.success(), "{damage}: {stderr}");
        assert!(stderr.contains("damaged") && stderr.contains(".damaged"), "{damage}: {stderr}");
        assert_eq!((listing(&store), std::fs::read(&table).unwrap()), before, "{damage}: the store was left alone");
        // The documented recovery: move it aside, and the server starts with an empty store.
        std::fs::rename(&store, dir.path().join("store.damaged")).unwrap();
        let mut third = listening(dir.path());
        third.kill().unwrap();
        third.wait().unwrap();
    }
}

/// SIGTERM to `child` (a graceful stop).
fn terminate(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}
