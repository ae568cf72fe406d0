//! The answer to any path no route serves.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;

use crate::codes;
use crate::error::{ApiError, ApiFlavor};

/// Any other route: a 404 in the OpenAI shape.
pub(crate) async fn not_found(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!(
            "No route for {} {}.",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response(ApiFlavor::OpenAi)
}
