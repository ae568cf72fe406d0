//! The inference routes, in one table: the router, the stream check and the metric labels all read it.

use crate::error::ApiFlavor;

/// One inference route: its path, the API it speaks, and whether it can stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InferenceRoute {
    /// The path, also the backend path its requests go to and the `route`
    /// label of its metrics and log lines, whichever of its paths a client called.
    pub(crate) path: &'static str,
    /// The API it speaks, and so the shape of its errors.
    pub(crate) flavor: ApiFlavor,
    /// Whether a request may ask for a streamed answer (`"stream": true`).
    pub(crate) streams: bool,
}

/// The prefix every path a worker or backend sees starts with.
const VERSION_PREFIX: &str = "/v1";

impl InferenceRoute {
    /// The path without `/v1` (`/chat/completions`), which llama-server,
    /// LiteLLM and the clients written for them also call; it is served as
    /// [`InferenceRoute::path`], so workers and backends see only `/v1` paths.
    pub(crate) fn unprefixed(&self) -> &'static str {
        unprefixed(self.path).unwrap_or(self.path)
    }
}

/// `path` without its `/v1` prefix, if it has one.
pub(crate) fn unprefixed(path: &'static str) -> Option<&'static str> {
    path.strip_prefix(VERSION_PREFIX)
}

/// Every inference route the relay serves, each routed by its body's `model`.
pub(crate) const INFERENCE_ROUTES: [InferenceRoute; 7] = [
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
    // The token counters: a model's tokenizer answers them, so they go where the model is.
    InferenceRoute {
        path: "/v1/messages/count_tokens",
        flavor: ApiFlavor::Anthropic,
        streams: false,
    },
    InferenceRoute {
        path: "/v1/responses/input_tokens",
        flavor: ApiFlavor::OpenAi,
        streams: false,
    },
];

/// The API a path (of any route, or of none) speaks: Anthropic's for
/// `/v1/messages` and everything under it (with or without `/v1`), else OpenAI's.
pub(crate) fn flavor_of(path: &str) -> ApiFlavor {
    let path = path.strip_prefix(VERSION_PREFIX).unwrap_or(path);
    if path == "/messages" || path.starts_with("/messages/") {
        ApiFlavor::Anthropic
    } else {
        ApiFlavor::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_an_unprefixed_form_and_speaks_the_api_of_its_path() {
        for route in INFERENCE_ROUTES {
            assert_eq!(format!("/v1{}", route.unprefixed()), route.path);
            assert_eq!(flavor_of(route.path), route.flavor, "{}", route.path);
            assert_eq!(
                flavor_of(route.unprefixed()),
                route.flavor,
                "{}",
                route.path
            );
        }
        assert_eq!(flavor_of("/v1/messages/batches"), ApiFlavor::Anthropic);
        assert_eq!(flavor_of("/v1/messagesx"), ApiFlavor::OpenAi);
        assert_eq!(flavor_of("/v1/models"), ApiFlavor::OpenAi);
    }
}
