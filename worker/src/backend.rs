//! Calls to the local backend (llama-server, Ollama, vLLM, ...) over HTTP.
//!
//! One client, [`HttpBackend`], generic over its connector: plain TCP and TLS
//! in production, a simulated network in the fault simulation.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use modelrelay_core::wire::{HOP_BY_HOP_HEADERS, Headers};
use modelrelay_transports::tls::{TlsError, Trust, client_tls};
use url::Url;

use crate::endpoint::{self, RefusedPath};

/// A request for the backend.
#[derive(Clone, Debug)]
pub struct BackendRequest {
    /// HTTP method.
    pub method: Method,
    /// Path on the backend, for instance `/v1/chat/completions`.
    pub path: String,
    /// Headers to send (already filtered).
    pub headers: Headers,
    /// Body, unchanged.
    pub body: Bytes,
}

/// The backend's answer, its body still arriving.
pub struct BackendResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers, hop-by-hop ones removed.
    pub headers: Headers,
    /// The body, piece by piece as it arrives.
    pub body: BackendBody,
}

/// A response body as a stream of byte chunks.
pub type BackendBody = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send>>;

/// A future returned by [`Backend::send`].
pub type BackendFuture =
    Pin<Box<dyn Future<Output = Result<BackendResponse, BackendError>> + Send>>;

/// Why a backend call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No connection could be made.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The response body broke off.
    #[error("backend response broke off: {0}")]
    Body(String),
    /// The answer was not what was asked for (for instance a model list that is not JSON).
    #[error("unexpected backend answer: {0}")]
    Unexpected(String),
    /// The path asked for is not one the worker calls; the backend was not called.
    #[error("{0}")]
    Refused(RefusedPath),
}

/// Something that answers backend requests.
pub trait Backend: Send + Sync + 'static {
    /// Sends a request; resolves once the status and headers arrived.
    fn send(&self, request: BackendRequest) -> BackendFuture;
}

/// The backend over HTTP(S), reached with connector `C`.
pub struct HttpBackend<C> {
    base: Url,
    client: Client<C, Full<Bytes>>,
}

/// The connector used outside simulations: TCP, with TLS for `https://` backends.
pub type DefaultConnector = hyper_rustls::HttpsConnector<HttpConnector>;

impl HttpBackend<DefaultConnector> {
    /// A client for the backend at `base` (`http://` or `https://`).
    pub fn new(base: Url) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let tls = match client_tls(&Trust::SystemRoots) {
            Ok(tls) => tls,
            Err(error) if base.scheme() == "https" => return Err(error),
            // A plain-HTTP backend needs no roots.
            Err(_) => client_tls(&Trust::Roots(Vec::new()))?,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self::with_connector(base, connector))
    }
}

impl<C> HttpBackend<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// A client for the backend at `base`, connecting with `connector`.
    pub fn with_connector(base: Url, connector: C) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { base, client }
    }

    /// The full URL of `path` on the backend; refused if it is not a plain
    /// path, so no path can change the backend's address (see [`endpoint::join`]).
    fn uri(&self, path: &str) -> Result<Uri, BackendError> {
        endpoint::backend_uri(&self.base, path).map_err(BackendError::Refused)
    }
}

fn end_to_end_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .filter(|(name, _)| {
            // The length is recomputed where the body is sent on.
            !HOP_BY_HOP_HEADERS.contains(&name.as_str()) && name.as_str() != "content-length"
        })
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

impl<C> Backend for HttpBackend<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn send(&self, request: BackendRequest) -> BackendFuture {
        let uri = self.uri(&request.path);
        let client = self.client.clone();
        Box::pin(async move {
            let mut builder = Request::builder().method(request.method).uri(uri?);
            for (name, value) in request.headers.iter() {
                if let Ok(value) = HeaderValue::from_str(value) {
                    builder = builder.header(name, value);
                }
            }
            let http_request = builder
                .body(Full::new(request.body))
                .map_err(|e| BackendError::Unexpected(e.to_string()))?;
            let response = client
                .request(http_request)
                .await
                .map_err(|e| BackendError::Unreachable(error_chain(&e)))?;
            let status = response.status().as_u16();
            let headers = end_to_end_headers(response.headers());
            let body = response
                .into_body()
                .into_data_stream()
                .map(|chunk| chunk.map_err(|e| BackendError::Body(e.to_string())));
            Ok(BackendResponse {
                status,
                headers,
                body: Box::pin(body),
            })
        })
    }
}

