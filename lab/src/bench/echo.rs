//! The baselines' servers, in-process: a raw UDP echo, a bare quinn echo (default transport settings) that
//! returns datagrams as datagrams and bidirectional-stream bytes on the same stream, and a WebSocket-over-TCP echo
//! (tokio-tungstenite, TCP_NODELAY) that returns each binary message.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use quiver_certs::CertKey;
use tokio_util::sync::CancellationToken;

use super::BenchError;

/// ALPN of the bare quinn echo.
pub(crate) const ECHO_ALPN: &[u8] = b"quiver-bench-echo";

/// A UDP echo on `ip`, until `stop`.
pub(crate) async fn udp_echo(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let socket = tokio::net::UdpSocket::bind((ip, 0)).await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received {
                        let _ = socket.send_to(&buf[..len], from).await;
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    });
    Ok(addr)
}

/// A WebSocket echo on `ip` (plain `ws://`, TCP_NODELAY as WebSocket servers set it), until `stop`.
pub(crate) async fn websocket_echo(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of descriptors and the like (a head-to-head with many clients): do not spin on the
                        // cores being measured.
                        tracing::warn!(%err, "WebSocket echo: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                loop {
                    let message = tokio::select! {
                        message = ws.next() => message,
                        () = stop.cancelled() => return,
                    };
                    match message {
                        Some(Ok(message)) if message.is_binary() => {
                            if ws.send(message).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A bare quinn server's configuration: `cert`, TLS 1.3, ALPN [`ECHO_ALPN`], quinn's default transport settings.
pub(crate) fn bare_quinn_server_config(cert: CertKey) -> Result<quinn::ServerConfig, BenchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)?;
    tls.alpn_protocols = vec![ECHO_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A bare quinn echo on `ip` with quinn's default transport settings, until `stop`.
pub(crate) fn quinn_echo(ip: IpAddr, cert: CertKey, stop: CancellationToken) -> Result<SocketAddr, BenchError> {
    let config = bare_quinn_server_config(cert)?;
    let addr = SocketAddr::new(ip, 0);
    let endpoint = quinn::Endpoint::server(config, addr).map_err(BenchError::io("quinn echo"))?;
    let addr = endpoint.local_addr().map_err(BenchError::io("quinn echo"))?;
    tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
                () = stop.cancelled() => { endpoint.close(0u32.into(), b"done"); return; }
            };
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let datagrams = conn.clone();
                tokio::spawn(async move {
                    while let Ok(datagram) = datagrams.read_datagram().await {
                        let _ = datagrams.send_datagram(datagram);
                    }
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            if send.write_chunk(chunk.bytes).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
    });
    Ok(addr)
}
