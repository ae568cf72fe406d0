//! `GET /health`: whether the relay runs, and its main numbers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;

/// `GET /health`: status, version, workers, queue depth, uptime. HTTP 200
/// while the relay serves; 503 (same body, `status: "draining"`) once it
/// drains, so load balancers stop sending it clients.
pub(super) async fn health(State(app): State<Arc<AppState>>) -> Response {
    let uptime_secs = app.started.elapsed().as_secs();
    // Numbers only: this route is open to anyone, so it clones no lists.
    match app.hub.counts().await {
        Some(snapshot) => (
            if snapshot.shutting_down {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            axum::Json(json!({
            "status": if snapshot.shutting_down { "draining" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "workers_connected": snapshot.workers,
            "queue_depth": snapshot.queue_depth,
            "requests_in_progress": snapshot.open_requests,
            "uptime_secs": uptime_secs,
            })),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "stopped", "version": env!("CARGO_PKG_VERSION"), "uptime_secs": uptime_secs})),
        )
            .into_response(),
    }
}
