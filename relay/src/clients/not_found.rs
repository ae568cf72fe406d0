//! The answers to a request no route serves: a path no route has (404), or a
//! method a client route does not take (405), each in the API's own error shape.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;

use crate::codes;
use crate::error::{ApiError, ApiFlavor};

use super::routes::flavor_of;

/// Any other route: a 404 in the shape of the API its path belongs to
/// (Anthropic's under `/v1/messages`, else OpenAI's).
pub(crate) async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!("No route for {} {path}.", request.method()),
    )
    .into_response(flavor_of(path))
}

/// A client route called with a method it does not take: a 405 in `flavor`'s
/// shape (axum adds the `Allow` header naming the methods it does take).
pub(super) fn method_not_allowed(request: &Request, flavor: ApiFlavor) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; the Allow header names the methods that are.",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response(flavor)
}
