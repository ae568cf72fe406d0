//! Where workers connect: admission, the WebSocket and QUIC acceptors, and the task that runs each link.

mod admission;
mod link;
pub mod quic;
mod websocket;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::app::AppState;

/// The worker route: `/v1/worker/connect`, the WebSocket upgrade.
pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/worker/connect", get(websocket::connect))
}