/// The error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a whole body, failing past `limit` bytes.
pub async fn collect_body(mut body: BackendBody, limit: usize) -> Result<Bytes, BackendError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let total = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
        if total > limit {
            return Err(BackendError::Body(format!(
                "response larger than {limit} bytes"
            )));
        }
        match &first {
            // A body that arrives in one piece is passed on without a copy.
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}

/// The model ids the backend lists at `GET /v1/models` (OpenAI format; Ollama's `/api/tags` shape too).
pub async fn list_models(backend: &dyn Backend) -> Result<Vec<String>, BackendError> {
    let response = backend
        .send(BackendRequest {
            method: Method::GET,
            path: "/v1/models".into(),
            headers: Headers::new(),
            body: Bytes::new(),
        })
        .await?;
    let status = response.status;
    let body = collect_body(response.body, 16 * 1024 * 1024).await?;
    if !(200..300).contains(&status) {
        return Err(BackendError::Unexpected(format!(
            "GET /v1/models answered HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    parse_model_list(&body)
}

/// Model ids from a `/v1/models` (`{"data":[{"id":..}]}`) or Ollama (`{"models":[{"name":..}]}`) body.
pub fn parse_model_list(body: &[u8]) -> Result<Vec<String>, BackendError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| BackendError::Unexpected(format!("model list is not JSON: {e}")))?;
    let pick = |list: &serde_json::Value, key: &str| -> Option<Vec<String>> {
        list.as_array().map(|items| {
            items
                .iter()
                .filter_map(|item| item.get(key).and_then(|v| v.as_str()).map(str::to_owned))
                .collect()
        })
    };
    value
        .get("data")
        .and_then(|list| pick(list, "id"))
        .or_else(|| value.get("models").and_then(|list| pick(list, "name")))
        .ok_or_else(|| {
            BackendError::Unexpected("model list has neither `data` nor `models`".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_in_openai_and_ollama_shapes_are_read() {
        let openai =
            br#"{"object":"list","data":[{"id":"llama-3","object":"model"},{"id":"qwen"}]}"#;
        assert_eq!(parse_model_list(openai).unwrap(), ["llama-3", "qwen"]);
        let ollama = br#"{"models":[{"name":"mistral:7b"}]}"#;
        assert_eq!(parse_model_list(ollama).unwrap(), ["mistral:7b"]);
        assert!(parse_model_list(b"[]").is_err());
        assert!(parse_model_list(b"<html>").is_err());
    }

    #[test]
    fn a_base_url_ending_in_v1_does_not_double_it() {
        let backend = HttpBackend::with_connector(
            Url::parse("http://127.0.0.1:8000/v1/").unwrap(),
            HttpConnector::new(),
        );
        assert_eq!(
            backend.uri("/v1/chat/completions").unwrap(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        let backend = HttpBackend::with_connector(
            Url::parse("http://h:1/prefix").unwrap(),
            HttpConnector::new(),
        );
        assert_eq!(
            backend.uri("/v1/models").unwrap(),
            "http://h:1/prefix/v1/models"
        );
    }

    #[test]
    fn a_path_that_would_change_the_backend_host_is_refused_before_any_connection() {
        let backend = HttpBackend::with_connector(
            Url::parse("http://127.0.0.1:8000").unwrap(),
            HttpConnector::new(),
        );
        for path in ["@evil.example/v1/chat/completions", "//evil.example/x"] {
            assert!(
                matches!(backend.uri(path), Err(BackendError::Refused(_))),
                "{path:?}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_passed_on() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-length", HeaderValue::from_static("10"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let kept = end_to_end_headers(&headers);
        assert_eq!(kept.get("content-type"), Some("application/json"));
        assert_eq!(kept.get("x-request-id"), Some("abc"));
        assert_eq!(kept.len(), 2);
    }
}
