//! The machine-readable error codes the relay answers with, each named once.

/// The relay is shutting down (or its hub has stopped).
pub(crate) const SHUTTING_DOWN: &str = "shutting_down";
/// The API-key database is missing or failed.
pub(crate) const KEY_STORE_UNAVAILABLE: &str = "key_store_unavailable";
/// A request body over its limit.
pub(crate) const REQUEST_TOO_LARGE: &str = "request_too_large";
/// A request body that did not arrive within `--body-read-timeout`.
pub(crate) const BODY_READ_TIMEOUT: &str = "body_read_timeout";
/// The request bodies held in memory leave no room for another (`--max-buffered-request-bytes`).
pub(crate) const SERVER_BUSY: &str = "server_busy";
/// The relay holds `--max-connections` connections.
pub(crate) const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
/// One address holds `--max-connections-per-address` connections.
pub(crate) const TOO_MANY_CONNECTIONS_FROM_ADDRESS: &str = "too_many_connections_from_address";
/// A request body that cannot be read or is not UTF-8.
pub(crate) const INVALID_BODY: &str = "invalid_body";
/// A request body that is not the JSON expected.
pub(crate) const INVALID_JSON: &str = "invalid_json";
/// A `model` that is not a usable string.
pub(crate) const INVALID_MODEL: &str = "invalid_model";
/// A `stream` that is not a boolean.
pub(crate) const INVALID_STREAM: &str = "invalid_stream";
/// A request without `model`.
pub(crate) const MISSING_MODEL: &str = "missing_model";
/// No route for the method and path.
pub(crate) const NOT_FOUND: &str = "not_found";
/// A download whose file changed since the relay read it (`--downloads-dir`).
pub(crate) const DOWNLOAD_CHANGED: &str = "download_changed";
/// A client route called with a method it does not take.
pub(crate) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// A client route called without an API key.
pub(crate) const MISSING_API_KEY: &str = "missing_api_key";
/// An unknown or revoked API key.
pub(crate) const INVALID_API_KEY: &str = "invalid_api_key";
/// Too many failed authentications from one address.
pub(crate) const AUTH_COOLDOWN: &str = "auth_cooldown";
/// A worker connect request without the worker secret, or with a wrong one.
pub(crate) const INVALID_WORKER_SECRET: &str = "invalid_worker_secret";
/// A worker connect request for a provider this relay does not serve.
pub(crate) const UNKNOWN_PROVIDER: &str = "unknown_provider";
/// A worker connect request that is not a WebSocket upgrade.
pub(crate) const WEBSOCKET_REQUIRED: &str = "websocket_required";
/// The admin API is off (no admin token configured).
pub(crate) const ADMIN_DISABLED: &str = "admin_disabled";
/// A missing or wrong admin token.
pub(crate) const INVALID_ADMIN_TOKEN: &str = "invalid_admin_token";
/// A dashboard-session write without the CSRF header.
pub(crate) const CSRF_HEADER_MISSING: &str = "csrf_header_missing";
/// A dashboard login posted from another site.
pub(crate) const CROSS_SITE_LOGIN: &str = "cross_site_login";
/// A worker id that is not a number.
pub(crate) const INVALID_WORKER_ID: &str = "invalid_worker_id";
/// No connected worker with that id.
pub(crate) const WORKER_NOT_FOUND: &str = "worker_not_found";
/// A key id that is not a number.
pub(crate) const INVALID_KEY_ID: &str = "invalid_key_id";
/// No API key with that id.
pub(crate) const KEY_NOT_FOUND: &str = "key_not_found";
/// A key name the store refuses.
pub(crate) const INVALID_KEY_NAME: &str = "invalid_key_name";
/// A `days` that is not a whole number (`/admin/usage`).
pub(crate) const INVALID_DAYS: &str = "invalid_days";
/// A request frame that could not be sent on its worker's link.
pub(crate) const REQUEST_UNDELIVERABLE: &str = "request_undeliverable";
/// No worker serves the model.
pub(crate) const MODEL_NOT_FOUND: &str = "model_not_found";
/// The queue is full.
pub(crate) const QUEUE_FULL: &str = "queue_full";
/// No worker became available in time.
pub(crate) const QUEUE_TIMEOUT: &str = "queue_timeout";
/// The request ran past its time limit.
pub(crate) const REQUEST_TIMEOUT: &str = "request_timeout";
/// The request was requeued as often as allowed.
pub(crate) const REQUEUE_EXHAUSTED: &str = "requeue_exhausted";
/// No worker has room for the request.
pub(crate) const NO_CAPACITY: &str = "no_capacity";
/// The worker running the request went away.
pub(crate) const WORKER_LOST: &str = "worker_lost";
/// The one worker a request was pinned to cannot take it.
pub(crate) const WORKER_UNAVAILABLE: &str = "worker_unavailable";
/// The worker reported an error.
pub(crate) const WORKER_ERROR: &str = "worker_error";
/// The worker's stream grew past its limit.
pub(crate) const STREAM_TOO_LARGE: &str = "stream_too_large";
/// The client read its stream too slowly.
pub(crate) const CLIENT_TOO_SLOW: &str = "client_too_slow";
