//! What clients call: the inference routes, `/v1/models`, `/health`, and the answer to any other path.
//!
//! An inference request is parsed ([`parse`]), handed to the hub and answered
//! ([`inference`]) whole ([`respond`]) or as a stream ([`stream`]); the routes
//! come from one table ([`routes`]), and the API-key gate ([`api_key`]) stands in
//! front of them. Every client route answers browsers' CORS checks ([`cors`]).

mod api_key;
mod body;
mod cors;
#[cfg(test)]
mod fuzz;
mod guard;
mod headers;
mod health;
mod inference;
mod models;
mod not_found;
mod parse;
mod respond;
mod routes;
mod sse;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::app::AppState;

pub(crate) use body::BodyBudget;
pub use cors::{ANY_ORIGIN, CorsError, CorsOrigins};
pub use inference::REQUEST_ID_HEADER;
pub(crate) use not_found::not_found;
pub(crate) use routes::{INFERENCE_ROUTES, InferenceRoute};
pub(crate) use sse::stream_usage;

/// The client routes: every inference route of the table (each answer hardened
/// against being run by a browser), `/v1/models` and `/health`, with CORS for `origins`.
pub(crate) fn router(origins: &CorsOrigins) -> Router<Arc<AppState>> {
    let router = INFERENCE_ROUTES
        .iter()
        .fold(Router::new(), |router, &route| {
            router.route(
                route.path,
                post(move |app, request| async move {
                    headers::harden(
                        inference::inference(app, route, request)
                            .await
                            .into_response(),
                    )
                }),
            )
        });
    router
        .route("/v1/models", get(models::models))
        .route("/health", get(health::health))
        .layer(cors::layer(origins))
}
