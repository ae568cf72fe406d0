//! One backend call: the request a relay sent, made to the model server, its
//! answer reported chunk by chunk as far as the session allows.

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use modelrelay_core::session::{LinkRequest, SessionInput, chunk_cost};
use modelrelay_core::wire::{
    BackendUsage, Headers, RequestFrame, TokenCounts, forwards_request_header,
};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::backend::{Backend, BackendError, BackendRequest, collect_body};
use crate::endpoint;

/// Where backend calls report their chunks and results.
///
/// Not counted in items: what waits here is bounded by the read windows. A call
/// reads no further than its window (`link_write_window` of chunk cost) past
/// what the link's writer has handed on, and a chunk counts as read before it
/// is reported; so at most each running request's window of chunks waits, plus
/// one final report, and requests run only in free slots. A count bound on top
/// made every call wait for the driver chunk by chunk under load, a wake-up per
/// chunk for nothing.
pub(crate) type BackendReports = mpsc::UnboundedSender<SessionInput>;

/// The `error` code of a failed backend call, by how it failed.
pub(crate) fn failure_code(error: &BackendError) -> &'static str {
    match error {
        BackendError::Unreachable(_) => "backend_unreachable",
        BackendError::Body(_) => "backend_stream_error",
        BackendError::Unexpected(_) => "backend_error",
        BackendError::Refused(_) => endpoint::REFUSED_CODE,
    }
}

/// Calls the backend for one request; streams SSE bodies chunk by chunk, collects others.
///
/// A streamed body is read only while the cost read so far is below `allowance`:
/// meanwhile nothing reads the backend's socket, and TCP holds the model server back.
///
/// A path that is not an inference endpoint fails this request alone, before
/// the backend is called: the relay gets an `error` frame for it (code
/// [`endpoint::REFUSED_CODE`]), like every other failed backend call.
pub(crate) async fn call_backend(
    backend: &dyn Backend,
    (request, frame): (&LinkRequest, &RequestFrame),
    limit: usize,
    reports: &BackendReports,
    mut allowance: watch::Receiver<u64>,
) -> Result<SessionInput, BackendError> {
    if let Err(refused) = endpoint::check_inference_path(&frame.endpoint_path) {
        // The message escapes the path: no raw control characters reach the log.
        warn!(request = %frame.request_id, %refused, "refusing a request: the relay asked for a path the worker does not call");
        return Err(BackendError::Refused(refused));
    }
    // Whatever the relay sent (a ModelRelay server sends nearly every client
    // header), the backend gets only the listed ones, a request id well formed.
    let headers: Headers = frame
        .headers
        .iter()
        .filter(|(name, value)| forwards_request_header(name, value))
        .collect();
    let response = backend
        .send(BackendRequest {
            method: Method::POST,
            path: frame.endpoint_path.clone(),
            headers,
            body: frame.body.clone(),
        })
        .await?;
    let is_event_stream = response
        .headers
        .get("content-type")
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    let request = request.clone();
    if frame.is_streaming && (200..300).contains(&response.status) && is_event_stream {
        let mut body = response.body;
        let mut read = 0u64;
        loop {
            if allowance.wait_for(|up_to| read < *up_to).await.is_err() {
                return Err(BackendError::Body(
                    "the worker stopped following this request".into(),
                ));
            }
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk?;
            read = read.saturating_add(chunk_cost(chunk.len()));
            let _ = reports.send(SessionInput::BackendChunk {
                request: request.clone(),
                chunk,
            });
        }
        return Ok(SessionInput::BackendComplete {
            request,
            status_code: response.status,
            headers: response.headers,
            body: Bytes::new(),
            token_counts: None,
        });
    }
    let body = collect_body(response.body, limit).await?;
    Ok(SessionInput::BackendComplete {
        request,
        status_code: response.status,
        token_counts: token_counts(&response.headers, &body),
        headers: response.headers,
        body,
    })
}

