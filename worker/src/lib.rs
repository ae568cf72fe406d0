//! The ModelRelay worker: connects out to the relay, registers its backend's
//! models and capacity, and serves the requests the relay sends it.
//!
//! [`driver::run`] drives the core's `WorkerSession` with a [`link::Dialer`]
//! (how to reach the relay) and a [`backend::Backend`] (how to call the model
//! server); both are swappable, so the fault simulation runs this same code
//! over a simulated network.

pub mod backend;
mod backend_call;
pub mod driver;
pub mod endpoint;
pub mod link;
mod link_task;
mod progress;

pub use driver::{ModelSource, WorkerOptions, WorkerStatus, run};
