//! The QUIC link on its own, over loopback: both halves, no relay or worker logic.

#![cfg(feature = "quic")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use modelrelay_core::wire::{
    Cancel, CancelReason, FrameLimits, Headers, INITIAL_WINDOW, LinkFlow, RequestFrame,
    ResponseChunk, ResponseComplete, ServerMessage, WindowUpdate, WorkerError, WorkerMessage,
};
use modelrelay_core::{ModelName, WireRequestId};
use modelrelay_transports::quic::{self, Hello, QuicReader};
use modelrelay_transports::tls::{RelayIdentity, Trust, parse_fingerprint};
use modelrelay_transports::{LinkError, Outgoing, ReadLimit};
use tokio::sync::mpsc;

type Queue<M> = mpsc::Sender<Outgoing<M>>;

/// Room in each writer's queue: more than any test here puts in it at once.
const QUEUE: usize = 64;

/// Both ends of one link: the relay's reader and queue, the worker's reader and queue.
struct Link {
    relay: QuicReader<WorkerMessage>,
    to_worker: Queue<ServerMessage>,
    worker: QuicReader<ServerMessage>,
    to_relay: Queue<WorkerMessage>,
    /// What the worker's writer reported written, in order.
    worker_wrote: mpsc::UnboundedReceiver<WorkerMessage>,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

fn identity() -> RelayIdentity {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    RelayIdentity::from_der(
        generated.cert.der().to_vec(),
        generated.signing_key.serialize_der(),
    )
}

async fn link() -> Link {
    link_with(|_, _| None).await
}

/// A link whose worker writer hands what it cannot send to `unsendable`.
async fn link_with(
    unsendable: impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage> + Send + 'static,
) -> Link {
    let identity = identity();
    let server_config = quic::server_config(&identity, quic::relay_transport()).unwrap();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let trust = Trust::Pinned(parse_fingerprint(&identity.fingerprint()).unwrap());
    let hello = Hello {
        secret: "s".into(),
        provider: "local".into(),
    };
    let limits = FrameLimits::default();
    let accepting = {
        let server = server.clone();
        tokio::spawn(async move {
            let incoming = server.accept().await.unwrap();
            let arrival = quic::accept(incoming).await.unwrap();
            arrival.into_link(limits, ReadLimit::fixed(limits), LinkFlow::Windowed)
        })
    };
    let (worker, worker_writer) = quic::connect(
        &client,
        quic::client_config(&trust).unwrap(),
        server.local_addr().unwrap(),
        "localhost",
        &hello,
        limits,
    )
    .await
    .unwrap();
    let (relay, relay_writer) = accepting.await.unwrap();
    let (to_worker, relay_queue) = mpsc::channel(QUEUE);
    let (to_relay, worker_queue) = mpsc::channel(QUEUE);
    let (wrote, worker_wrote) = mpsc::unbounded_channel();
    tokio::spawn(relay_writer.run(relay_queue, |_, _| None, |_: &ServerMessage| {}));
    tokio::spawn(
        worker_writer.run(worker_queue, unsendable, move |message: &WorkerMessage| {
            let _ = wrote.send(message.clone());
        }),
    );
    Link {
        relay,
        to_worker,
        worker,
        to_relay,
        worker_wrote,
        _endpoints: (server, client),
    }
}

fn request(id: u64) -> ServerMessage {
    ServerMessage::Request(Arc::new(RequestFrame {
        request_id: WireRequestId::Number(id),
        model: ModelName::new("m"),
        endpoint_path: "/v1/chat/completions".into(),
        is_streaming: true,
        body: Bytes::from_static(b"{}"),
        headers: Headers::new(),
    }))
}

fn complete(id: u64, body: Bytes) -> WorkerMessage {
    WorkerMessage::ResponseComplete(ResponseComplete {
        request_id: WireRequestId::Number(id),
        status_code: 200,
        headers: Headers::new(),
        body,
        token_counts: None,
    })
}

async fn next<M>(reader: &mut QuicReader<M>) -> Option<Result<M, LinkError>> {
    tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("a message in time")
}

#[tokio::test]
async fn a_cancel_reaches_the_worker_with_its_reason() {
    let mut link = link().await;
    link.to_worker
        .try_send(Outgoing::Message(request(1)))
        .unwrap();
    assert!(matches!(
        next(&mut link.worker).await,
        Some(Ok(ServerMessage::Request(_)))
    ));
    let cancel = Cancel {
        request_id: WireRequestId::Number(1),
        reason: CancelReason::Timeout,
    };
    link.to_worker
        .try_send(Outgoing::Message(ServerMessage::Cancel(cancel)))
        .unwrap();
    // On the control stream and as the stream's reset: either way, the same reason.
    for _ in 0..2 {
        match next(&mut link.worker).await {
            Some(Ok(ServerMessage::Cancel(cancel))) => {
                assert_eq!(cancel.reason, CancelReason::Timeout)
            }
            other => panic!("expected a cancel, got {other:?}"),
        }
    }
}

/// Sends request `id`, has the worker refuse it, and sends it again (a new stream).
async fn refused_then_sent_again(link: &mut Link, id: u64) {
    for attempt in 0..2 {
        link.to_worker
            .try_send(Outgoing::Message(request(id)))
            .unwrap();
        assert!(matches!(
            next(&mut link.worker).await,
            Some(Ok(ServerMessage::Request(_)))
        ));
        if attempt == 1 {
            break;
        }
        let refusal = WorkerMessage::Error(WorkerError {
            request_id: Some(WireRequestId::Number(id)),
            code: "worker_at_capacity".into(),
            message: "busy".into(),
        });
        link.to_relay.try_send(Outgoing::Message(refusal)).unwrap();
        assert!(matches!(
            next(&mut link.relay).await,
            Some(Ok(WorkerMessage::Error(_)))
        ));
    }
    // Time for the first stream's end to reach both writers.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_request_refused_and_sent_again_on_a_new_stream_is_answered_there() {
    let mut link = link().await;
    // The first stream's end must not take the second one down with it: the
    // answer goes out on the new stream...
    refused_then_sent_again(&mut link, 7).await;
    let chunk = WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: WireRequestId::Number(7),
        chunk: Bytes::from_static(b"data: hi\n\n"),
    });
    link.to_relay.try_send(Outgoing::Message(chunk)).unwrap();
    link.to_relay
        .try_send(Outgoing::Message(complete(7, Bytes::new())))
        .unwrap();
    assert!(matches!(
        next(&mut link.relay).await,
        Some(Ok(WorkerMessage::ResponseChunk(_)))
    ));
    assert!(matches!(
        next(&mut link.relay).await,
        Some(Ok(WorkerMessage::ResponseComplete(_)))
    ));
    // ...and a cancel resets the new stream.
    refused_then_sent_again(&mut link, 9).await;
    let cancel = Cancel {
        request_id: WireRequestId::Number(9),
        reason: CancelReason::ServerShutdown,
    };
    link.to_worker
        .try_send(Outgoing::Message(ServerMessage::Cancel(cancel)))
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            next(&mut link.worker).await,
            Some(Ok(ServerMessage::Cancel(Cancel {
                reason: CancelReason::ServerShutdown,
                ..
            })))
        ));
    }
}

