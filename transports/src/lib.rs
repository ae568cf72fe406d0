//! Links that carry ModelRelay protocol frames between the server and its workers.
//!
//! A link moves whole protocol messages: the reading half decodes frames into
//! [`modelrelay_core::wire`] messages, the writing half encodes them. The
//! WebSocket link (feature `ws`) is generic over the byte stream, so the same
//! code runs over real TCP, TLS, or a simulated network.

#[cfg(feature = "ws")]
pub mod ws;

/// Standard WebSocket close codes the relay uses.
pub mod close_code {
    /// The link ended normally (a drained worker).
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (shutdown, heartbeat loss).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer is not allowed (wrong secret, unknown provider).
    pub const POLICY_VIOLATION: u16 = 1008;
}
