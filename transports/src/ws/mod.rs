//! The WebSocket link: an HTTP upgrade on the relay's own port, frames as WebSocket messages.
//!
//! v1 travels as JSON text messages, v2 as binary messages; a worker asks for
//! v2 with the WebSocket subprotocol [`V2_WEBSOCKET_SUBPROTOCOL`].

mod budget;
pub mod client;
mod link;
pub mod upgrade;

pub use budget::{BudgetExceeded, PreRegisterBudget};
pub use link::{WsReader, WsWriter, split, split_limited};
pub use modelrelay_core::wire::V2_WEBSOCKET_SUBPROTOCOL;
pub use tokio_tungstenite::WebSocketStream;
pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use modelrelay_core::wire::FrameLimits;

/// WebSocket settings for a link with these frame limits.
pub fn config(limits: FrameLimits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        // Frames collect in the buffer and go out when the writer flushes (once its
        // queue is empty), so a burst of chunks shares one write; 0 would write each
        // frame at once.
        .write_buffer_size(64 * 1024)
}