/// A worker that closes right after its last answer: the relay's reader still
/// hands that answer over before it reports the end. Run many times, with the
/// other core busy, because the loss it guards against was a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_answer_before_a_close_is_never_lost() {
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hog = {
        let busy = Arc::clone(&busy);
        std::thread::spawn(move || {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    for round in 0..40 {
        let mut link = link().await;
        link.to_worker
            .try_send(Outgoing::Message(request(1)))
            .unwrap();
        assert!(matches!(
            next(&mut link.worker).await,
            Some(Ok(ServerMessage::Request(_)))
        ));
        let body = Bytes::from(vec![b'x'; 256 * 1024]);
        link.to_relay
            .try_send(Outgoing::Message(complete(1, body)))
            .unwrap();
        link.to_relay
            .try_send(Outgoing::Close {
                code: 1000,
                reason: String::new(),
            })
            .unwrap();
        match next(&mut link.relay).await {
            Some(Ok(WorkerMessage::ResponseComplete(done))) => {
                assert_eq!(done.body.len(), 256 * 1024)
            }
            other => panic!("round {round}: the answer was lost: {other:?}"),
        }
        assert!(next(&mut link.relay).await.is_none());
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    hog.join().unwrap();
}

#[tokio::test]
async fn the_worker_writer_reports_each_message_once_written_or_dropped() {
    let mut link = link().await;
    link.to_worker
        .try_send(Outgoing::Message(request(1)))
        .unwrap();
    assert!(matches!(
        next(&mut link.worker).await,
        Some(Ok(ServerMessage::Request(_)))
    ));
    let chunk = |id: u64| {
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: WireRequestId::Number(id),
            chunk: Bytes::from_static(b"data: hi\n\n"),
        })
    };
    // Request 1's chunk is written on its stream; request 2 has none: dropped.
    for message in [chunk(1), chunk(2), complete(1, Bytes::new())] {
        link.to_relay.try_send(Outgoing::Message(message)).unwrap();
    }
    for _ in 0..2 {
        assert!(matches!(next(&mut link.relay).await, Some(Ok(_))));
    }
    let mut reported = Vec::new();
    while reported.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(5), link.worker_wrote.recv())
            .await
            .expect("reported in time")
            .unwrap();
        reported.push(message);
    }
    reported.sort_by_key(|message| format!("{message:?}"));
    let mut expected = vec![chunk(1), chunk(2), complete(1, Bytes::new())];
    expected.sort_by_key(|message| format!("{message:?}"));
    assert_eq!(reported, expected);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(link.worker_wrote.try_recv().is_err(), "each message once");
}

