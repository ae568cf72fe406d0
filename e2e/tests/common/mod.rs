//! What every end-to-end test file shares: the test kit, and stories run over each link.

#![allow(dead_code, unreachable_pub)]

pub use modelrelay_testkit::*;

pub mod checksum;
pub mod fake_v1_relay;
pub mod keys;
pub mod memory_link;
pub mod queue;
pub mod raw_worker;
pub mod scenarios;

/// A client's receive buffer small enough that the kernel cannot take a whole
/// answer for a client that does not read.
pub const SMALL_RECEIVE_BUFFER: u32 = 16 * 1024;

/// Sends `body` as a chat completion to `addr` on a new raw connection with a
/// [`SMALL_RECEIVE_BUFFER`]; the caller decides whether and how to read.
pub async fn post_raw_chat(addr: std::net::SocketAddr, body: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_RECEIVE_BUFFER).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // One write, as a client that has its whole request at hand sends it.
    let request = [head.as_bytes(), body.as_bytes()].concat();
    client.write_all(&request).await.unwrap();
    client
}
