//! Deterministic network-fault simulation of the real ModelRelay server and worker.
//!
//! turmoil runs the relay, the workers, simulated backends and clients as
//! hosts on a simulated network with simulated time: a test can crash a host,
//! cut or hold a link, change latency, and replay the very same run from its
//! seed. Nothing here re-implements the relay: the hosts run
//! `modelrelay_relay::serve` and `modelrelay_worker::run` over turmoil's TCP.

pub mod client;
pub mod net;
pub mod quic;
pub mod seeds;
pub mod trace;
pub mod world;
