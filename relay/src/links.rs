//! Worker links: the upgrade at `/v1/worker/connect`, authentication, and one task per link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use modelrelay_core::WorkerId;
use modelrelay_core::relay::AuthOutcome;
use modelrelay_core::wire::{ServerMessage, WireVersion, WorkerMessage};
use modelrelay_transports::close_code;
use modelrelay_transports::ws::{CLOSE_LINGER, split, upgrade};
use modelrelay_transports::{LinkError, LinkReader, LinkWriter, Outgoing};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::app::{AppState, DEFAULT_PROVIDER, PeerAddr};
use crate::auth::client_address;
use crate::codes;
use crate::hub::{Command, Hub, Transport};

/// The query of a worker's connect request.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectQuery {
    provider: Option<String>,
    /// The old way to pass the secret, still accepted.
    worker_secret: Option<String>,
}

/// `GET /v1/worker/connect`: checks the worker, then upgrades to a WebSocket link.
pub(crate) async fn connect(
    State(app): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Query(query): Query<ConnectQuery>,
    mut request: Request,
) -> Response {
    let upgrade = match upgrade::inspect(request.method(), request.headers()) {
        Ok(upgrade) => upgrade,
        Err(error) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                axum::Json(json!({"error": {"message": error.to_string(), "type": "invalid_request_error", "code": codes::WEBSOCKET_REQUIRED}})),
            )
                .into_response();
        }
    };
    let now = tokio::time::Instant::now().into_std();
    let address = client_address(peer.ip(), request.headers(), app.config.trust_forwarded_for);
    if let Err(retry_after) = app.limiter.check(address, now) {
        warn!(%peer, "refusing a worker connection: too many failed attempts from this address");
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"error": {"message": "Too many failed worker authentications from this address; try again later.", "type": "rate_limit_error", "code": codes::AUTH_COOLDOWN}})),
        )
            .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after.as_secs().max(1)),
        );
        return response;
    }
    let presented = request
        .headers()
        .get("x-worker-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.worker_secret);
    let auth = match presented {
        Some(secret) if app.config.worker_secret.matches(&secret) => AuthOutcome::Accepted,
        presented => {
            app.limiter.failure(address, now);
            let why = if presented.is_some() { "a wrong" } else { "no" };
            warn!(%peer, "worker presented {why} secret");
            AuthOutcome::Rejected
        }
    };
    let provider = query
        .provider
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_owned());
    let unknown_provider = (provider != app.config.provider.as_str()).then(|| {
        warn!(%peer, %provider, "worker asked for an unknown provider");
        format!("unknown provider {provider:?}")
    });
    let wire = if upgrade.offers_v2() && app.config.enable_v2 {
        WireVersion::V2
    } else {
        WireVersion::V1
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let worker = WorkerId::new(app.next_worker.fetch_add(1, Ordering::Relaxed));
    let hub = app.hub.clone();
    let limits = app.config.frame_limits;
    tokio::spawn(async move {
        let socket = match upgrade::accept(on_upgrade, limits).await {
            Ok(socket) => socket,
            Err(error) => {
                debug!(%peer, %error, "worker upgrade failed");
                return;
            }
        };
        let (reader, writer) = split::<_, WorkerMessage, ServerMessage>(socket, wire, limits);
        if let Some(reason) = unknown_provider {
            refuse(writer, &reason).await;
            return;
        }
        let link = LinkInfo {
            worker,
            wire,
            auth,
            peer,
            transport: Transport::WebSocket,
        };
        run_link(reader, writer, link, hub).await;
    });
    upgrade.response(wire).map(|()| Body::empty())
}

/// Closes a link at once with a policy violation (unknown provider, refused hello).
pub(crate) async fn refuse<W: LinkWriter<ServerMessage>>(writer: W, reason: &str) {
    let (tx, queue) = mpsc::unbounded_channel();
    let _ = tx.send(Outgoing::Close {
        code: close_code::POLICY_VIOLATION,
        reason: reason.to_owned(),
    });
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_LINGER, writer.run(queue, |_, _| None)).await;
}

/// What the hub is told of a new link.
pub(crate) struct LinkInfo {
    pub(crate) worker: WorkerId,
    pub(crate) wire: WireVersion,
    pub(crate) auth: AuthOutcome,
    pub(crate) peer: SocketAddr,
    pub(crate) transport: Transport,
}

/// Feeds a link's frames to the hub and writes what the hub sends, until either side ends it.
pub(crate) async fn run_link<R, W>(mut reader: R, writer: W, link: LinkInfo, hub: Hub)
where
    R: LinkReader<WorkerMessage>,
    W: LinkWriter<ServerMessage>,
{
    let LinkInfo {
        worker,
        wire,
        auth,
        peer,
        transport,
    } = link;
    let (outbound, queue) = mpsc::unbounded_channel();
    let closing = CancellationToken::new();
    let connected = hub.send(Command::WorkerConnected {
        worker,
        wire,
        auth,
        name_hint: peer.to_string(),
        transport,
        outbound,
        closing: closing.clone(),
    });
    if !connected {
        return;
    }
    let reading = async {
        loop {
            match reader.next().await {
                Some(Ok(message)) => {
                    if !hub.send(Command::WorkerFrame { worker, message }) {
                        return;
                    }
                }
                Some(Err(error)) if error.is_protocol_violation() => {
                    hub.send(Command::WorkerInvalid {
                        worker,
                        detail: error.to_string(),
                    });
                    return;
                }
                Some(Err(error)) => {
                    debug!(%worker, %error, "worker link failed");
                    return;
                }
                None => return,
            }
        }
    };
    let undeliverable = |message: ServerMessage, error: &LinkError| {
        if let ServerMessage::Request(frame) = &message {
            warn!(%worker, request = %frame.request_id, %error, "a request could not be sent to its worker");
            hub.send(Command::Undeliverable {
                worker,
                request: frame.request_id.clone(),
                detail: error.to_string(),
            });
        } else {
            warn!(%worker, %error, "a frame for a worker could not be sent");
        }
        None
    };
    let writing = writer.run(queue, undeliverable);
    tokio::pin!(reading, writing);
    // One task per link. When the worker's side ends, the hub hears of it and the
    // writer gets a moment to send what the hub still has to say (a close); when the
    // hub's side ends (a close sent), the worker gets a moment to answer. A dead
    // link answers nothing, so both waits are bounded.
    let link = async {
        tokio::select! {
            biased;
            () = &mut reading => {
                hub.send(Command::WorkerGone { worker });
                let _ = tokio::time::timeout(CLOSE_LINGER, &mut writing).await;
            }
            result = &mut writing => {
                if let Err(error) = result {
                    debug!(%worker, %error, "writing to the worker failed");
                }
                let _ = tokio::time::timeout(CLOSE_LINGER, &mut reading).await;
            }
        }
    };
    // The hub's close may sit behind frames a dead link never drains: past the
    // linger, drop the link (the hub has already let it go).
    let gave_up = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSE_LINGER * 2).await;
    };
    tokio::select! {
        () = link => {}
        () = gave_up => debug!(%worker, "the close did not complete: dropping the link"),
    }
    hub.send(Command::WorkerGone { worker });
}
