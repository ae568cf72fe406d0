//! `GET /v1/models` and `GET /v1/models/{id}`: the models connected workers serve.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use modelrelay_core::ModelName;
use modelrelay_core::relay::{Failure, MAX_MODEL_NAME_BYTES};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, ApiFlavor, ClientError};

use super::api_key::require_api_key;

/// `GET /v1/models`: the models connected workers serve, in the OpenAI list format.
pub(super) async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ClientError> {
    let models = served_models(&app, &headers).await?;
    let data: Vec<serde_json::Value> = models.iter().map(model_object).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}`: one model a worker serves, as OpenAI's model object;
/// 404 in OpenAI's error shape for any other. The id may hold slashes
/// (`org/model`, as vLLM names Hugging Face models).
pub(super) async fn model(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ClientError> {
    let models = served_models(&app, &headers).await?;
    match models.iter().find(|model| model.as_str() == id) {
        Some(model) => Ok(axum::Json(model_object(model)).into_response()),
        None => Err(no_such_model(&id).for_api(ApiFlavor::OpenAi)),
    }
}

/// The models served now, once the request's API key checks out.
async fn served_models(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<Vec<ModelName>>, ClientError> {
    require_api_key(app, ApiFlavor::OpenAi, headers).await?;
    // Bounded: at most 256 names of at most 256 bytes per connected worker.
    app.hub
        .models()
        .await
        .ok_or_else(|| ApiError::shutting_down().for_api(ApiFlavor::OpenAi))
}

/// One model in OpenAI's model object shape.
fn model_object(model: &ModelName) -> serde_json::Value {
    json!({"id": model.as_str(), "object": "model", "created": 0, "owned_by": "modelrelay"})
}

/// The 404 for a model no worker serves, as an inference request for it gets;
/// the id is repeated only if it could be a model name.
fn no_such_model(id: &str) -> ApiError {
    let named = id.len() <= MAX_MODEL_NAME_BYTES && !id.chars().any(char::is_control);
    ApiError::from_failure(&Failure::UnknownModel, if named { id } else { "…" })
}
