//! Tests: a QUIC connection on loopback, the server's end wrapped as the server wraps a native one.

/// A server endpoint with a dev certificate and a client connected to it: the server's connection, the client's,
/// the client's endpoint (kept to keep it open) and the data directory (the certificate's).
pub(crate) async fn loopback_pair() -> (quinn::Connection, quinn::Connection, quinn::Endpoint, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = quiver_certs::dev::load_or_generate(dir.path(), std::time::SystemTime::now()).unwrap();
    let tickets = quiver_transport::tls::session_tickets(|| {}).unwrap();
    let tuning = quiver_transport::TransportTuning::default();
    let limits = quiver_proto::Limits::default();
    let config = quiver_transport::tls::server_config(cert.chain, cert.key, &limits, &tuning, &tickets).unwrap();
    let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let trust = quiver_client::TrustOptions::Auto { data_dir: dir.path().to_owned() };
    let alpn = quiver_proto::ALPN_QUIVER;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quiver_client::trust::quinn_client_config(&trust, addr, alpn).unwrap());
    let connecting = client.connect(addr, "localhost").unwrap();
    let (accepted, connected) = tokio::join!(async { server.accept().await.unwrap().await.unwrap() }, connecting);
    (accepted, connected.unwrap(), client, dir)
}
