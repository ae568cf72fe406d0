//! A relay that speaks only protocol v1 (JSON text over a raw WebSocket), as
//! existing ModelRelay servers do, for tests of what our worker does with it.
//! Its links come over loopback TCP, or in memory (see [`super::memory_link`])
//! for tests on tokio's paused clock.

// tungstenite's handshake callback fixes the (large) error type of the closure.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::memory_link::MemoryDialer;

/// How long the worker may take to send its next frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A byte stream a link runs on: TCP or in memory.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A v1 link to our worker, from the relay's side.
pub type V1Link = WebSocketStream<Box<dyn Io>>;

/// Where a fake relay's links come from.
enum Incoming {
    Tcp(TcpListener),
    Memory(Mutex<mpsc::Receiver<DuplexStream>>),
}

/// A listening fake v1 relay.
pub struct FakeV1Relay {
    incoming: Incoming,
    /// The URL to give the worker as `--proxy-url`.
    pub url: String,
}

impl FakeV1Relay {
    /// Listens on a loopback port.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Self {
            incoming: Incoming::Tcp(listener),
            url,
        }
    }

    /// A relay reached only through the returned dialer, in memory: no byte
    /// is ever in flight in a kernel, so tokio's paused clock moves only when
    /// every task truly waits for time.
    pub fn in_memory() -> (Self, MemoryDialer) {
        let (dialer, links) = MemoryDialer::new();
        let relay = Self {
            incoming: Incoming::Memory(Mutex::new(links)),
            url: "http://fake-relay.test:80".into(),
        };
        (relay, dialer)
    }

    /// The next connection's byte stream.
    async fn accept(&self) -> Box<dyn Io> {
        match &self.incoming {
            Incoming::Tcp(listener) => Box::new(listener.accept().await.unwrap().0),
            Incoming::Memory(links) => Box::new(links.lock().await.recv().await.unwrap()),
        }
    }

    /// The first link that brings a frame, and that frame (the worker's
    /// `register`); `check` sees each upgrade request. Our worker offers v2
    /// first, and a relay that ignores the offer makes it dial again without
    /// it, so connections are taken until one speaks.
    pub async fn accept_register(&self, check: impl Fn(&Request)) -> (V1Link, Value) {
        loop {
            let stream = self.accept().await;
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

/// ModelRelay's server pings a worker only after this long without a frame from it.
pub const MODELRELAY_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// ModelRelay's server drops a worker this long after a ping it did not answer.
pub const MODELRELAY_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// How a link served with [`ModelRelayHeartbeat`] ended.
#[derive(Debug)]
pub struct LinkEnded {
    /// When, in the test's (simulated) time.
    pub at: tokio::time::Instant,
    /// What ended it.
    pub why: String,
}

/// A v1 link served with the heartbeat of ModelRelay's server
/// (`crates/modelrelay-server/src/worker_socket.rs`): any frame, ping or pong
/// from the worker counts as activity; after [`MODELRELAY_HEARTBEAT_INTERVAL`]
/// without any it sends a `ping` frame, and it drops the worker
/// [`MODELRELAY_PONG_TIMEOUT`] later if nothing came. So a worker that streams
/// hears nothing from it at all.
pub struct ModelRelayHeartbeat {
    link: V1Link,
    heard_at: tokio::time::Instant,
    awaiting_pong_since: Option<tokio::time::Instant>,
    /// `ping` frames this relay sent.
    pub pings_sent: u32,
    /// WebSocket pings the worker sent (each answered with a pong by the WebSocket itself).
    pub probes_heard: u32,
}

impl ModelRelayHeartbeat {
    /// Serves `link` from now on.
    pub fn new(link: V1Link) -> Self {
        Self {
            link,
            heard_at: tokio::time::Instant::now(),
            awaiting_pong_since: None,
            pings_sent: 0,
            probes_heard: 0,
        }
    }

    /// Sends `frame` to the worker as JSON text.
    pub async fn send(&mut self, frame: Value) {
        send_frame(&mut self.link, frame).await;
    }

    /// The worker's next JSON frame other than a `pong`, keeping the heartbeat
    /// meanwhile; how the link ended if it did (the worker left, or missed a pong).
    pub async fn next_frame(&mut self) -> Result<Value, LinkEnded> {
        loop {
            let wake = match self.awaiting_pong_since {
                Some(since) => since + MODELRELAY_PONG_TIMEOUT,
                None => self.heard_at + MODELRELAY_HEARTBEAT_INTERVAL,
            };
            let message = match tokio::time::timeout_at(wake, self.link.next()).await {
                Ok(message) => message,
                Err(_) => {
                    self.on_quiet().await?;
                    continue;
                }
            };
            let ended = |why: String| LinkEnded {
                at: tokio::time::Instant::now(),
                why,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    self.heard();
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] != "pong" {
                        return Ok(frame);
                    }
                }
                Some(Ok(Message::Ping(_))) => {
                    self.heard();
                    self.probes_heard += 1;
                }
                Some(Ok(Message::Pong(_))) => self.heard(),
                Some(Ok(Message::Close(frame))) => return Err(ended(format!("closed: {frame:?}"))),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(ended(error.to_string())),
                None => return Err(ended("connection lost".into())),
            }
        }
    }

    /// The worker said something: the heartbeat starts over.
    fn heard(&mut self) {
        self.heard_at = tokio::time::Instant::now();
        self.awaiting_pong_since = None;
    }

    /// The heartbeat's time came: drop a worker that missed its pong, else ping it.
    async fn on_quiet(&mut self) -> Result<(), LinkEnded> {
        let now = tokio::time::Instant::now();
        if self.awaiting_pong_since.is_some() {
            let _ = self.link.close(None).await;
            return Err(LinkEnded {
                at: now,
                why: "worker heartbeat timed out".into(),
            });
        }
        self.send(serde_json::json!({"type": "ping"})).await;
        self.pings_sent += 1;
        self.awaiting_pong_since = Some(now);
        Ok(())
    }
}
