//! Worker links over WebSocket: the upgrade at `/v1/worker/connect`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use modelrelay_core::wire::{ServerMessage, WireVersion, WorkerMessage};
use modelrelay_core::{DEFAULT_PROVIDER, WorkerId};
use modelrelay_transports::ws::{split, upgrade};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::app::{AppState, PeerAddr};
use crate::auth::client_address;
use crate::codes;
use crate::error::{ApiError, ApiFlavor, ClientError};
use crate::hub::Transport;

use super::admission::{Candidate, admit};
use super::link::{LinkInfo, refuse, run_link};

/// The query of a worker's connect request.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ConnectQuery {
    provider: Option<String>,
    /// The old way to pass the secret, still accepted.
    worker_secret: Option<String>,
}

/// `GET /v1/worker/connect`: checks the worker, then upgrades to a WebSocket link.
pub(super) async fn connect(
    State(app): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Query(query): Query<ConnectQuery>,
    mut request: Request,
) -> Result<Response, ClientError> {
    let upgrade = upgrade::inspect(request.method(), request.headers()).map_err(|error| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            codes::WEBSOCKET_REQUIRED,
            error.to_string(),
        )
        .for_api(ApiFlavor::OpenAi)
    })?;
    let now = tokio::time::Instant::now().into_std();
    let address = client_address(peer.ip(), request.headers(), app.config.trust_forwarded_for);
    let secret = request
        .headers()
        .get("x-worker-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.worker_secret);
    let candidate = Candidate {
        transport: Transport::WebSocket,
        peer,
        address,
        secret: secret.as_deref(),
        provider: query.provider.as_deref().unwrap_or(DEFAULT_PROVIDER),
    };
    let admission = admit(&app, &candidate, now).map_err(|retry_after| {
        warn!(%peer, "refusing a worker connection: too many failed attempts from this address");
        ApiError::auth_cooldown(
            "Too many failed worker authentications from this address; try again later.",
            retry_after,
        )
        .for_api(ApiFlavor::OpenAi)
    })?;
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
        if let Some(reason) = admission.refusal {
            refuse(writer, &reason).await;
            return;
        }
        let link = LinkInfo {
            worker,
            wire,
            auth: admission.auth,
            peer,
            transport: Transport::WebSocket,
        };
        run_link(reader, writer, link, hub).await;
    });
    Ok(upgrade.response(wire).map(|()| Body::empty()))
}