#[tokio::test]
async fn a_request_stream_whose_queue_overflows_is_reset_and_its_request_alone_fails() {
    let (refused_tx, mut refused) = mpsc::unbounded_channel();
    let mut link = link_with(move |message, error| {
        let _ = refused_tx.send((message, error.to_string()));
        None
    })
    .await;
    for id in [1, 2] {
        link.to_worker
            .try_send(Outgoing::Message(request(id)))
            .unwrap();
        assert!(matches!(
            next(&mut link.worker).await,
            Some(Ok(ServerMessage::Request(_)))
        ));
    }
    let chunk = |id: u64| {
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: WireRequestId::Number(id),
            chunk: Bytes::from(vec![b'x'; 1024]),
        })
    };
    // The relay reads nothing meanwhile: its stream's task stops reading, quinn's
    // stream window fills, then request 1's queue (as pacing would never let it).
    let flood = async {
        for _ in 0..12_000 {
            link.to_relay
                .send(Outgoing::Message(chunk(1)))
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the worker's writer never waits on one stream");
    let (message, error) = tokio::time::timeout(Duration::from_secs(5), refused.recv())
        .await
        .expect("the overflow is reported")
        .unwrap();
    assert_eq!(message, chunk(1));
    assert!(error.contains("full"), "{error}");
    assert!(refused.try_recv().is_err(), "once, for that request alone");
    // Request 2 goes on, on its own stream.
    link.to_relay
        .send(Outgoing::Message(chunk(2)))
        .await
        .unwrap();
    link.to_relay
        .send(Outgoing::Message(complete(2, Bytes::new())))
        .await
        .unwrap();
    let mut request_2 = Vec::new();
    while request_2.len() < 2 {
        match next(&mut link.relay).await {
            Some(Ok(WorkerMessage::ResponseChunk(chunk)))
                if chunk.request_id == WireRequestId::Number(1) => {}
            Some(Ok(message)) => request_2.push(message),
            other => panic!("the link failed: {other:?}"),
        }
    }
    assert_eq!(request_2, [chunk(2), complete(2, Bytes::new())]);
}

fn chunk(id: u64, bytes: usize, fill: u8) -> WorkerMessage {
    WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: WireRequestId::Number(id),
        chunk: Bytes::from(vec![fill; bytes]),
    })
}

/// The relay reads a request's stream only while its answer has window: the
/// first 64 KiB, then what `window_update`s grant. The update never reaches the
/// worker, and another request's stream is not held up meanwhile.
#[tokio::test]
async fn the_relay_reads_a_request_stream_only_within_its_window() {
    const CHUNK: usize = 16 * 1024;
    let mut link = link().await;
    for id in [1, 2] {
        link.to_worker
            .try_send(Outgoing::Message(request(id)))
            .unwrap();
        assert!(matches!(
            next(&mut link.worker).await,
            Some(Ok(ServerMessage::Request(_)))
        ));
    }
    // Ten chunks of 16 KiB for request 1: the first four fill its first window.
    for n in 0..10 {
        link.to_relay
            .send(Outgoing::Message(chunk(1, CHUNK, n)))
            .await
            .unwrap();
    }
    let first = usize::try_from(INITIAL_WINDOW).unwrap() / CHUNK;
    chunks_arrive(&mut link.relay, 0..first).await;
    // Request 1 waits; request 2's answer still arrives.
    link.to_relay
        .send(Outgoing::Message(complete(2, Bytes::from_static(b"done"))))
        .await
        .unwrap();
    match next(&mut link.relay).await {
        Some(Ok(WorkerMessage::ResponseComplete(done))) => {
            assert_eq!(done.request_id, WireRequestId::Number(2))
        }
        other => panic!("request 2 was held up: {other:?}"),
    }
    nothing_more(&mut link.relay, "the relay read past request 1's window").await;
    // Two more chunks' worth of window: exactly two more chunks.
    let update = WindowUpdate {
        request_id: WireRequestId::Number(1),
        max_bytes: INITIAL_WINDOW + 2 * CHUNK as u64,
    };
    link.to_worker
        .try_send(Outgoing::Message(ServerMessage::WindowUpdate(update)))
        .unwrap();
    chunks_arrive(&mut link.relay, first..first + 2).await;
    nothing_more(&mut link.relay, "the relay read past the granted window").await;
    nothing_more(&mut link.worker, "a window_update crossed the link").await;
    // The rest, once granted.
    let update = WindowUpdate {
        request_id: WireRequestId::Number(1),
        max_bytes: 10 * CHUNK as u64,
    };
    link.to_worker
        .try_send(Outgoing::Message(ServerMessage::WindowUpdate(update)))
        .unwrap();
    chunks_arrive(&mut link.relay, first + 2..10).await;
}

/// The chunks numbered `numbers` (each filled with its number) arrive, in order.
async fn chunks_arrive(relay: &mut QuicReader<WorkerMessage>, numbers: std::ops::Range<usize>) {
    for n in numbers {
        match next(relay).await {
            Some(Ok(WorkerMessage::ResponseChunk(c))) => assert_eq!(usize::from(c.chunk[0]), n),
            other => panic!("chunk {n}: {other:?}"),
        }
    }
}

/// Nothing arrives for a while.
async fn nothing_more<M: std::fmt::Debug>(reader: &mut QuicReader<M>, what: &str) {
    let arrived = tokio::time::timeout(Duration::from_millis(300), reader.next()).await;
    assert!(arrived.is_err(), "{what}: {arrived:?}");
}
