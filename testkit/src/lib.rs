//! ModelRelay's test kit: a simulated model server, and the relay, workers and
//! backends started in-process on loopback, for tests, the simulation, the
//! benchmarks and the server's `--demo`.
//!
//! Everything binds 127.0.0.1 on ports the OS picks. Helpers panic with a
//! clear message when the world they build does not come up: they are for
//! tests, where a panic is the failure report.

pub mod backend;
pub mod client;
pub mod postgres;
pub mod relay;
pub mod simulated_backend;
pub mod skip;
pub mod stack;
pub mod wait;
pub mod worker;

pub use backend::{Backend, backend, backend_with};
pub use client::{Http, Reply, Streaming, leave_after, sse_data};
pub use relay::{Link, SECRET, relay, relay_over, relay_with_quic, world_over};
pub use wait::{wait_for_model, wait_for_workers, wait_for_workers_at};
pub use worker::{Worker, WorkerSpec};
