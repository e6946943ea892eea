//! What the server says about its configuration's sources: paths and variables it cannot use, the file's source, the
//! UDP address it cannot bind.

use super::{output_within, server};

/// A path or a `QUIVER_…` variable that is not UTF-8 is refused, naming it; an empty data directory too. Before,
/// `--data-dir` was turned into another path (U+FFFD in place of the byte), where the server made a fresh data
/// directory, and such a variable was left out in silence (the server started on `.quiver`).
/// And a configuration file that cannot be read is named with where it came from, an empty `QUIVER_CONFIG` is none,
/// and a UDP address in use is named with the setting.
#[test]
fn paths_and_variables_that_are_not_utf8_or_empty_are_refused_naming_them() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    let run = |flags: &[&std::ffi::OsStr], env: Option<&std::ffi::OsStr>| {
        let mut command = server();
        command.current_dir(dir.path()).args(["--listen", "127.0.0.1:0"]).args(flags);
        if let Some(value) = env {
            command.env("QUIVER_DATA_DIR", value);
        }
        let output = output_within(&mut command);
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (started, stderr) = run(&["--data-dir".as_ref(), bad.as_os_str()], None);
    assert!(!started && stderr.contains("--data-dir") && stderr.contains("UTF-8"), "{stderr}");
    let (started, stderr) = run(&[], Some(bad.as_os_str()));
    assert!(!started && stderr.contains("QUIVER_DATA_DIR") && stderr.contains("UTF-8"), "{stderr}");
    let (started, stderr) = run(&[], Some("".as_ref()));
    assert!(!started && stderr.contains("data_dir") && stderr.contains("empty"), "{stderr}");
    // A QUIVER_ variable that is no setting is its own reader's: QUIVER_CONFIG is a path, read as one.
    let output = output_within(server().current_dir(dir.path()).env("QUIVER_CONFIG", &bad));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !stderr.contains("UTF-8") && stderr.contains("caf"), "{stderr}");
    assert!(stderr.contains("configuration file") && stderr.contains("(named by QUIVER_CONFIG)"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no data directory was made: {stderr}");
    // An empty one (a compose file's way to unset it) names no file: it was read as the path "".
    let output = output_within(server().current_dir(dir.path()).args(["config", "print"]).env("QUIVER_CONFIG", ""));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // A UDP address in use: the error names it and the setting.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    // (`--admin off`: the admin listener's default port is taken wherever a dev server runs beside the tests.)
    let listen = ["--listen", &taken, "--data-dir", "d", "--admin", "off"];
    let output = output_within(server().current_dir(dir.path()).args(listen));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(&format!("{taken}: "))
            && stderr.contains("--listen")
            && !stderr.contains("IPv6"),
        "{stderr}"
    );
}
