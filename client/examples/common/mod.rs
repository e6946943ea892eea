//! What the examples share: `--flag value` arguments and the connection to the server.

#![allow(dead_code)]

use std::time::Duration;

use quiver_client::{Client, ConnectOptions, TrustOptions};

/// `--name value` pairs (flags given more than once keep every value).
pub(crate) struct Args(Vec<(String, String)>);

impl Args {
    pub(crate) fn parse() -> Args {
        let mut args = std::env::args().skip(1);
        let mut pairs = Vec::new();
        while let Some(flag) = args.next() {
            let Some(name) = flag.strip_prefix("--") else { usage(&format!("unexpected argument {flag:?}")) };
            let Some(value) = args.next() else { usage(&format!("--{name} needs a value")) };
            pairs.push((name.to_string(), value));
        }
        Args(pairs)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub(crate) fn or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// `--seconds`: how long to run (default 10).
    pub(crate) fn seconds(&self) -> Duration {
        Duration::from_secs_f64(self.or("seconds", "10").parse().unwrap_or_else(|_| usage("--seconds: a number")))
    }

    /// Connects to `--server` (default 127.0.0.1:4433), trusting the dev certificate in `--data-dir` (default
    /// .quiver) unless `--cert-hash` pins one, as `--name`.
    pub(crate) async fn connect(&self) -> Client {
        let trust = match self.get("cert-hash") {
            Some(hash) => TrustOptions::Pin(hash.parse().unwrap_or_else(|_| usage("--cert-hash: 64 hex digits"))),
            None => TrustOptions::Auto { data_dir: self.or("data-dir", ".quiver").into() },
        };
        let options = ConnectOptions {
            trust,
            name: self.get("name").map(str::to_string),
            token: self.get("token").map(str::to_string),
            // The server may still be starting.
            first_connect_retry: Some(Duration::from_secs(10)),
            ..ConnectOptions::default()
        };
        let server = self.or("server", "127.0.0.1:4433");
        match Client::connect_with(server, options).await {
            Ok(client) => client,
            Err(err) => {
                eprintln!("cannot connect to {server}: {err}");
                std::process::exit(1);
            }
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nflags: --server HOST:PORT --data-dir DIR --name NAME --seconds N (and the example's own)");
    std::process::exit(2);
}
