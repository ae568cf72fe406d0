//! Sans-IO core of ModelRelay: the wire protocol and the state machines that decide
//! everything the relay and its workers do.
//!
//! Nothing here touches a socket, a clock, a runtime or a global random number
//! generator: time comes in as an argument, randomness from an injected seed.
//! Drivers feed events in with `handle`, carry out what `poll_output` asks for,
//! and call `handle_timeout` when `poll_timeout` says so.

pub mod backoff;
pub mod ids;
pub mod relay;
pub mod session;
pub mod wire;

pub use ids::{
    DEFAULT_PROVIDER, LinkId, ModelName, ProviderId, RequestId, WireRequestId, WorkerId,
};
