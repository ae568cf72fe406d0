//! quinn on turmoil's simulated UDP: the one adapter QUIC needs to run in the simulation.
//!
//! quinn's tokio runtime already follows tokio's (simulated) clock; what it
//! cannot use is turmoil's UDP socket, so [`SimUdpSocket`] presents it as a
//! quinn socket. Reordering comes from turmoil's random latency; datagram loss
//! from [`PacketLoss`], which a test sets per host: independent loss at a seeded
//! rate, or exactly the next few datagrams, for measurements.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use turmoil::net::UdpSocket;

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// turmoil's UDP socket as quinn's.
pub struct SimUdpSocket {
    socket: Arc<UdpSocket>,
    /// The pending wait for the socket to become readable, kept across polls.
    readable: Mutex<Option<Readable>>,
    /// Which outgoing datagrams never reach the network.
    loss: PacketLoss,
}

/// The datagrams a host's QUIC socket loses on their way out, set by a test.
#[derive(Clone, Debug, Default)]
pub struct PacketLoss(Arc<Mutex<LossState>>);

#[derive(Debug, Default)]
struct LossState {
    /// Lose this many more datagrams of at least `min_len` bytes, whatever the rate.
    drop_next: u32,
    min_len: usize,
    /// Independent loss: each datagram is lost with this probability (parts per million).
    rate_ppm: u32,
    /// State of the seeded generator that decides independent loss (splitmix64).
    rng: u64,
    /// Datagrams lost so far.
    dropped: u64,
    /// Datagrams sent so far (lost ones included).
    sent: u64,
}

impl PacketLoss {
    /// Loses each datagram with probability `rate`, decided by a generator seeded with `seed`.
    pub fn set_rate(&self, rate: f64, seed: u64) {
        let mut state = self.0.lock().expect("loss lock");
        state.rate_ppm = (rate.clamp(0.0, 1.0) * 1e6) as u32;
        state.rng = seed;
    }

    /// Loses the next `count` datagrams of at least `min_len` bytes (ones that carry data).
    pub fn drop_next(&self, count: u32, min_len: usize) {
        let mut state = self.0.lock().expect("loss lock");
        state.drop_next = count;
        state.min_len = min_len;
    }

    /// How many datagrams were lost, and how many were sent in all.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.0.lock().expect("loss lock");
        (state.dropped, state.sent)
    }

    fn loses(&self, len: usize) -> bool {
        let mut state = self.0.lock().expect("loss lock");
        state.sent += 1;
        let lost = if state.drop_next > 0 && len >= state.min_len {
            state.drop_next -= 1;
            true
        } else if state.rate_ppm > 0 {
            (splitmix64(&mut state.rng) % 1_000_000) < u64::from(state.rate_ppm)
        } else {
            false
        };
        state.dropped += u64::from(lost);
        lost
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl fmt::Debug for SimUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdpSocket").finish_non_exhaustive()
    }
}

/// turmoil never refuses a send for lack of buffer space.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.loss.loses(transmit.contents.len()) {
            return Ok(()); // gone, as on a lossy network: the sender cannot tell
        }
        self.socket
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.try_recv_from(&mut bufs[0]) {
                Ok((len, addr)) => {
                    meta[0] = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let mut slot = self.readable.lock().expect("readable lock");
                    let wait = slot.get_or_insert_with(|| {
                        let socket = Arc::clone(&self.socket);
                        Box::pin(async move { socket.readable().await })
                    });
                    match wait.as_mut().poll(cx) {
                        Poll::Ready(_) => {
                            *slot = None;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// A quinn endpoint on a simulated UDP socket bound to `port` (0: any), seeded for
/// replay, losing what `loss` says.
pub async fn endpoint(
    port: u16,
    mut config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    seed: u64,
    loss: PacketLoss,
) -> io::Result<quinn::Endpoint> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).await?;
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    config.rng_seed(Some(bytes));
    quinn::Endpoint::new_with_abstract_socket(
        config,
        server,
        Arc::new(SimUdpSocket {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
            loss,
        }),
        Arc::new(quinn::TokioRuntime),
    )
}

/// The simulated relay's certificate: made once per test process, so that runs of
/// one seed see the same handshake sizes.
pub fn relay_identity() -> &'static (Vec<u8>, Vec<u8>) {
    static IDENTITY: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let generated =
            rcgen::generate_simple_self_signed(vec!["relay".to_owned()]).expect("a certificate");
        (
            generated.cert.der().to_vec(),
            generated.signing_key.serialize_der(),
        )
    })
}
