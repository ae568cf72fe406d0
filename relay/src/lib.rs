//! The ModelRelay server: one OpenAI- and Anthropic-compatible endpoint in front
//! of workers that connect out to it.
//!
//! Clients call `/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
//! `/v1/messages`, `/v1/embeddings` and `/v1/models`; workers connect to
//! `/v1/worker/connect` on the same port. One task, the hub, owns the core
//! `Relay`; handlers and links talk to it over channels.

mod admin;
mod api;
mod app;
pub mod auth;
mod codes;
pub mod error;
mod http;
mod hub;
pub mod keys;
mod links;
mod metrics;
pub mod quic;
mod response_queue;
mod sse;

pub use admin::CSRF_HEADER;
pub use api::REQUEST_ID_HEADER;
pub use app::{RunningServer, ServerConfig, serve};
pub use auth::AdminToken;
