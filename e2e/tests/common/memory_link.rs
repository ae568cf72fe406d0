//! Links and backends in memory, for tests on tokio's paused clock.
//!
//! With real sockets the paused clock may jump while a few bytes are still on
//! their way through the kernel (a small write right after another can wait
//! for a kernel tasklet): the runtime sees every task waiting, and moves time
//! on to the next timer. In memory, bytes arrive as they are written.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use modelrelay_core::wire::Headers;
use modelrelay_worker::backend::{Backend, BackendFuture, BackendRequest, BackendResponse};
use modelrelay_worker::link::{Dialer, RelayEndpoint};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes a memory link holds in each direction before its writer waits.
const LINK_BUFFER: usize = 256 * 1024;

/// Dials a relay in memory: each dial hands the relay the other end of a new duplex stream.
pub struct MemoryDialer {
    links: mpsc::Sender<DuplexStream>,
}

impl MemoryDialer {
    /// A dialer, and where the relay takes the links it makes.
    pub fn new() -> (Self, mpsc::Receiver<DuplexStream>) {
        let (links, receiver) = mpsc::channel(16);
        (Self { links }, receiver)
    }
}

impl Dialer for MemoryDialer {
    type Stream = DuplexStream;

    async fn dial(&self, _: &RelayEndpoint) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(LINK_BUFFER);
        self.links
            .send(theirs)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(ours)
    }

    async fn quic(&self, _: &RelayEndpoint) -> io::Result<(quinn::Endpoint, std::net::SocketAddr)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "memory links are WebSockets",
        ))
    }
}

/// A backend that streams `tokens` SSE events, `every` apart, then `[DONE]`.
pub struct PacedBackend {
    /// How many events.
    pub tokens: usize,
    /// The time between two.
    pub every: Duration,
}

impl Backend for PacedBackend {
    fn send(&self, _: BackendRequest) -> BackendFuture {
        let every = self.every;
        let events = (0..self.tokens)
            .map(|n| format!("data: {{\"token\":{n}}}\n\n"))
            .chain(std::iter::once("data: [DONE]\n\n".to_owned()));
        let body = futures_util::stream::iter(events).then(move |event| async move {
            tokio::time::sleep(every).await;
            Ok(Bytes::from(event))
        });
        let headers: Headers = [("content-type", "text/event-stream")]
            .into_iter()
            .collect();
        Box::pin(async move {
            Ok(BackendResponse {
                status: 200,
                headers,
                body: Box::pin(body),
            })
        })
    }
}
