//! How the CLI takes its token from the command line and the environment.
#![allow(clippy::unwrap_used)]

/// An empty token (`QUIVER_TOKEN=` from a compose file's unset variable, `--token ''`) is refused naming the
/// variable: it was sent as a token, and refused `TokenMalformed` by the server, with no word of where it came from.
#[tokio::test]
async fn an_empty_token_is_refused_naming_the_variable() {
    for (token, flag) in [(Some(""), None), (Some(" \n"), None), (None, Some(""))] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        command.args(["ping", "--server", "127.0.0.1:9", "--data-dir", "/nonexistent"]).env_remove("QUIVER_TOKEN");
        token.map(|token| command.env("QUIVER_TOKEN", token));
        flag.map(|flag| command.args(["--token", flag]));
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{token:?} {flag:?}: {stderr}");
        assert!(stderr.contains("the token is empty") && stderr.contains("QUIVER_TOKEN"), "{stderr}");
    }
}
