//! Bare quinn fan-out with quinn's default transport settings: what a straightforward application on the same
//! QUIC stack does. The server sends every datagram a connection sends it to every other connection (one shared
//! `Bytes`, no copy); a connection is added once accepted and told so with a [`READY`] datagram.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use quiver_certs::CertKey;
use quiver_client::TrustOptions;
use tokio_util::sync::CancellationToken;

use super::{
    cpu::CpuMeter,
    report::FanoutSide,
    workload::{drive, Kind, Recorder, SharedRecorder},
    FanoutConfig,
};
use crate::{
    bench::{
        echo::{bare_quinn_server_config, ECHO_ALPN},
        namespaces::Progress,
        series::until_stopped,
        BenchError,
    },
    sync::lock,
};

/// What a connection sends (every 250 ms, datagrams may be lost) until the server answers [`READY`].
const HELLO: &[u8] = b"quiver-bench-fanout-hello";
/// The server's answer to [`HELLO`]: the connection now receives the fan-out.
const READY: &[u8] = b"quiver-bench-fanout-ready";

/// The fan-out server on `ip` with `cert` (its tasks on the current runtime), until `stop`.
pub(super) fn server(ip: IpAddr, cert: CertKey, stop: CancellationToken) -> Result<SocketAddr, BenchError> {
    let config = bare_quinn_server_config(cert)?;
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::new(ip, 0)).map_err(BenchError::io("quinn fan-out server"))?;
    let addr = endpoint.local_addr().map_err(BenchError::io("quinn fan-out server"))?;
    let connections: Arc<Mutex<Vec<quinn::Connection>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
                () = stop.cancelled() => { endpoint.close(0u32.into(), b"done"); return; }
            };
            let connections = connections.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                lock(&connections).push(conn.clone());
                while let Ok(datagram) = conn.read_datagram().await {
                    if datagram == HELLO {
                        let _ = conn.send_datagram(bytes::Bytes::from_static(READY));
                        continue;
                    }
                    for other in lock(&connections).iter() {
                        if other.stable_id() != conn.stable_id() {
                            let _ = other.send_datagram(datagram.clone());
                        }
                    }
                }
                lock(&connections).retain(|c| c.stable_id() != conn.stable_id());
            });
        }
    });
    Ok(addr)
}

/// A connection the server has added (it answered [`HELLO`] with [`READY`]), on an endpoint (socket) of its own.
async fn connect(server: SocketAddr, pin: &TrustOptions) -> Result<quinn::Connection, BenchError> {
    let mut client_config = quiver_client::quinn_client_config(pin, server, ECHO_ALPN)?;
    // Bare quinn: its default transport settings, not Quiver's; plus a keep-alive, so that connections made first
    // outlive quinn's 30 s idle timeout while a thousand more connect over a slow emulated link.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    client_config.transport_config(Arc::new(transport));
    let unspecified: IpAddr =
        if server.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let endpoint =
        quinn::Endpoint::client(SocketAddr::new(unspecified, 0)).map_err(BenchError::io("quinn client endpoint"))?;
    let conn = endpoint.connect_with(client_config, server, "localhost")?.await?;
    for _ in 0..40 {
        conn.send_datagram(bytes::Bytes::from_static(HELLO))
            .map_err(|err| BenchError::io("quinn fan-out hello")(std::io::Error::other(err)))?;
        let answer = tokio::time::timeout(std::time::Duration::from_millis(250), conn.read_datagram()).await;
        match answer {
            Ok(Ok(datagram)) if datagram == READY => return Ok(conn),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(err)) => return Err(err.into()),
        }
    }
    Err(BenchError::io("quinn fan-out hello")(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the bare quinn fan-out server at {server} did not answer"),
    )))
}

/// The bare quinn series: `config.subscribers` connections, then ticks as datagrams from one more (no chat: the
/// series measures the datagram fan-out alone).
pub(super) async fn measure(
    name: &str,
    config: &FanoutConfig,
    server: SocketAddr,
    pin: &TrustOptions,
    progress: &Progress,
) -> Result<FanoutSide, BenchError> {
    let recorder = SharedRecorder::default();
    let stop = CancellationToken::new();
    let mut connections = Vec::new();
    for who in 0..config.subscribers {
        super::connecting(progress, name, who, config.subscribers);
        let conn = connect(server, pin).await?;
        let (reader, recorder) = (conn.clone(), recorder.clone());
        until_stopped(&stop, async move {
            while let Ok(datagram) = reader.read_datagram().await {
                Recorder::received(&recorder, who, Kind::Tick, &datagram);
            }
        });
        connections.push(conn);
    }
    let publisher = connect(server, pin).await?;
    progress(&format!("{name}: measuring"));
    let ticks_only = FanoutConfig { chat_rate: 0.0, ..config.clone() };
    let cpu = CpuMeter::start(true);
    drive(&ticks_only, &recorder, false, |tick| drop(publisher.send_datagram(tick.into())), |_, _| {}).await;
    let cpu = cpu.stop();
    stop.cancel();
    for conn in connections.iter().chain([&publisher]) {
        conn.close(0u32.into(), b"done");
    }
    Ok(Recorder::side(&recorder, name, config.subscribers, cpu))
}
