//! A relay that speaks only protocol v1 (JSON text over a raw WebSocket), as
//! existing ModelRelay servers do, for tests of what our worker does with it.

// tungstenite's handshake callback fixes the (large) error type of the closure.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// How long the worker may take to send its next frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A v1 link to our worker, from the relay's side.
pub type V1Link = WebSocketStream<TcpStream>;

/// A listening fake v1 relay.
pub struct FakeV1Relay {
    listener: TcpListener,
    /// The URL to give the worker as `--proxy-url`.
    pub url: String,
}

impl FakeV1Relay {
    /// Listens on a loopback port.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Self { listener, url }
    }

    /// The first link that brings a frame, and that frame (the worker's
    /// `register`); `check` sees each upgrade request. Our worker offers v2
    /// first, and a relay that ignores the offer makes it dial again without
    /// it, so connections are taken until one speaks.
    pub async fn accept_register(&self, check: impl Fn(&Request)) -> (V1Link, Value) {
        loop {
            let (stream, _) = self.listener.accept().await.unwrap();
            let mut link = tokio_tungstenite::accept_hdr_async(
                stream,
                |request: &Request, response: Response| {
                    check(request);
                    Ok(response)
                },
            )
            .await
            .unwrap();
            if let Some(Ok(Message::Text(text))) =
                tokio::time::timeout(FRAME_WAIT, link.next()).await.unwrap()
            {
                return (link, serde_json::from_str(&text).unwrap());
            }
        }
    }
}

/// The next JSON text frame from the worker; panics if the link ends or is silent for 10 s.
pub async fn next_frame(link: &mut V1Link) -> Value {
    loop {
        match tokio::time::timeout(FRAME_WAIT, link.next())
            .await
            .expect("a frame from the worker within 10 s")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("link ended: {other:?}"),
        }
    }
}

/// Sends `frame` to the worker as JSON text.
pub async fn send_frame(link: &mut V1Link, frame: Value) {
    link.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}
