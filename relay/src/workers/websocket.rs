//! Worker links over WebSocket: the upgrade at `/v1/worker/connect`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use modelrelay_core::wire::{FrameLimits, LinkFlow, ServerMessage, WireVersion, WorkerMessage};
use modelrelay_core::{DEFAULT_PROVIDER, WorkerId};
use modelrelay_transports::ReadLimit;
use modelrelay_transports::ws::{split_limited, upgrade};
use serde::Deserialize;
use tracing::debug;

use crate::app::{AppState, PeerAddr};
use crate::auth::client_address;
use crate::codes;
use crate::error::{ApiError, ApiFlavor, ClientError};
use crate::hub::Transport;

use super::admission::{Candidate, Refusal, admit};
use super::link::{LinkInfo, run_link};

/// The query of a worker's connect request.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ConnectQuery {
    provider: Option<String>,
    /// The old way to pass the secret, accepted only with `--allow-secret-in-query`.
    worker_secret: Option<String>,
}

/// `GET /v1/worker/connect`: checks the worker from its request alone, then
/// upgrades to a WebSocket link; a worker that is refused gets an HTTP error
/// and no WebSocket, so nothing it would send is read.
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
    let header = request
        .headers()
        .get("x-worker-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let secret = match (header, query.worker_secret) {
        (Some(header), _) => Some(header),
        (None, Some(query)) if app.config.allow_secret_in_query => Some(query),
        // Not compared, so not a guess: refused without counting, saying what to do.
        (None, Some(_)) => return Err(query_secret_refused()),
        (None, None) => None,
    };
    let candidate = Candidate {
        transport: Transport::WebSocket,
        peer,
        address,
        secret: secret.as_deref(),
        provider: query.provider.as_deref().unwrap_or(DEFAULT_PROVIDER),
    };
    admit(&app, &candidate, now).map_err(refusal_answer)?;
    let wire = if upgrade.offers_v2() && app.config.enable_v2 {
        WireVersion::V2
    } else {
        WireVersion::V1
    };
    // v2.1 (v2 with `window_update`) when the worker offers it: its answers are
    // then paced by windows rather than capped.
    let flow = if wire == WireVersion::V2 && upgrade.offers_v2_1() && app.config.link_windows {
        LinkFlow::Windowed
    } else {
        LinkFlow::Unwindowed
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let worker = WorkerId::new(app.next_worker.fetch_add(1, Ordering::Relaxed));
    let hub = app.hub.clone();
    let limits = app.config.frame_limits;
    tokio::spawn(async move {
        // Until its register is accepted a worker may send only a register: its
        // frames are held to the largest register the relay accepts, and what is
        // read at all to a little more than that.
        let reads = ReadLimit::until_raised(FrameLimits::before_register_on(wire), limits);
        let upgraded = upgrade::accept_before_register(on_upgrade, limits, reads.clone()).await;
        let socket = match upgraded {
            Ok(socket) => socket,
            Err(error) => {
                debug!(%peer, %error, "worker upgrade failed");
                return;
            }
        };
        let (reader, writer) =
            split_limited::<_, WorkerMessage, ServerMessage>(socket, wire, limits, reads.clone());
        let link = LinkInfo {
            worker,
            wire,
            flow,
            peer,
            transport: Transport::WebSocket,
            reads,
        };
        run_link(reader, writer, link, hub).await;
    });
    Ok(upgrade.response(wire, flow).map(|()| Body::empty()))
}

/// The 401 for a secret passed in the query string while that is not allowed.
fn query_secret_refused() -> ClientError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        codes::INVALID_WORKER_SECRET,
        "The worker secret in the query string (?worker_secret=) is refused: send it in the \
         x-worker-secret header, or start the relay with --allow-secret-in-query.",
    )
    .for_api(ApiFlavor::OpenAi)
}

/// The HTTP answer to a refused worker: 429 with `Retry-After` while its
/// address cools down, 401 for a missing or wrong secret, 403 for a provider
/// this relay does not serve.
fn refusal_answer(refusal: Refusal) -> ClientError {
    let error = match refusal {
        Refusal::Cooldown(retry_after) => ApiError::auth_cooldown(
            "Too many failed worker authentications from this address; try again later.",
            retry_after,
        ),
        Refusal::Unauthorized => ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_WORKER_SECRET,
            "Missing or wrong worker secret (x-worker-secret).",
        ),
        Refusal::UnknownProvider(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            codes::UNKNOWN_PROVIDER,
            "This relay serves no such provider (check the worker's --provider).",
        ),
    };
    error.for_api(ApiFlavor::OpenAi)
}