/// Token usage from a JSON body's `usage` (OpenAI or Anthropic field names).
fn token_counts(headers: &Headers, body: &[u8]) -> Option<TokenCounts> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<BackendUsage>,
    }
    let json = headers
        .get("content-type")
        .is_some_and(|t| t.contains("json"));
    if !json {
        return None;
    }
    let mut counts = serde_json::from_slice::<WithUsage>(body)
        .ok()?
        .usage?
        .counts()?;
    counts.total_tokens = counts
        .total_tokens
        .or_else(|| counts.prompt_tokens?.checked_add(counts.completion_tokens?));
    Some(counts)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use modelrelay_core::LinkId;

    use super::*;

    /// `frame` as the session names it on link 0.
    fn on_link(frame: &RequestFrame) -> (LinkRequest, &RequestFrame) {
        (
            LinkRequest::new(LinkId::new(0), frame.request_id.clone()),
            frame,
        )
    }

    fn json() -> Headers {
        [("content-type", "application/json")].into_iter().collect()
    }

    /// A backend that counts its calls and fails each one.
    #[derive(Default)]
    struct CountingBackend(std::sync::atomic::AtomicUsize);

    impl Backend for CountingBackend {
        fn send(&self, _: BackendRequest) -> crate::backend::BackendFuture {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err(BackendError::Unreachable("a counted call".into())) })
        }
    }

    fn request_for(path: &str) -> RequestFrame {
        RequestFrame {
            request_id: "req-1".into(),
            model: "m".into(),
            endpoint_path: path.into(),
            is_streaming: false,
            body: Bytes::from_static(b"{}"),
            headers: Headers::new(),
        }
    }

    #[tokio::test]
    async fn a_request_for_a_path_that_is_not_an_inference_endpoint_fails_without_calling_the_backend()
     {
        let backend = CountingBackend::default();
        let (reports, _inbox) = mpsc::unbounded_channel();
        let (_allowance, allowed) = watch::channel(u64::MAX);
        for path in [
            "/api/delete",
            "@evil.example/v1/chat/completions",
            "/v1/models",
        ] {
            let frame = request_for(path);
            let (request, frame) = on_link(&frame);
            let result =
                call_backend(&backend, (&request, frame), 1024, &reports, allowed.clone()).await;
            assert!(
                matches!(&result, Err(BackendError::Refused(_))),
                "{path}: {:?}",
                result.err()
            );
        }
        assert_eq!(backend.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A backend that keeps the headers of the last request it got, and answers 200.
    #[derive(Default)]
    struct HeaderRecorder(std::sync::Mutex<Option<Headers>>);

    impl Backend for HeaderRecorder {
        fn send(&self, request: BackendRequest) -> crate::backend::BackendFuture {
            *self.0.lock().unwrap() = Some(request.headers);
            Box::pin(async {
                Ok(crate::backend::BackendResponse {
                    status: 200,
                    headers: json(),
                    body: Box::pin(futures_util::stream::empty()),
                })
            })
        }
    }

    #[tokio::test]
    async fn the_backend_gets_only_the_listed_headers_and_a_well_formed_request_id() {
        let (reports, _inbox) = mpsc::unbounded_channel();
        let (_allowance, allowed) = watch::channel(u64::MAX);
        let sent = |request_id: &str| {
            let mut frame = request_for("/v1/chat/completions");
            frame.headers = [
                ("Authorization", "Bearer backend-key"),
                ("openai-project", "proj_1"),
                ("openai-beta", "assistants=v2"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", request_id),
                // What a ModelRelay server also passes on.
                ("cookie", "session=1"),
                ("x-forwarded-for", "10.0.0.1"),
            ]
            .into_iter()
            .collect();
            frame
        };
        let backend = HeaderRecorder::default();
        let frame = sent("client-7");
        let (request, frame) = on_link(&frame);
        call_backend(&backend, (&request, frame), 1024, &reports, allowed.clone())
            .await
            .unwrap();
        let got = backend.0.lock().unwrap().take().unwrap();
        let names: Vec<&str> = got.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "Authorization",
                "openai-project",
                "openai-beta",
                "traceparent",
                "tracestate",
                "x-request-id"
            ]
        );
        assert_eq!(got.get("x-request-id"), Some("client-7"));
        let too_long = "r".repeat(129);
        let frame = sent(&too_long);
        let (request, frame) = on_link(&frame);
        call_backend(&backend, (&request, frame), 1024, &reports, allowed)
            .await
            .unwrap();
        let got = backend.0.lock().unwrap().take().unwrap();
        assert_eq!(got.get("x-request-id"), None);
        assert_eq!(got.len(), 5);
    }

    /// A backend that streams 100-byte SSE chunks without end, counting those pulled.
    struct EndlessStream(Arc<std::sync::atomic::AtomicU64>);

    impl Backend for EndlessStream {
        fn send(&self, _: BackendRequest) -> crate::backend::BackendFuture {
            let pulled = Arc::clone(&self.0);
            let body = futures_util::stream::repeat_with(move || {
                pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Bytes::from(vec![b'x'; 100]))
            });
            Box::pin(async move {
                Ok(crate::backend::BackendResponse {
                    status: 200,
                    headers: [("content-type", "text/event-stream")]
                        .into_iter()
                        .collect(),
                    body: Box::pin(body),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_streamed_body_is_read_only_up_to_the_allowance() {
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let backend = EndlessStream(Arc::clone(&pulled));
        let mut frame = request_for("/v1/chat/completions");
        frame.is_streaming = true;
        let (reports, mut inbox) = mpsc::unbounded_channel();
        let per_chunk = chunk_cost(100);
        let (allowance, allowed) = watch::channel(10 * per_chunk);
        let call = tokio::spawn(async move {
            let (request, frame) = on_link(&frame);
            call_backend(&backend, (&request, frame), 1024, &reports, allowed).await
        });
        let mut chunks = 0;
        let mut take = async |until: u64| {
            while chunks < until {
                match inbox.recv().await {
                    Some(SessionInput::BackendChunk { .. }) => chunks += 1,
                    _ => panic!("only chunks are reported"),
                }
            }
            // Nothing further comes while the allowance stands.
            let more = tokio::time::timeout(Duration::from_millis(100), inbox.recv()).await;
            assert!(more.is_err(), "read past the allowance");
        };
        take(10).await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 10);
        // Any growth lets it read on; a cost part-way into a chunk allows that chunk.
        allowance.send_replace(15 * per_chunk + 1);
        take(16).await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 16);
        call.abort();
    }

    #[test]
    fn token_counts_come_from_openai_and_anthropic_usage() {
        let openai = br#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        assert_eq!(
            token_counts(&json(), openai),
            Some(TokenCounts {
                prompt_tokens: Some(3),
                completion_tokens: Some(5),
                total_tokens: Some(8)
            })
        );
        let anthropic = br#"{"type":"message","usage":{"input_tokens":4,"output_tokens":6}}"#;
        assert_eq!(
            token_counts(&json(), anthropic),
            Some(TokenCounts {
                prompt_tokens: Some(4),
                completion_tokens: Some(6),
                total_tokens: Some(10)
            })
        );
        assert_eq!(token_counts(&json(), b"{}"), None);
        assert_eq!(token_counts(&Headers::new(), openai), None);
    }
}
