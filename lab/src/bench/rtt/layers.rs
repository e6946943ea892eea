//! The six series that take Quiver's round trip apart layer by layer: a raw UDP echo, bare quinn's datagram and
//! stream echoes (its default transport settings), and Quiver's datagram and stream paths, each compared with the
//! quinn echo it is built on; and the room path with redundant delivery, compared with the path's own datagram echo.

use std::{net::SocketAddr, sync::Arc};

use quiver_client::TrustOptions;

use super::{
    lanes::measure,
    quiver::{self, close_after, quinn_bytes, wire_bytes, wire_since},
    targets::TargetsView,
    RttConfig,
};
use crate::bench::{
    echo,
    series::{parse, payload, until_stopped, SeriesResult, Tally},
    BenchError,
};

pub(super) async fn udp_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, BenchError> {
    let size = config.size;
    let (target, client_ip) = (targets.udp, targets.client_ip);
    measure(&config, name, false, |who, lanes, stop| async move {
        let socket = tokio::net::UdpSocket::bind((client_ip, 0)).await.map_err(BenchError::io("UDP client socket"))?;
        let socket = Arc::new(socket);
        socket.connect(target).await.map_err(BenchError::io("UDP client socket"))?;
        let (reader, reader_tally) = (socket.clone(), lanes.tally(0));
        until_stopped(&stop, async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                if let Ok(len) = reader.recv(&mut buf).await {
                    if let Some((w, i)) = parse(&buf[..len]) {
                        Tally::received_latest(&reader_tally, w, i); // (as Quiver's ticks: the series compare)
                    }
                }
            }
        });
        let lane = lanes.start_one().await;
        for i in 0..lane.plan.count {
            if !lane.turn(who, i).await {
                break;
            }
            let _ = socket.send(&payload(who, i, size)).await;
        }
        Ok(())
    })
    .await
}

pub(super) async fn quinn_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
    stream: bool,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, stream, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let mut client_config = quiver_client::quinn_client_config(
                &TrustOptions::Pin(targets.quinn_pin),
                targets.quinn,
                echo::ECHO_ALPN,
            )?;
            // Bare quinn: its default transport settings, not Quiver's.
            client_config.transport_config(Arc::new(quinn::TransportConfig::default()));
            let endpoint = quinn::Endpoint::client(SocketAddr::new(targets.client_ip, 0))
                .map_err(BenchError::io("quinn client endpoint"))?;
            let conn = endpoint.connect_with(client_config, targets.quinn, "localhost")?.await?;
            let reader_tally = lanes.tally(0);
            let before = quinn_bytes(&conn);
            let messages;
            if stream {
                let (mut send, mut recv) = conn.open_bi().await?;
                until_stopped(&stop, async move {
                    let mut buf = vec![0u8; size];
                    while recv.read_exact(&mut buf).await.is_ok() {
                        if let Some((w, i)) = parse(&buf) {
                            Tally::received(&reader_tally, w, i);
                        }
                    }
                });
                let lane = lanes.start_one().await;
                let mut sent = 0;
                for i in 0..lane.plan.count {
                    if !lane.turn(who, i).await {
                        break;
                    }
                    send.write_all(&payload(who, i, size)).await?;
                    sent += 1;
                }
                messages = (lane.tally.clone(), sent);
            } else {
                let reader = conn.clone();
                until_stopped(&stop, async move {
                    while let Ok(datagram) = reader.read_datagram().await {
                        if let Some((w, i)) = parse(&datagram) {
                            Tally::received_latest(&reader_tally, w, i);
                        }
                    }
                });
                let lane = lanes.start_one().await;
                let sent = lane
                    .send_scheduled(who, |i| {
                        let _ = conn.send_datagram(payload(who, i, size).into());
                    })
                    .await;
                messages = (lane.tally.clone(), sent);
            }
            Tally::wire(&messages.0, quinn_bytes(&conn) - before, messages.1);
            // Keep the connection through the drain.
            until_stopped(&stop, async move {
                std::future::pending::<()>().await;
                drop((conn, endpoint));
            });
            Ok(())
        }
    })
    .await
}

pub(super) async fn quiver_datagram_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, false, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let client = targets.quiver_client().await?;
            let channel = quiver::fresh_name("rtt", who, "ticks");
            let server = targets.quiver.stats.clone().filter(|_| who == 0);
            let (publisher, dropped) = quiver::own_ticks(&client, &channel, lanes.tally(0), &stop, server).await?;
            let lane = lanes.start_one().await;
            let before = wire_bytes(&client);
            let sent = lane
                .send_scheduled(who, |i| {
                    if i == lane.plan.warmup {
                        dropped.measured_in(&lane.tally); // read after the drain
                    }
                    quiver::publish(&publisher, payload(who, i, size))
                })
                .await;
            if let Some(bytes) = wire_since(&client, before) {
                Tally::wire(&lane.tally, bytes, sent);
            }
            close_after(&stop, client);
            Ok(())
        }
    })
    .await
}

/// Posts into a room the sender has joined (with redundant delivery when `redundant`), timing each message's
/// return on the room stream (or its copies).
pub(super) async fn quiver_stream_series(
    name: &'static str,
    config: RttConfig,
    targets: Arc<TargetsView>,
    redundant: bool,
) -> Result<SeriesResult, BenchError> {
    let size = config.size.max(12);
    measure(&config, name, true, |who, lanes, stop| {
        let targets = targets.clone();
        async move {
            let client = targets.quiver_client().await?;
            let room = quiver::fresh_name("rtt", who, redundant);
            quiver::own_chat(&client, &room, lanes.tally(0), &stop, redundant).await?;
            let lane = lanes.start_one().await;
            let before = wire_bytes(&client);
            let sent = lane.send_scheduled(who, |i| quiver::post(&client, &room, payload(who, i, size))).await;
            if let Some(bytes) = wire_since(&client, before) {
                Tally::wire(&lane.tally, bytes, sent);
            }
            close_after(&stop, client);
            Ok(())
        }
    })
    .await
}
