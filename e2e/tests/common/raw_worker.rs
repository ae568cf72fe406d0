//! A worker written frame by frame (v1 JSON over a WebSocket), to send a relay
//! what no well-behaved worker would.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use modelrelay_core::wire::FrameLimits;
use modelrelay_transports::ws::client::{HandshakeError, Offer, handshake};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A raw worker link.
pub type Socket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to the worker endpoint of the relay at `addr` (`host:port`).
pub async fn raw_connect(
    addr: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, HandshakeError> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/v1/worker/connect{query}");
    handshake(stream, &url, headers, Offer::V1, FrameLimits::default())
        .await
        .map(|(socket, _, _)| socket)
}

/// The next text frame as JSON, or the close frame's code.
pub async fn next(socket: &mut Socket) -> Result<Value, Option<u16>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Sends one text frame.
pub async fn send(socket: &mut Socket, frame: &str) {
    socket.send(Message::Text(frame.into())).await.unwrap();
}

/// Connects with `secret` and registers `models` as a v1 worker; the link, acknowledged.
pub async fn registered(addr: &str, secret: &str, models: &[&str]) -> Socket {
    let mut socket = raw_connect(addr, "", &[("x-worker-secret", secret)])
        .await
        .unwrap();
    let register = serde_json::json!({
        "type": "register", "worker_name": "raw", "models": models,
        "max_concurrent": 4, "protocol_version": "2026-04-bridge-v1", "current_load": 0,
    });
    send(&mut socket, &register.to_string()).await;
    let ack = next(&mut socket).await.unwrap();
    assert_eq!(ack["type"], "register_ack", "{ack}");
    socket
}
