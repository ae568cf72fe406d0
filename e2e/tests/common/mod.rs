//! What every end-to-end test file shares: the test kit, and stories run over each link.

#![allow(dead_code, unreachable_pub)]

pub use modelrelay_testkit::*;

pub mod fake_v1_relay;
pub mod raw_worker;
pub mod scenarios;
