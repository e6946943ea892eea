//! What a server is started with. Transport tuning lives in [`crate::net::transport`]; protocol limits in
//! [`quiver_proto::Limits`].

use std::{net::SocketAddr, path::PathBuf};

use quiver_proto::Limits;

use crate::net::transport::TransportTuning;

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// The dev certificate in the data directory (generated or renewed as needed).
    Dev,
    /// A PEM chain (leaf first) and its key.
    Pem {
        /// Certificate chain file.
        cert: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
}

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address to bind; port 0 picks a free port. `[::]` is bound dual-stack (IPv4 and IPv6).
    pub listen: SocketAddr,
    /// Where the dev certificate (and later, durable state) is kept.
    pub data_dir: PathBuf,
    /// Certificate source.
    pub tls: TlsSource,
    /// Per-connection bounds, reported to clients in Welcome.
    pub limits: Limits,
    /// Latency-relevant transport settings (docs/transport.md).
    pub tuning: TransportTuning,
}

impl ServerConfig {
    /// The default address: all interfaces, IPv4 and IPv6, UDP port 4433.
    pub const DEFAULT_LISTEN: &'static str = "[::]:4433";
    /// The default data directory, relative to the working directory.
    pub const DEFAULT_DATA_DIR: &'static str = ".quiver";

    /// A server with the dev certificate and default limits.
    pub fn dev(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ServerConfig {
            listen,
            data_dir,
            tls: TlsSource::Dev,
            limits: Limits::default(),
            tuning: TransportTuning::quiver(),
        }
    }
}
