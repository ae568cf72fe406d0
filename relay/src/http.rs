//! The HTTP/1 server loop: each accepted connection served by hyper, with the
//! peer's address for the handlers, WebSocket upgrades, and a graceful stop.
//!
//! Our own loop rather than `axum::serve`: that one first reads 24 bytes to look
//! for an HTTP/2 preface, which makes hyper grow every connection's read buffer
//! to 16 KiB; plain HTTP/1 keeps it at 8 KiB (with ten thousand streams open,
//! the difference is 80 MB). It also bounds how long a client may take to send
//! its request head, caps the connections open at once ([`crate::connections`]),
//! and cuts a connection whose client stops taking bytes ([`crate::write_progress`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::debug;

use crate::app::PeerAddr;
use crate::auth::AuthLimiter;
use crate::body_deadline::DeadlineBody;
use crate::connections::{ConnectionLimits, log_refusal};
use crate::write_progress::WriteProgress;

/// How long a client may take to send a request's head.
/// Largest request head, and most bytes one connection's read buffer may hold
/// (hyper's default is about 400 KiB, which 16,384 connections would turn into
/// 6.4 GiB); real heads, cookies and API keys included, fit in a few KiB.
const MAX_HEAD_BUFFER_BYTES: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What bounds the connections: how many, and how long a client may stall.
#[derive(Clone, Debug)]
pub(crate) struct HttpLimits {
    /// The caps on open connections.
    pub(crate) connections: Arc<ConnectionLimits>,
    /// Worker logins: addresses that logged in may use the slots kept for workers.
    pub(crate) worker_logins: Arc<AuthLimiter>,
    /// How long a client may take no bytes while the relay has some for it (`None`: no limit).
    pub(crate) client_idle_timeout: Option<Duration>,
    /// Counts the connections that timeout cut.
    pub(crate) idle_cuts: Counter,
    /// How long a request body may take to arrive after its head (`None`: no limit).
    pub(crate) body_read_timeout: Option<Duration>,
}

/// Serves `router` on `listener`. Once `draining` resolves, every connection
/// (open ones, and those accepted from then on) closes after the request it
/// serves, so a load balancer's health check still gets an answer (503) while
/// the relay drains. Once `stop` resolves, it stops accepting, lets each
/// connection finish its request, and returns once all are closed.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    draining: impl Future<Output = ()> + Send,
    stop: impl Future<Output = ()> + Send,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BUFFER_BYTES)
        .max_buf_size(MAX_HEAD_BUFFER_BYTES);
    // Cancelled when the drain begins, and when serving stops.
    let (drain_begun, stopping) = (CancellationToken::new(), CancellationToken::new());
    let connections = TaskTracker::new();
    tokio::pin!(draining);
    tokio::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            () = &mut draining, if !drain_begun.is_cancelled() => {
                drain_begun.cancel();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let known_worker = limits.worker_logins.has_logged_in(peer.ip());
        let slot = match limits.connections.admit(peer.ip(), known_worker) {
            Ok(slot) => slot,
            Err(refusal) => {
                log_refusal(refusal, peer.ip());
                limits.connections.refuse(io, refusal);
                continue;
            }
        };
        let router = router.clone();
        let body_read_timeout = limits.body_read_timeout;
        let draining = drain_begun.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            let mut router = router.clone();
            let (request, passed) = with_deadline(request, body_read_timeout);
            let draining = draining.clone();
            async move {
                let mut response = router
                    .call(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                // During a drain each connection serves one more request at most.
                if draining.is_cancelled()
                    || passed.is_some_and(|passed| passed.load(Ordering::Acquire))
                {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection(
                WriteProgress::new(
                    TokioIo::new(io),
                    limits.client_idle_timeout,
                    peer,
                    limits.idle_cuts.clone(),
                ),
                service,
            )
            .with_upgrades();
        // A connection open when the drain begins finishes the request under
        // way and closes (at once if idle); one accepted during the drain is
        // served its request (hyper would close it unread if told to shut down
        // now) and closes after it, by `Connection: close`, or when serving stops.
        let close_when = if drain_begun.is_cancelled() {
            stopping.clone()
        } else {
            drain_begun.clone()
        };
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = close_when.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                debug!(%peer, %error, "client connection ended with an error");
            }
            // Held until hyper lets the connection go (at an upgrade, too).
            drop(slot);
        });
    }
    drop(listener);
    drain_begun.cancel();
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// `request` with its body bound by `timeout`, and the flag saying whether it passed.
fn with_deadline(
    request: http::Request<Incoming>,
    timeout: Option<Duration>,
) -> (http::Request<axum::body::Body>, Option<Arc<AtomicBool>>) {
    let Some(timeout) = timeout else {
        return (request.map(axum::body::Body::new), None);
    };
    let (parts, body) = request.into_parts();
    let (body, passed) = DeadlineBody::new(body, timeout);
    (
        http::Request::from_parts(parts, axum::body::Body::new(body)),
        Some(passed),
    )
}
