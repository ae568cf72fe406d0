//! The inference routes, in one table: the router, the stream check and the metric labels all read it.

use crate::error::ApiFlavor;

/// One inference route: its path, the API it speaks, and whether it can stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InferenceRoute {
    /// The path, also the `route` label of its metrics and log lines.
    pub(crate) path: &'static str,
    /// The API it speaks, and so the shape of its errors.
    pub(crate) flavor: ApiFlavor,
    /// Whether a request may ask for a streamed answer (`"stream": true`).
    pub(crate) streams: bool,
}

/// Every inference route the relay serves.
pub(crate) const INFERENCE_ROUTES: [InferenceRoute; 5] = [
    InferenceRoute {
        path: "/v1/chat/completions",
        flavor: ApiFlavor::OpenAi,
        streams: true,
    },
    InferenceRoute {
        path: "/v1/completions",
        flavor: ApiFlavor::OpenAi,
        streams: true,
    },
    InferenceRoute {
        path: "/v1/responses",
        flavor: ApiFlavor::OpenAi,
        streams: true,
    },
    InferenceRoute {
        path: "/v1/embeddings",
        flavor: ApiFlavor::OpenAi,
        streams: false,
    },
    InferenceRoute {
        path: "/v1/messages",
        flavor: ApiFlavor::Anthropic,
        streams: true,
    },
];
