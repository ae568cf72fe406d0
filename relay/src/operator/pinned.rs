//! An operator's request to one named worker: `/admin/workers/{id}/v1/…`, for
//! testing that worker (the setup page's test request) rather than the pool.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use modelrelay_core::WorkerId;

use crate::app::AppState;
use crate::clients::{INFERENCE_ROUTES, InferenceRoute, inference_on};
use crate::codes;
use crate::error::ApiError;

use super::session::Admin;

/// The prefix of a pinned route; the inference route's own path follows it.
const PINNED_PREFIX: &str = "/admin/workers/{id}";

/// Every inference route under [`PINNED_PREFIX`], taking the operator's credentials.
pub(super) fn routes() -> Router<Arc<AppState>> {
    INFERENCE_ROUTES
        .iter()
        .fold(Router::new(), |router, &route| {
            let serve = post(
                move |State(app): State<Arc<AppState>>,
                      _admin: Admin,
                      Path(id): Path<String>,
                      mut request: Request| async move {
                    // The operator's credential is the relay's business, never
                    // the worker's or its backend's.
                    request.headers_mut().remove(header::AUTHORIZATION);
                    pinned(&app, route, &id, request).await
                },
            );
            router.route(&format!("{PINNED_PREFIX}{}", route.path), serve)
        })
}

/// Serves `request` on the worker `id` names, in the route's API error shape
/// when that id is malformed or names no connected worker.
async fn pinned(app: &AppState, route: InferenceRoute, id: &str, request: Request) -> Response {
    let refuse = |status, code, message: String| {
        ApiError::new(status, code, message)
            .for_api(route.flavor)
            .into_response()
    };
    let Ok(id) = id.parse::<u64>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            codes::INVALID_WORKER_ID,
            "A worker id is a number, as GET /admin/workers lists it.".into(),
        );
    };
    let worker = WorkerId::new(id);
    let Some(workers) = app.hub.workers().await else {
        return ApiError::shutting_down()
            .for_api(route.flavor)
            .into_response();
    };
    if !workers.iter().any(|w| w.id == worker) {
        return refuse(
            StatusCode::NOT_FOUND,
            codes::WORKER_NOT_FOUND,
            format!("No worker with id {id} is connected."),
        );
    }
    inference_on(app, route, request, worker).await
}
