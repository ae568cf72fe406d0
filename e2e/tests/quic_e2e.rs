//! Workers over QUIC on loopback: the same relay, one stream per request.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use modelrelay_core::wire::FrameLimits;
use modelrelay_transports::LinkReader;
use modelrelay_transports::quic::{self, Hello};
use modelrelay_transports::tls::{Trust, parse_fingerprint};
use serde_json::json;

async fn quic_world() -> (modelrelay_relay::RunningServer, Backend, Worker, Http) {
    world_over(Link::Quic).await
}

#[tokio::test]
async fn a_quic_worker_serves_streams_and_answers_byte_for_byte() {
    let (relay, backend, _worker, http) = quic_world().await;
    for route in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        for stream in [true, false] {
            let body = json!({"model": "m", "stream": stream, "mock": {"tokens": 30}}).to_string();
            let direct = http.post(&format!("{}{route}", backend.url), &body).await;
            let relayed = http.post(&format!("{}{route}", relay.url()), &body).await;
            assert_eq!(
                relayed.status,
                StatusCode::OK,
                "{route}: {}",
                relayed.text()
            );
            assert_eq!(relayed.body, direct.body, "{route} stream={stream}");
        }
    }
}

#[tokio::test]
async fn many_concurrent_streams_share_one_quic_connection() {
    let backend = backend(&["m"]).await;
    let relay = relay_with_quic(|_| {}).await;
    let mut spec = WorkerSpec::quic(&relay, &backend, &["m"]);
    spec.max_concurrent = 32;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 40, "delay_ms": 2}}).to_string();
    let direct = http
        .post(&format!("{}/v1/chat/completions", backend.url), &body)
        .await;
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move { http.post(&url, &body).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, direct.body);
    }
}

