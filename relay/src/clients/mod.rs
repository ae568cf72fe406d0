//! What clients call: the inference routes, `/v1/models`, `/health`, and the answers to any other path or method.
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
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};

use crate::app::AppState;
use crate::error::ApiFlavor;

pub(crate) use body::BodyBudget;
pub use cors::{ANY_ORIGIN, CorsError, CorsOrigins};
pub(crate) use inference::inference_on;
pub(crate) use not_found::not_found;
pub(crate) use routes::{INFERENCE_ROUTES, InferenceRoute};
pub(crate) use sse::stream_usage;

/// The client routes, each also without its `/v1` prefix: every inference
/// route of the table (each answer hardened against being run by a browser),
/// `/v1/models`, `/v1/models/{id}` and `/health`, with CORS for `origins`
/// (preflights are answered before routing). A method a route does not take
/// gets a 405 in its API's error shape.
pub(crate) fn router(origins: &CorsOrigins) -> Router<Arc<AppState>> {
    let router = INFERENCE_ROUTES
        .iter()
        .fold(Router::new(), |router, &route| {
            let serve = post(move |app, request| async move {
                headers::harden(
                    inference::inference(app, route, request)
                        .await
                        .into_response(),
                )
            })
            .fallback(move |request: Request| async move {
                headers::harden(not_found::method_not_allowed(&request, route.flavor))
            });
            router
                .route(route.path, serve.clone())
                .route(route.unprefixed(), serve)
        });
    let router = [
        ("/v1/models", get(models::models)),
        // `{*id}`: a model id may hold slashes.
        ("/v1/models/{*id}", get(models::model)),
        ("/health", get(health::health)),
    ]
    .into_iter()
    .fold(router, |router, (path, handler)| {
        let handler = openai_method_fallback(handler);
        match routes::unprefixed(path) {
            Some(unprefixed) => router
                .route(path, handler.clone())
                .route(unprefixed, handler),
            None => router.route(path, handler),
        }
    });
    router.layer(cors::layer(origins))
}

/// `handler` answering a method it does not take with a 405 in OpenAI's shape.
fn openai_method_fallback(handler: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    handler.fallback(|request: Request| async move {
        not_found::method_not_allowed(&request, ApiFlavor::OpenAi)
    })
}
