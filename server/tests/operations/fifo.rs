//! The configuration file as a FIFO, which the test writes when it chooses: a SIGHUP while the server starts is
//! held for it; a reload stuck reading the file does not keep SIGTERM from draining and ending the server.

use std::{
    io::Write,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use super::Running;

/// A SIGHUP while the server is still starting (here: reading its configuration file, a FIFO the test writes only
/// after the signal) is held and acted on once the server is up. It ended the process before (the default action
/// of a signal whose handler was not registered yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_server_starts_is_held_for_it_not_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("quiver.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    let data = dir.path().join("data");
    let args = [
        "--config",
        fifo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-web",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut server = Running::spawn(&args, &[], Stdio::null());
    // Opening the FIFO to write returns once the server has opened it to read: it is in `main`, reading its
    // settings, before any handler is registered.
    const CONFIG: &[u8] = b"[limits]\nmax_rooms = 7\n";
    let mut opened = open_to_write(&fifo);
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(100)); // (the signal's default action, if any, had ended it by now)
    opened.write_all(CONFIG).expect("the server is gone: ended by the SIGHUP");
    drop(opened);
    server.wait_listening();
    // The held reload reads the settings again: from the FIFO, once more.
    open_to_write(&fifo).write_all(CONFIG).unwrap();
    let reloaded = server.line_starting("reloaded: ");
    assert!(reloaded.starts_with("reloaded: certificate sha256 "), "{reloaded}");
    assert!(server.child.try_wait().unwrap().is_none(), "the server exited");
    // A reload stuck opening the FIFO (nobody writes it: a hung mount) keeps neither SIGTERM's drain nor the exit
    // from running. Before, the reload ran in the signals' own task, which then heard no other signal: only SIGKILL
    // ended the server.
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    let status = server.exit_within(Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

/// `fifo` opened to write once the server has opened it to read, within 10 s. A plain open would wait for good on a
/// server that never reads its configuration (again): the regression the test guards would hold the run.
fn open_to_write(fifo: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let started = Instant::now();
    loop {
        // Without a reader, a non-blocking open to write fails with ENXIO instead of waiting.
        match std::fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(fifo) {
            Ok(file) => return file,
            Err(err) if err.raw_os_error() == Some(nix::libc::ENXIO) => {
                assert!(started.elapsed() < Duration::from_secs(10), "the server did not read its configuration");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("cannot open {}: {err}", fifo.display()),
        }
    }
}
