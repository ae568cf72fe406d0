//! `GET /v1/models`: the models connected workers serve.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, ApiFlavor, ClientError};

use super::api_key::require_api_key;

/// `GET /v1/models`: the models connected workers serve, in the OpenAI list format.
pub(super) async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ClientError> {
    require_api_key(&app, ApiFlavor::OpenAi, &headers).await?;
    // Bounded: at most 256 names of at most 256 bytes per connected worker.
    let models = app
        .hub
        .models()
        .await
        .ok_or_else(|| ApiError::shutting_down().for_api(ApiFlavor::OpenAi))?;
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|model| json!({"id": model.as_str(), "object": "model", "created": 0, "owned_by": "modelrelay"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}