#[tokio::test]
async fn a_client_leaving_a_quic_stream_cancels_the_backend_call() {
    let (relay, backend, _worker, http) = quic_world().await;
    let body = json!({"model": "m", "stream": true, "mock": {"tokens": 1000, "delay_ms": 10, "tag": "gone"}}).to_string();
    let url = format!("{}/v1/chat/completions", relay.url());
    leave_after(&http, &url, &body, 1).await;
    assert!(
        backend.saw_cancelled("gone", Duration::from_secs(5)).await,
        "the backend never saw the cancellation"
    );
    // The connection serves on.
    let reply = http
        .post(
            &format!("{}/v1/chat/completions", relay.url()),
            r#"{"model":"m"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_quic_worker_killed_before_the_first_byte_has_its_request_requeued() {
    scenarios::a_worker_killed_before_the_first_byte_has_its_request_requeued(Link::Quic).await;
}

#[tokio::test]
async fn a_draining_quic_worker_finishes_its_stream_while_a_replacement_takes_new_work() {
    scenarios::a_stopping_worker_finishes_while_a_replacement_takes_new_work(Link::Quic).await;
}

/// What a bare link gets: the relay's messages and a writer for the worker's.
type RawLink = (
    quic::QuicReader<modelrelay_core::wire::ServerMessage>,
    quic::WorkerWriter,
);

/// Connects to `relay` over QUIC as a bare link, saying hello with `secret`.
async fn raw_quic(
    relay: &modelrelay_relay::RunningServer,
    secret: &str,
) -> Result<RawLink, quic::ConnectError> {
    let (_, fingerprint) = relay.quic().unwrap();
    let pinned = Trust::Pinned(parse_fingerprint(fingerprint).unwrap());
    raw_quic_trusting(relay, secret, &pinned).await
}

/// Like [`raw_quic`], trusting what `trust` says.
async fn raw_quic_trusting(
    relay: &modelrelay_relay::RunningServer,
    secret: &str,
    trust: &Trust,
) -> Result<RawLink, quic::ConnectError> {
    let (addr, _) = relay.quic().unwrap();
    let config = quic::client_config(trust).unwrap();
    let local = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let hello = Hello {
        secret: secret.into(),
        provider: "local".into(),
    };
    quic::connect(
        &local,
        config,
        addr,
        "localhost",
        &hello,
        FrameLimits::default(),
    )
    .await
}

/// Waits for the relay to close the link; returns its close code.
async fn closed_with(
    reader: &mut quic::QuicReader<modelrelay_core::wire::ServerMessage>,
) -> Option<u16> {
    let next = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .unwrap();
    assert!(next.is_none());
    LinkReader::close_frame(reader).map(|(code, _)| code)
}

#[tokio::test]
async fn a_wrong_secret_over_quic_is_closed_with_policy_violation() {
    let relay = relay_with_quic(|_| {}).await;
    let (mut reader, _writer) = raw_quic(&relay, "wrong").await.unwrap();
    assert_eq!(closed_with(&mut reader).await, Some(1008));
}

#[tokio::test]
async fn repeated_wrong_secrets_over_quic_are_refused_for_a_cooldown() {
    let relay = relay_with_quic(|_| {}).await;
    for _ in 0..5 {
        let (mut reader, _writer) = raw_quic(&relay, "guess").await.unwrap();
        assert_eq!(closed_with(&mut reader).await, Some(1008));
    }
    // Now even the right secret waits out the cooldown, and the worker is told why.
    let error = raw_quic(&relay, SECRET)
        .await
        .err()
        .expect("refused during the cooldown");
    assert!(error.to_string().contains("refused"), "{error}");
}

#[tokio::test]
async fn an_untrusted_relay_certificate_fails_with_what_to_do() {
    let relay = relay_with_quic(|_| {}).await;
    // Trusting no authority at all, as a worker with the wrong --tls-ca would.
    let error = raw_quic_trusting(&relay, SECRET, &Trust::Roots(Vec::new()))
        .await
        .err()
        .expect("the handshake fails");
    assert!(
        error.to_string().contains("--server-cert-sha256"),
        "{error}"
    );
    // A fingerprint of another certificate says so.
    let error = raw_quic_trusting(&relay, SECRET, &Trust::Pinned([7u8; 32]))
        .await
        .err()
        .expect("the handshake fails");
    assert!(error.to_string().contains("not the pinned"), "{error}");
}

#[tokio::test]
async fn cancelled_requests_give_their_quic_streams_back() {
    let backend = backend(&["m"]).await;
    let relay = relay_with_quic(|_| {}).await;
    let mut spec = WorkerSpec::quic(&relay, &backend, &["m"]);
    // Room for only two request streams at a time: a cancelled request whose stream
    // stayed half open would soon leave none.
    spec.quic_streams = Some(2);
    spec.max_concurrent = 2;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    for round in 0..8 {
        let body = json!({"model": "m", "stream": true, "mock": {"tokens": 1000, "delay_ms": 5, "tag": format!("left-{round}")}}).to_string();
        leave_after(&http, &url, &body, 1).await;
        assert!(
            backend
                .saw_cancelled(&format!("left-{round}"), Duration::from_secs(5))
                .await,
            "round {round}: the backend never saw the cancellation"
        );
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        http.post(&url, r#"{"model":"m","mock":{"tokens":3}}"#),
    )
    .await
    .expect("a request after many cancels is served");
    assert_eq!(reply.status, StatusCode::OK);
}

/// A connection that finished its handshake and opened its control stream, but has
/// not said hello yet.
async fn silent_quic(
    relay: &modelrelay_relay::RunningServer,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
    let (addr, fingerprint) = relay.quic().unwrap();
    let trust = Trust::Pinned(parse_fingerprint(fingerprint).unwrap());
    let local = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = local
        .connect_with(quic::client_config(&trust).unwrap(), addr, "localhost")
        .unwrap()
        .await?;
    let (mut send, recv) = connection.open_bi().await?;
    // A stream is only announced with its first byte: send the hello's length prefix.
    send.write_all(&[0]).await.unwrap();
    Ok((connection, send, recv))
}

/// The close code a raw connection ended with.
async fn close_code_of(connection: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test]
async fn connections_held_before_their_hello_cannot_outrun_the_cooldown() {
    let relay = relay_with_quic(|_| {}).await;
    // Four connections wait before their hello; a fifth is not let in.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(silent_quic(&relay).await.unwrap());
    }
    assert!(
        silent_quic(&relay).await.is_err(),
        "a fifth connection before its hello was let in"
    );
    // Five wrong guesses, three of them on waiting connections...
    for (connection, send, _) in waiting.iter_mut().take(3) {
        finish_hello(send, "guess").await;
        assert_eq!(close_code_of(connection).await, Some(1008));
    }
    for _ in 0..2 {
        let (mut reader, _writer) = raw_quic(&relay, "guess").await.unwrap();
        assert_eq!(closed_with(&mut reader).await, Some(1008));
    }
    // ...and the right secret on the last waiting one comes too late: it is refused.
    let (connection, send, _) = &mut waiting[3];
    finish_hello(send, SECRET).await;
    assert_eq!(close_code_of(connection).await, Some(1008));
}

#[tokio::test]
async fn a_hello_larger_than_a_hello_is_cut_off() {
    let relay = relay_with_quic(|_| {}).await;
    let (connection, mut send, _recv) = silent_quic(&relay).await.unwrap();
    // The rest of a length prefix announcing 64 MiB.
    send.write_all(&[4, 0, 0]).await.unwrap();
    send.write_all(&[0u8; 64 * 1024]).await.unwrap();
    assert_eq!(close_code_of(&connection).await, Some(0));
}

/// Completes the hello whose first length byte [`silent_quic`] sent.
async fn finish_hello(send: &mut quinn::SendStream, secret: &str) {
    let hello = Hello {
        secret: secret.into(),
        provider: "local".into(),
    };
    let frame = quic::hello_frame(&hello).unwrap();
    assert_eq!(frame[0], 0, "a hello is shorter than 16 MiB");
    send.write_all(&frame[1..]).await.unwrap();
}

/// A client's QUIC state for one connection to `addr`, driven by hand (no socket).
fn client_connection(
    addr: std::net::SocketAddr,
    trust: &Trust,
) -> (quinn_proto::Endpoint, quinn_proto::Connection) {
    let mut endpoint = quinn_proto::Endpoint::new(
        std::sync::Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let config = quic::client_config(trust).unwrap();
    let now = std::time::Instant::now();
    let (_, connection) = endpoint.connect(now, config, addr, "localhost").unwrap();
    (endpoint, connection)
}

/// The first packet of a QUIC connection to `addr` (a client Initial), as bytes:
/// what anyone can send from a forged source address.
fn initial_packet(addr: std::net::SocketAddr, trust: &Trust) -> Vec<u8> {
    let (_endpoint, mut connection) = client_connection(addr, trust);
    let mut packet = Vec::new();
    let transmit = connection
        .poll_transmit(std::time::Instant::now(), 1, &mut packet)
        .expect("an Initial");
    packet.truncate(transmit.size);
    packet
}

#[tokio::test]
async fn connections_from_unproven_addresses_get_a_retry_and_hold_no_place() {
    let relay = relay_with_quic(|_| {}).await;
    let (addr, fingerprint) = relay.quic().unwrap();
    let trust = Trust::Pinned(parse_fingerprint(fingerprint).unwrap());
    // Twelve handshakes started and never finished, as from a spoofed source:
    // more than the four places one address may hold before its hello.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..12 {
        socket
            .send_to(&initial_packet(addr, &trust), addr)
            .await
            .unwrap();
        let mut answer = [0u8; 2048];
        let (size, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        // A long-header packet of type Retry (RFC 9000, 17.2.5), not the relay's handshake.
        assert!(
            size > 0 && answer[0] & 0xf0 == 0xf0,
            "not a Retry: {:#x}",
            answer[0]
        );
    }
    // A worker from the same address, which follows the Retry, is let in at once.
    let (mut reader, writer) = raw_quic(&relay, SECRET).await.expect("not refused");
    drop(writer);
    assert_ne!(closed_with(&mut reader).await, Some(1008));
}

/// A QUIC client that starts a handshake from its own socket, follows the
/// relay's Retry (proving its address), lets the relay send its half of the
/// handshake, and then never answers: a handshake that never finishes.
struct AbandonedHandshake {
    socket: tokio::net::UdpSocket,
    endpoint: quinn_proto::Endpoint,
    connection: quinn_proto::Connection,
    relay: std::net::SocketAddr,
}

impl AbandonedHandshake {
    async fn start(relay: std::net::SocketAddr, trust: &Trust) -> Self {
        let (endpoint, connection) = client_connection(relay, trust);
        let mut this = Self {
            socket: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            endpoint,
            connection,
            relay,
        };
        // Answer until the relay has begun its half of the handshake (a packet
        // that is not a Retry), then fall silent.
        loop {
            this.send_what_is_due().await;
            let first_byte = this.receive().await;
            if first_byte & 0xf0 != 0xf0 {
                return this;
            }
        }
    }

    async fn send_what_is_due(&mut self) {
        let mut packet = Vec::new();
        while let Some(transmit) =
            self.connection
                .poll_transmit(std::time::Instant::now(), 1, &mut packet)
        {
            self.socket
                .send_to(&packet[..transmit.size], self.relay)
                .await
                .unwrap();
            packet.clear();
        }
    }

    /// Feeds the next datagram from the relay to the connection; its first byte.
    async fn receive(&mut self) -> u8 {
        let mut datagram = [0u8; 2048];
        let (size, from) = tokio::time::timeout(
            Duration::from_secs(30),
            self.socket.recv_from(&mut datagram),
        )
        .await
        .expect("a packet from the relay in time")
        .unwrap();
        let data = bytes::BytesMut::from(&datagram[..size]);
        let mut response = Vec::new();
        let now = std::time::Instant::now();
        if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) =
            self.endpoint
                .handle(now, from, None, None, data, &mut response)
        {
            self.connection.handle_event(event);
        }
        datagram[0]
    }

    /// Reads what the relay sends, answering nothing, until it gives the connection up.
    async fn until_the_relay_gives_up(mut self) {
        loop {
            self.receive().await;
            while let Some(event) = self.connection.poll() {
                if matches!(event, quinn_proto::Event::ConnectionLost { .. }) {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn handshakes_that_never_finish_do_not_count_as_failures() {
    let relay = relay_with_quic(|_| {}).await;
    let (addr, fingerprint) = relay.quic().unwrap();
    let trust = Trust::Pinned(parse_fingerprint(fingerprint).unwrap());
    // Four handshakes (as many as may wait at once) started from this address
    // and never finished: the relay gives each up after its 10 s.
    let mut abandoned = Vec::new();
    for _ in 0..4 {
        abandoned.push(AbandonedHandshake::start(addr, &trust).await);
    }
    for handshake in abandoned {
        handshake.until_the_relay_gives_up().await;
    }
    // Handshakes the worker itself aborts (a certificate it does not trust) do not count either.
    let error = raw_quic_trusting(&relay, SECRET, &Trust::Pinned([7u8; 32]))
        .await
        .err()
        .expect("the handshake fails");
    assert!(error.to_string().contains("not the pinned"), "{error}");
    // One completed handshake with a wrong secret is one failure: five in all
    // would have started a cooldown, but only this one counts.
    let (mut reader, _writer) = raw_quic(&relay, "guess").await.unwrap();
    assert_eq!(closed_with(&mut reader).await, Some(1008));
    let (mut reader, writer) = raw_quic(&relay, SECRET).await.expect("not refused");
    drop(writer);
    assert_ne!(closed_with(&mut reader).await, Some(1008));
}

#[tokio::test]
async fn a_wrong_secret_over_quic_is_refused_with_only_the_hello_read() {
    let relay = relay_with_quic(|_| {}).await;
    let (connection, mut send, _recv) = silent_quic(&relay).await.unwrap();
    finish_hello(&mut send, "wrong").await;
    // Right behind the hello, a frame announcing 1 GiB: never read, so never
    // the reason the link ends.
    send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), 1008);
            assert_eq!(&close.reason[..], b"missing or wrong worker secret");
        }
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test]
async fn a_quic_register_over_the_before_register_limit_closes_the_link_saying_so() {
    use modelrelay_core::wire::{Register, WireVersion, WorkerMessage};
    use modelrelay_transports::{LinkWriter, Outgoing};

    let relay = relay_with_quic(|_| {}).await;
    let (mut reader, writer) = raw_quic(&relay, SECRET).await.unwrap();
    // One message goes through it.
    let (queue, outgoing) = tokio::sync::mpsc::channel(1);
    tokio::spawn(LinkWriter::run(
        writer,
        outgoing,
        |_, _| None,
        |_: &WorkerMessage| {},
    ));
    // More names than any register the relay accepts: past the v2 before-register limit.
    let register = Register {
        worker_name: "w".into(),
        models: (0..300).map(|n| format!("{n:0>256}")).collect(),
        max_concurrent: 1,
        protocol_version: None,
        current_load: None,
    };
    queue
        .try_send(Outgoing::Message(WorkerMessage::Register(register)))
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .unwrap();
    assert!(next.is_none());
    let (code, reason) = LinkReader::close_frame(&reader).expect("a close");
    assert_eq!(code, 1002);
    let limit = FrameLimits::before_register_on(WireVersion::V2).max_frame_bytes;
    assert!(
        reason.contains("before register") && reason.contains(&limit.to_string()),
        "{reason}"
    );
}
