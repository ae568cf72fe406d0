//! The relay's behavior contract as executable tests.
//!
//! [`model`] is the reference model: the contract of `docs/behavior-contract.md`
//! restated with plain maps and scans. `tests/relay_matches_model.rs` drives the
//! real [`modelrelay_core::relay::Relay`] with random event sequences, and after
//! every step checks that it did exactly what the model predicts and that the
//! contract's invariants hold.

pub mod model;
