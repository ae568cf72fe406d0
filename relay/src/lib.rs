//! The ModelRelay server: one OpenAI- and Anthropic-compatible endpoint in front
//! of workers that connect out to it.
//!
//! Clients call `/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
//! `/v1/messages`, `/v1/embeddings`, the token counters and `/v1/models`
//! (each also without `/v1`); workers connect to
//! `/v1/worker/connect` on the same port. One task, the hub, owns the core
//! `Relay`; handlers and links talk to it over channels.
//!
//! The code is laid out by who is on the other end:
//! - `clients/`: the inference routes (one table), the API-key gate, CORS, `/v1/models`, `/health`;
//! - `workers/`: admission, the WebSocket and QUIC acceptors, the link task;
//! - `operator/`: login and sessions, the admin API, the pages, `/metrics`;
//! - `hub/`: the task that drives the core, its open requests and the response queues.
//!
//! Shared by all: `app` (configuration and serving), `http` (the HTTP/1 loop),
//! `request_id` (every answer's id), `auth`, `keys`, `relays` (this relay's
//! row in the list of relays sharing its database), `error` and `codes`.

mod app;
pub mod auth;
mod body_deadline;
mod clients;
mod codes;
mod connections;
pub mod downloads;
pub mod error;
mod exit_writer;
mod http;
mod hub;
pub mod keys;
mod log_budget;
mod operator;
pub mod relays;
mod request_id;
mod usage;
mod workers;
mod write_progress;

pub use app::{RunningServer, ServerConfig, serve};
pub use auth::{AdminToken, WorkerSecrets};
pub use clients::{ANY_ORIGIN, CorsError, CorsOrigins};
pub use operator::CSRF_HEADER;
pub use request_id::REQUEST_ID_HEADER;
pub use workers::quic;
