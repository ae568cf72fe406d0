//! The real server and worker on turmoil's simulated TCP: a listener, a dialer, a connector, a client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use modelrelay_worker::link::{Dialer, RelayEndpoint};
use turmoil::net::{TcpListener, TcpStream};

/// turmoil's TCP listener as an axum listener.
pub struct SimListener(pub TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum does for real listeners: wait a moment and try again.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Binds a simulated listener on `port` of this host.
pub async fn listen(port: u16) -> io::Result<SimListener> {
    Ok(SimListener(TcpListener::bind(("0.0.0.0", port)).await?))
}

/// Dials the relay over simulated TCP, or simulated UDP for QUIC.
#[derive(Clone, Debug, Default)]
pub struct SimDialer {
    /// Seed of the QUIC endpoints it makes.
    pub seed: u64,
    /// What those endpoints' sockets lose.
    pub loss: crate::quic::PacketLoss,
}

impl Dialer for SimDialer {
    type Stream = TcpStream;

    fn dial(&self, endpoint: &RelayEndpoint) -> impl Future<Output = io::Result<TcpStream>> + Send {
        let host = endpoint.host.clone();
        let port = endpoint.port;
        async move { TcpStream::connect((host.as_str(), port)).await }
    }

    fn quic(
        &self,
        endpoint: &RelayEndpoint,
    ) -> impl Future<Output = io::Result<(quinn::Endpoint, SocketAddr)>> + Send {
        let host = endpoint.host.clone();
        let port = endpoint.port;
        let (seed, loss) = (self.seed, self.loss.clone());
        async move {
            let config = quinn::EndpointConfig::default();
            let local = crate::quic::endpoint(0, config, None, seed, loss).await?;
            let relay = SocketAddr::new(turmoil::lookup(host.as_str()), port);
            Ok((local, relay))
        }
    }
}

/// Connects the worker's backend client over simulated TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimConnector;

/// A simulated TCP connection as hyper sees it.
pub struct SimConnection(TokioIo<TcpStream>);

impl tower_service::Service<Uri> for SimConnector {
    type Response = SimConnection;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<SimConnection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            Ok(SimConnection(TokioIo::new(stream)))
        })
    }
}

impl Connection for SimConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for SimConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SimConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An HTTP response whose body is still arriving.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Incoming,
}

impl Response {
    /// The next piece of the body; `None` at its end, `Some(Err)` if it broke off.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(error) => return Some(Err(error.to_string())),
            }
        }
    }
}

/// POSTs `body` to `http://{host}:{port}{path}` over a fresh simulated connection.
pub async fn post(host: &str, port: u16, path: &str, body: String) -> io::Result<Response> {
    let stream = TcpStream::connect((host, port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header("host", format!("{host}:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = response.status().as_u16();
    Ok(Response {
        status,
        body: response.into_body(),
    })
}

/// GETs `http://{host}:{port}{path}` and returns status and body.
pub async fn get(host: &str, port: u16, path: &str) -> io::Result<(u16, Bytes)> {
    let stream = TcpStream::connect((host, port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", format!("{host}:{port}"))
        .body(Full::new(Bytes::new()))
        .map_err(io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok((status, body))
}
