//! An HTTP/1 client for tests, with whole and piece-by-piece bodies.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP/1 client with connection reuse and TCP_NODELAY.
#[derive(Clone)]
pub struct Http(HyperClient<HttpConnector, Full<Bytes>>);

/// A response read whole.
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response whose body is read piece by piece.
pub struct Streaming {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, not read yet.
    pub body: Incoming,
}

impl Streaming {
    /// The next piece of the body, or `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("a chunk in time")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    /// The rest of the body.
    pub async fn rest(mut self) -> Bytes {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            all.extend_from_slice(&chunk);
        }
        Bytes::from(all)
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A new client.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self(HyperClient::builder(TokioExecutor::new()).build(connector))
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap()
    }

    /// Sends a request and returns as soon as its head arrives (30 s at most).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Streaming {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.0.request(self.request(method, url, body, headers)),
        )
        .await
        .expect("an answer in time")
        .expect("the request goes through");
        let (parts, body) = response.into_parts();
        Streaming {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// POSTs JSON `body` and reads the whole answer.
    pub async fn post(&self, url: &str, body: &str) -> Reply {
        self.post_with(url, body, &[("content-type", "application/json")])
            .await
    }

    /// POSTs `body` with `headers` and reads the whole answer.
    pub async fn post_with(&self, url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::POST, url, body, headers).await
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let streaming = self.send(method, url, body, headers).await;
        let (status, headers) = (streaming.status, streaming.headers.clone());
        Reply {
            status,
            headers,
            body: streaming.rest().await,
        }
    }

    /// POSTs raw JSON bytes and reads the whole answer.
    pub async fn post_bytes(&self, url: &str, body: &'static [u8]) -> Reply {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let response = self.0.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let streaming = Streaming {
            status: parts.status,
            headers: parts.headers.clone(),
            body,
        };
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: streaming.rest().await,
        }
    }

    /// GETs `url` and reads the whole answer.
    pub async fn get(&self, url: &str) -> Reply {
        self.call(Method::GET, url, "", &[]).await
    }
}

/// Opens the stream `body` asks for at `url`, reads `chunks` pieces of it, and leaves.
pub async fn leave_after(http: &Http, url: &str, body: &str, chunks: usize) {
    let mut stream = http.send(Method::POST, url, body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    for _ in 0..chunks {
        stream.next_chunk().await.expect("a chunk before leaving");
    }
}

/// The SSE `data:` payloads of a stream body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}
