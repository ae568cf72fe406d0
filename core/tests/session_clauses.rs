//! Clause-by-clause tests of the worker session (docs/behavior-contract.md).

use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use modelrelay_core::relay::{MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER};
use modelrelay_core::session::*;
use modelrelay_core::wire::{
    Cancel, CancelReason, FrameLimits, GracefulShutdown, Headers, ModelsRefresh, ModelsUpdate,
    Ping, Pong, REFUSED_AT_CAPACITY, REFUSED_DRAINING, Register, RegisterAck, RequestFrame,
    ResponseChunk, ResponseComplete, ServerMessage, WireVersion, WorkerError, WorkerMessage,
    marked_refusal,
};
use modelrelay_core::wire::{INITIAL_WINDOW, LinkFlow, WindowUpdate};
use modelrelay_core::{LinkId, ModelName, RequestId, WireRequestId};

const SECOND: Duration = Duration::from_secs(1);

/// The harness's one link.
const L0: LinkId = LinkId::new(0);

struct Harness {
    session: WorkerSession,
    now: Instant,
}

fn r(id: u64) -> WireRequestId {
    RequestId::new(id).into()
}

fn ack_frame() -> ServerMessage {
    ServerMessage::RegisterAck(RegisterAck {
        worker_id: "7".into(),
        models: vec![ModelName::new("m")],
        warnings: vec![],
        protocol_version: None,
    })
}

/// Request `id` of the harness's one link, as the backend side names it.
fn k(id: u64) -> LinkRequest {
    LinkRequest::new(L0, r(id))
}

impl Harness {
    fn new(max_concurrent: u32) -> Self {
        Self::with_config(SessionConfig {
            worker_name: "gpu-1".into(),
            models: vec!["m".into()],
            max_concurrent,
            jitter_seed: 42,
            ..SessionConfig::default()
        })
    }

    /// A session with one link (link 0), about to dial it.
    fn with_config(config: SessionConfig) -> Self {
        let mut session = WorkerSession::new(config);
        assert_eq!(session.add_link(), L0);
        Self {
            session,
            now: Instant::now(),
        }
    }

    /// A session with one slot advertising `models`, its first output (the dial) taken.
    fn with_models(models: Vec<String>) -> Self {
        let mut h = Self::with_config(SessionConfig {
            worker_name: "gpu-1".into(),
            models,
            max_concurrent: 1,
            jitter_seed: 42,
            ..SessionConfig::default()
        });
        h.outputs();
        h
    }

    fn handle(&mut self, input: SessionInput) -> Vec<SessionOutput> {
        self.session.handle(self.now, input);
        self.outputs()
    }

    fn outputs(&mut self) -> Vec<SessionOutput> {
        std::iter::from_fn(|| self.session.poll_output()).collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<SessionOutput> {
        let target = self.now + by;
        while let Some(at) = self.session.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.session.handle_timeout(self.now);
        }
        self.now = target;
        self.outputs()
    }

    fn frame(&mut self, message: ServerMessage) -> Vec<SessionOutput> {
        self.frame_on(L0, message)
    }

    fn frame_on(&mut self, link: LinkId, message: ServerMessage) -> Vec<SessionOutput> {
        self.handle(SessionInput::Frame { link, message })
    }

    /// Adds a link and brings it to registered; returns its id and the outputs
    /// of the registration's ack.
    fn add_registered_link(&mut self) -> (LinkId, Vec<SessionOutput>) {
        let link = self.session.add_link();
        assert_eq!(self.outputs(), [SessionOutput::Connect { link }]);
        self.handle(SessionInput::LinkUp {
            link,
            wire: WireVersion::V2,
            flow: LinkFlow::Unwindowed,
            liveness: Liveness::Probed,
        });
        let outputs = self.frame_on(link, ack_frame());
        (link, outputs)
    }

    /// Brings the session to registered, discarding the outputs on the way.
    fn registered(max_concurrent: u32) -> Self {
        let mut h = Self::new(max_concurrent);
        assert_eq!(h.outputs(), [SessionOutput::Connect { link: L0 }]);
        h.handle(SessionInput::LinkUp {
            link: L0,
            wire: WireVersion::V2,
            flow: LinkFlow::Unwindowed,
            liveness: Liveness::Probed,
        });
        h.ack();
        h
    }

    fn ack(&mut self) -> Vec<SessionOutput> {
        self.frame(ack_frame())
    }

    fn request(&mut self, id: u64) -> Vec<SessionOutput> {
        self.request_on(L0, id)
    }

    fn request_on(&mut self, link: LinkId, id: u64) -> Vec<SessionOutput> {
        self.frame_on(
            link,
            ServerMessage::Request(Arc::new(RequestFrame {
                request_id: r(id),
                model: ModelName::new("m"),
                endpoint_path: "/v1/chat/completions".into(),
                is_streaming: true,
                body: Bytes::from_static(b"{}"),
                headers: Headers::new(),
            })),
        )
    }

    fn complete(&mut self, id: u64) -> Vec<SessionOutput> {
        self.handle(SessionInput::BackendComplete {
            request: k(id),
            status_code: 200,
            headers: Headers::new(),
            body: Bytes::new(),
            token_counts: None,
        })
    }
}

fn started(outputs: &[SessionOutput]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::StartRequest { frame, .. } => {
                frame.request_id.as_request_id().map(|id| id.get())
            }
            _ => None,
        })
        .collect()
}

fn aborted(outputs: &[SessionOutput]) -> Vec<(u64, CancelReason)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::AbortRequest { request, reason } => {
                Some((request.id.as_request_id()?.get(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

fn refusals(outputs: &[SessionOutput]) -> Vec<(u64, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Send {
                link: L0,
                message:
                    WorkerMessage::Error(WorkerError {
                        request_id: Some(id),
                        code,
                        ..
                    }),
            } => Some((id.as_request_id()?.get(), code.clone())),
            _ => None,
        })
        .collect()
}

/// The request and code of each failure or refusal sent, in either form: an
/// `error` (v2), or a `response_complete` with an error status and body (v1).
fn ended_in_error(outputs: &[SessionOutput]) -> Vec<(u64, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Send {
                link: L0,
                message: WorkerMessage::ResponseComplete(complete),
            } if complete.status_code >= 500 => {
                let body: serde_json::Value = serde_json::from_slice(&complete.body).ok()?;
                let code = body.pointer("/error/code")?.as_str()?.to_owned();
                Some((complete.request_id.as_request_id()?.get(), code))
            }
            _ => None,
        })
        .chain(refusals(outputs))
        .collect()
}

/// Whether any output sends an `error` frame.
fn sends_error(outputs: &[SessionOutput]) -> bool {
    outputs.iter().any(|o| {
        matches!(
            o,
            SessionOutput::Send {
                link: L0,
                message: WorkerMessage::Error(_)
            }
        )
    })
}

fn reconnect_delay(outputs: &[SessionOutput]) -> Option<Duration> {
    outputs.iter().find_map(|o| match o {
        SessionOutput::Reconnecting { link: L0, after } => Some(*after),
        _ => None,
    })
}

#[test]
fn the_session_dials_at_once_and_registers_when_the_link_is_up() {
    let mut h = Harness::new(3);
    assert_eq!(h.outputs(), [SessionOutput::Connect { link: L0 }]);
    let outputs = h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V1,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::Register(Register {
                worker_name: "gpu-1".into(),
                models: vec!["m".into()],
                max_concurrent: 3,
                protocol_version: Some("2026-04-bridge-v1".into()),
                current_load: Some(0),
            })
        }]
    );
    let outputs = h.ack();
    assert!(
        matches!(&outputs[..], [SessionOutput::Registered { link: L0, worker_id, .. }] if worker_id == "7")
    );
    assert!(h.session.is_serving());
}

#[test]
fn pings_are_answered_with_the_current_load_and_the_echoed_timestamp() {
    let mut h = Harness::registered(4);
    h.request(1);
    h.request(2);
    let outputs = h.frame(ServerMessage::Ping(Ping {
        timestamp_unix_ms: Some(123),
    }));
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::Pong(Pong {
                current_load: 2,
                timestamp_unix_ms: Some(123),
            })
        }]
    );
}

#[test]
fn requests_are_admitted_up_to_max_concurrent_and_refused_beyond() {
    let mut h = Harness::registered(2);
    assert_eq!(started(&h.request(1)), [1]);
    assert_eq!(started(&h.request(2)), [2]);
    let outputs = h.request(3);
    assert!(started(&outputs).is_empty());
    assert_eq!(refusals(&outputs), [(3, REFUSED_AT_CAPACITY.to_string())]);
    // A repeat of a running request is ignored, not started twice.
    assert!(h.request(1).is_empty());
    h.complete(1);
    assert_eq!(started(&h.request(4)), [4]);
}

#[test]
fn a_cancel_aborts_only_the_request_it_names() {
    let mut h = Harness::registered(2);
    h.request(1);
    h.request(2);
    let outputs = h.frame(ServerMessage::Cancel(Cancel {
        request_id: r(2),
        reason: CancelReason::ClientDisconnect,
    }));
    assert_eq!(aborted(&outputs), [(2, CancelReason::ClientDisconnect)]);
    assert_eq!(h.session.current_load(), 1);
    // Unknown or repeated cancels do nothing.
    assert!(
        h.frame(ServerMessage::Cancel(Cancel {
            request_id: r(2),
            reason: CancelReason::Timeout,
        }))
        .is_empty()
    );
}

#[test]
fn backend_results_become_frames_and_results_of_aborted_requests_are_dropped() {
    let mut h = Harness::registered(2);
    h.request(1);
    let outputs = h.handle(SessionInput::BackendChunk {
        request: k(1),
        chunk: Bytes::from_static(b"data: a\n\n"),
    });
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: r(1),
                chunk: Bytes::from_static(b"data: a\n\n"),
            })
        }]
    );
    let outputs = h.handle(SessionInput::BackendFailed {
        request: k(1),
        code: "backend_unreachable".into(),
        message: "connection refused".into(),
    });
    assert_eq!(refusals(&outputs), [(1, "backend_unreachable".to_string())]);
    assert_eq!(h.session.current_load(), 0);
    // Anything about request 1 from now on is stale.
    assert!(h.complete(1).is_empty());
    assert!(
        h.handle(SessionInput::BackendChunk {
            request: k(1),
            chunk: Bytes::from_static(b"x"),
        })
        .is_empty()
    );
}

#[test]
fn losing_the_link_aborts_running_requests_and_reconnects_with_backoff() {
    let mut h = Harness::registered(2);
    h.request(1);
    h.request(2);
    let outputs = h.handle(SessionInput::LinkDown { link: L0 });
    assert_eq!(
        aborted(&outputs),
        [
            (1, CancelReason::WorkerDisconnect),
            (2, CancelReason::WorkerDisconnect)
        ]
    );
    let first = reconnect_delay(&outputs).expect("a reconnect is scheduled");
    assert!(first >= SECOND && first <= SECOND * 3 / 2, "{first:?}");
    assert!(h.advance(first - Duration::from_millis(1)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        [SessionOutput::Connect { link: L0 }]
    );
    // The dial fails: the next delay doubles.
    let second = reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).unwrap();
    assert!(second >= 2 * SECOND && second <= 3 * SECOND, "{second:?}");
}

#[test]
fn a_registration_resets_the_backoff() {
    let mut h = Harness::new(1);
    h.outputs();
    for _ in 0..4 {
        let delay = reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).unwrap();
        h.advance(delay);
    }
    h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V2,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    h.ack();
    let delay = reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).unwrap();
    assert!(delay <= SECOND * 3 / 2, "{delay:?}");
}

#[test]
fn a_refusal_with_retry_after_waits_that_long_however_far_the_backoff_has_grown() {
    let mut h = Harness::new(1);
    h.outputs();
    // Seven failed dials: the backoff is at its 30 s cap.
    for _ in 0..7 {
        let delay = reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).unwrap();
        h.advance(delay);
    }
    let retry_after = 12 * SECOND;
    let delay = reconnect_delay(&h.handle(SessionInput::LinkRefused {
        link: L0,
        retry_after: Some(retry_after),
    }))
    .unwrap();
    assert!(
        delay >= retry_after && delay <= retry_after + SECOND,
        "{delay:?}"
    );
    assert!(h.advance(retry_after - Duration::from_millis(1)).is_empty());
    assert_eq!(
        h.advance(delay - retry_after + Duration::from_millis(1)),
        [SessionOutput::Connect { link: L0 }]
    );
    // Refused again without a Retry-After (a wrong secret): the normal backoff goes on.
    let next = reconnect_delay(&h.handle(SessionInput::LinkRefused {
        link: L0,
        retry_after: None,
    }))
    .unwrap();
    assert!(next >= 30 * SECOND, "{next:?}");
}

#[test]
fn no_ack_in_time_drops_the_link() {
    let mut h = Harness::new(1);
    h.outputs();
    h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V2,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    let outputs = h.advance(SessionConfig::default().register_timeout);
    assert_eq!(outputs, [SessionOutput::CloseLink { link: L0 }]);
    assert!(reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).is_some());
}

#[test]
fn a_server_drain_refuses_new_work_finishes_the_rest_and_reconnects_after_the_close() {
    let mut h = Harness::registered(2);
    h.request(1);
    h.frame(ServerMessage::GracefulShutdown(GracefulShutdown {
        reason: None,
        drain_timeout_secs: Some(30),
    }));
    assert!(!h.session.is_serving());
    assert_eq!(refusals(&h.request(2)), [(2, REFUSED_DRAINING.to_string())]);
    let outputs = h.complete(1);
    assert!(matches!(
        &outputs[..],
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ResponseComplete(_)
        }]
    ));
    // The server closes the idle link; the worker comes back.
    let outputs = h.handle(SessionInput::LinkDown { link: L0 });
    let delay = reconnect_delay(&outputs).unwrap();
    assert_eq!(h.advance(delay), [SessionOutput::Connect { link: L0 }]);
    assert!(!h.session.has_exited());
}

#[test]
fn a_server_drain_that_never_closes_the_link_is_ended_by_the_worker() {
    let mut h = Harness::registered(1);
    h.frame(ServerMessage::GracefulShutdown(GracefulShutdown {
        reason: None,
        drain_timeout_secs: Some(10),
    }));
    assert!(h.advance(10 * SECOND).is_empty());
    assert_eq!(
        h.advance(SessionConfig::default().drain_grace),
        [SessionOutput::CloseLink { link: L0 }]
    );
}

#[test]
fn a_local_shutdown_stops_advertising_finishes_running_work_then_exits() {
    let mut h = Harness::registered(2);
    h.request(1);
    let outputs = h.handle(SessionInput::Shutdown);
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ModelsUpdate(ModelsUpdate {
                models: vec![],
                current_load: 1,
            })
        }]
    );
    assert_eq!(refusals(&h.request(2)), [(2, REFUSED_DRAINING.to_string())]);
    let outputs = h.complete(1);
    assert_eq!(outputs.last(), Some(&SessionOutput::CloseLink { link: L0 }));
    assert_eq!(
        h.handle(SessionInput::LinkDown { link: L0 }),
        [SessionOutput::Exit]
    );
    assert!(h.session.has_exited());
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn a_local_shutdown_when_idle_or_disconnected_exits_at_once() {
    let mut h = Harness::registered(1);
    assert_eq!(
        h.handle(SessionInput::Shutdown),
        [SessionOutput::CloseLink { link: L0 }]
    );
    assert_eq!(
        h.handle(SessionInput::LinkDown { link: L0 }),
        [SessionOutput::Exit]
    );

    let mut h = Harness::new(1);
    h.outputs();
    h.handle(SessionInput::LinkDown { link: L0 });
    assert_eq!(h.handle(SessionInput::Shutdown), [SessionOutput::Exit]);
}

#[test]
fn the_local_shutdown_deadline_aborts_what_still_runs() {
    let mut h = Harness::registered(1);
    h.request(1);
    h.handle(SessionInput::Shutdown);
    let outputs = h.advance(SessionConfig::default().shutdown_timeout);
    assert_eq!(aborted(&outputs), [(1, CancelReason::ServerShutdown)]);
    assert_eq!(outputs.last(), Some(&SessionOutput::CloseLink { link: L0 }));
    assert_eq!(
        h.handle(SessionInput::LinkDown { link: L0 }),
        [SessionOutput::Exit]
    );
}

#[test]
fn model_changes_are_sent_when_registered_and_owed_until_then() {
    let mut h = Harness::registered(1);
    let outputs = h.handle(SessionInput::ModelsChanged(vec!["m".into(), "n".into()]));
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ModelsUpdate(ModelsUpdate {
                models: vec!["m".into(), "n".into()],
                current_load: 0,
            })
        }]
    );
    // The same list again is not news.
    assert!(
        h.handle(SessionInput::ModelsChanged(vec!["m".into(), "n".into()]))
            .is_empty()
    );
    assert_eq!(
        h.frame(ServerMessage::ModelsRefresh(ModelsRefresh { reason: None })),
        [SessionOutput::RefreshModels]
    );
    // While disconnected, the new list goes out in the next register.
    h.handle(SessionInput::LinkDown { link: L0 });
    assert!(
        h.handle(SessionInput::ModelsChanged(vec!["o".into()]))
            .is_empty()
    );
    let delay = h.session.poll_timeout().unwrap() - h.now;
    h.advance(delay);
    let outputs = h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V2,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    assert!(matches!(
        &outputs[..],
        [SessionOutput::Send { link: L0, message: WorkerMessage::Register(Register { models, .. }) }] if models == &["o".to_string()]
    ));
}

#[test]
fn the_same_seed_gives_the_same_reconnect_schedule() {
    let schedule = |seed| {
        let mut session = WorkerSession::new(SessionConfig {
            jitter_seed: seed,
            ..SessionConfig::default()
        });
        session.add_link();
        let mut now = Instant::now();
        let start = now;
        let mut attempts = Vec::new();
        for _ in 0..5 {
            while session.poll_output().is_some() {}
            session.handle(now, SessionInput::LinkDown { link: L0 });
            now = session.poll_timeout().unwrap();
            session.handle_timeout(now);
            attempts.push(now - start);
        }
        attempts
    };
    assert_eq!(schedule(9), schedule(9));
    assert_ne!(schedule(9), schedule(10));
}

#[test]
fn a_link_that_answers_no_probe_is_dropped_and_redialled() {
    let mut h = Harness::registered(1);
    h.request(1);
    // Quiet for 15 s: a probe; nothing at all in the 30 s after it: dead.
    assert!(h.advance(LINK_PROBE_AFTER - SECOND).is_empty());
    assert_eq!(h.advance(SECOND), [SessionOutput::ProbeLink { link: L0 }]);
    assert!(h.advance(LINK_PROBE_TIMEOUT - SECOND).is_empty());
    // What runs is aborted when the link is given up, not when the close completes.
    assert_eq!(
        h.advance(SECOND),
        [
            SessionOutput::AbortRequest {
                request: k(1),
                reason: CancelReason::WorkerDisconnect
            },
            SessionOutput::CloseLink { link: L0 }
        ]
    );
    let delay = reconnect_delay(&h.handle(SessionInput::LinkDown { link: L0 })).unwrap();
    assert_eq!(h.advance(delay), [SessionOutput::Connect { link: L0 }]);
}

#[test]
fn ids_from_another_relay_are_echoed_as_given() {
    let mut h = Harness::registered(1);
    let foreign = WireRequestId::from("req-42");
    let outputs = h.frame(ServerMessage::Request(Arc::new(RequestFrame {
        request_id: foreign.clone(),
        model: ModelName::new("m"),
        endpoint_path: "/v1/chat/completions".into(),
        is_streaming: true,
        body: Bytes::from_static(b"{}"),
        headers: Headers::new(),
    })));
    assert!(matches!(
        &outputs[..],
        [SessionOutput::StartRequest { frame, .. }, SessionOutput::AllowBackendRead { request, .. }]
            if frame.request_id == foreign && request.id == foreign
    ));
    let outputs = h.handle(SessionInput::BackendChunk {
        request: LinkRequest::new(L0, foreign.clone()),
        chunk: Bytes::from_static(b"data: a\n\n"),
    });
    assert_eq!(
        outputs,
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: foreign.clone(),
                chunk: Bytes::from_static(b"data: a\n\n"),
            })
        }]
    );
    let outputs = h.frame(ServerMessage::Cancel(Cancel {
        request_id: foreign.clone(),
        reason: CancelReason::ClientDisconnect,
    }));
    assert!(
        matches!(&outputs[..], [SessionOutput::AbortRequest { request, .. }] if request.id == foreign)
    );
}

/// A registered session on a link of the given encoding.
fn registered_on(wire: WireVersion) -> Harness {
    let mut h = Harness::new(2);
    h.outputs();
    h.handle(SessionInput::LinkUp {
        link: L0,
        wire,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    h.ack();
    h
}

fn sent_chunks(outputs: &[SessionOutput]) -> Vec<Bytes> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Send {
                link: L0,
                message: WorkerMessage::ResponseChunk(c),
            } => Some(c.chunk.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn on_v1_a_character_split_across_backend_chunks_waits_for_its_end() {
    let mut h = registered_on(WireVersion::V1);
    h.request(1);
    let chunk = |bytes: &'static [u8]| SessionInput::BackendChunk {
        request: k(1),
        chunk: Bytes::from_static(bytes),
    };
    // "é" is 0xc3 0xa9; "€" is 0xe2 0x82 0xac.
    assert_eq!(
        sent_chunks(&h.handle(chunk(b"data: caf\xc3"))),
        [Bytes::from_static(b"data: caf")]
    );
    assert_eq!(
        sent_chunks(&h.handle(chunk(b"\xa9 \xe2"))),
        [Bytes::from("é ")]
    );
    assert!(sent_chunks(&h.handle(chunk(b"\x82"))).is_empty());
    assert_eq!(
        sent_chunks(&h.handle(chunk(b"\xac\n\n"))),
        [Bytes::from("€\n\n")]
    );
    let outputs = h.complete(1);
    assert!(matches!(
        &outputs[..],
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ResponseComplete(_)
        }]
    ));
}

#[test]
fn output_that_is_not_utf8_fails_only_its_request_on_v1_and_passes_on_v2() {
    let mut h = registered_on(WireVersion::V1);
    h.request(1);
    h.request(2);
    let outputs = h.handle(SessionInput::BackendChunk {
        request: k(1),
        chunk: Bytes::from_static(b"\xff\xfe"),
    });
    assert_eq!(
        ended_in_error(&outputs),
        [(1, BACKEND_OUTPUT_NOT_UTF8.to_string())]
    );
    assert!(!sends_error(&outputs), "v1 carries no error frame");
    assert_eq!(h.session.current_load(), 1, "request 2 goes on");
    // A stream that ends in the middle of a character cannot complete either.
    h.handle(SessionInput::BackendChunk {
        request: k(2),
        chunk: Bytes::from_static(b"ok \xc3"),
    });
    assert_eq!(
        ended_in_error(&h.complete(2)),
        [(2, BACKEND_OUTPUT_NOT_UTF8.to_string())]
    );

    let mut h = registered_on(WireVersion::V2);
    h.request(1);
    let outputs = h.handle(SessionInput::BackendChunk {
        request: k(1),
        chunk: Bytes::from_static(b"\xff\xfe"),
    });
    assert_eq!(sent_chunks(&outputs), [Bytes::from_static(b"\xff\xfe")]);
}

#[test]
fn any_drain_timeout_from_the_relay_is_taken_without_overflow() {
    let mut h = Harness::registered(1);
    h.frame(ServerMessage::GracefulShutdown(GracefulShutdown {
        reason: None,
        drain_timeout_secs: Some(u64::MAX),
    }));
    assert!(!h.session.is_serving());
    // No drain deadline is reachable; only the unanswered probe of the test link ends it.
    assert_eq!(
        h.advance(Duration::from_secs(3600)),
        [
            SessionOutput::ProbeLink { link: L0 },
            SessionOutput::CloseLink { link: L0 }
        ]
    );
}

#[test]
fn a_worker_advertises_no_more_models_than_a_relay_keeps_so_its_register_fits_before_register() {
    // Long names (a relay drops them) are left out before counting.
    let too_long = "x".repeat(MAX_MODEL_NAME_BYTES + 1);
    let many: Vec<String> = std::iter::once(too_long)
        .chain((0..MAX_MODELS_PER_WORKER + 10).map(|n| format!("{n:0>250}")))
        .collect();
    let kept = &many[1..=MAX_MODELS_PER_WORKER];
    let mut h = Harness::with_models(many.clone());
    let outputs = h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V2,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    let [
        SessionOutput::Send {
            link: L0,
            message: message @ WorkerMessage::Register(register),
        },
    ] = &outputs[..]
    else {
        panic!("a register: {outputs:?}");
    };
    assert_eq!(register.models, kept);
    for wire in [WireVersion::V1, WireVersion::V2] {
        let frame = wire.encode(message).unwrap();
        assert!(
            frame.len() <= FrameLimits::before_register_on(wire).max_frame_bytes,
            "{wire:?}: {} bytes",
            frame.len()
        );
    }

    h.ack();
    let mut more = many.clone();
    more.push("late".into());
    let outputs = h.handle(SessionInput::ModelsChanged(more));
    assert!(
        outputs.is_empty(),
        "a change past the ceiling changes nothing advertised: {outputs:?}"
    );
    let mut fewer = many[2..].to_vec();
    fewer.push("new".into());
    let outputs = h.handle(SessionInput::ModelsChanged(fewer.clone()));
    let [
        SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ModelsUpdate(update),
        },
    ] = &outputs[..]
    else {
        panic!("a models_update: {outputs:?}");
    };
    assert_eq!(update.models, fewer[..MAX_MODELS_PER_WORKER]);
}

#[test]
fn the_worker_never_advertises_the_wildcard_and_serves_any_model_it_is_sent() {
    let mut h = Harness::with_models(vec!["a".into(), "*".into(), " * ".into()]);
    let outputs = h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V1,
        flow: LinkFlow::Unwindowed,
        liveness: Liveness::Probed,
    });
    let [
        SessionOutput::Send {
            link: L0,
            message: WorkerMessage::Register(register),
        },
    ] = &outputs[..]
    else {
        panic!("a register: {outputs:?}");
    };
    assert_eq!(register.models, ["a"]);
    h.ack();
    // A backend that lists `*` among its models does not make the worker say it.
    let outputs = h.handle(SessionInput::ModelsChanged(vec!["b".into(), "*".into()]));
    let [
        SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ModelsUpdate(update),
        },
    ] = &outputs[..]
    else {
        panic!("a models_update: {outputs:?}");
    };
    assert_eq!(update.models, ["b"]);
    // A relay that sends a model the worker does not list (as one may route to
    // ModelRelay's wildcard workers) gets it run: the backend decides.
    let outputs = h.frame(ServerMessage::Request(Arc::new(RequestFrame {
        request_id: r(1),
        model: ModelName::new("not-listed"),
        endpoint_path: "/v1/chat/completions".into(),
        is_streaming: false,
        body: Bytes::from_static(b"{}"),
        headers: Headers::new(),
    })));
    assert_eq!(started(&outputs), [1]);
}

// Flow control

/// The cost a request's backend call may read ahead of its link writer in these tests.
const WINDOW: u64 = 4096;

fn paced(max_concurrent: u32) -> Harness {
    paced_on(max_concurrent, LinkFlow::Unwindowed)
}

/// A registered session whose writer window is [`WINDOW`], on a link with `flow`.
fn paced_on(max_concurrent: u32, flow: LinkFlow) -> Harness {
    paced_with(max_concurrent, flow, WINDOW)
}

/// A registered session whose writer window is `link_write_window`, on a link with `flow`.
fn paced_with(max_concurrent: u32, flow: LinkFlow, link_write_window: u64) -> Harness {
    let mut h = Harness::with_config(SessionConfig {
        worker_name: "gpu-1".into(),
        models: vec!["m".into()],
        max_concurrent,
        link_write_window,
        ..SessionConfig::default()
    });
    h.outputs();
    h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V2,
        flow,
        liveness: Liveness::Probed,
    });
    h.ack();
    h
}

fn allowances(outputs: &[SessionOutput]) -> Vec<(WireRequestId, u64)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            SessionOutput::AllowBackendRead { request, up_to } => {
                Some((request.id.clone(), *up_to))
            }
            _ => None,
        })
        .collect()
}

fn chunk(h: &mut Harness, id: u64, bytes: usize) -> Vec<SessionOutput> {
    h.handle(SessionInput::BackendChunk {
        request: k(id),
        chunk: Bytes::from(vec![b'x'; bytes]),
    })
}

fn wrote(h: &mut Harness, id: u64, total: u64) -> Vec<SessionOutput> {
    h.handle(SessionInput::LinkWrote {
        request: k(id),
        total,
    })
}

#[test]
fn the_backend_is_read_only_while_the_link_writer_keeps_up() {
    let mut h = paced(2);
    // Started with a whole window to read.
    let outputs = h.request(1);
    assert!(matches!(outputs[0], SessionOutput::StartRequest { .. }));
    assert_eq!(allowances(&outputs), [(r(1), WINDOW)]);
    // Reading alone never raises the allowance: only the link writer's progress does.
    let mut read = 0;
    while read < WINDOW {
        let outputs = chunk(&mut h, 1, 1000);
        assert_eq!(allowances(&outputs), []);
        read += chunk_cost(1000);
    }
    // Writes under a quarter of the window while the backend may still read: no new allowance...
    let mut h = paced(1);
    h.request(1);
    chunk(&mut h, 1, 1000);
    assert_eq!(allowances(&wrote(&mut h, 1, WINDOW / 4 - 1)), []);
    // ...a quarter of it moves the allowance to what was written plus the window.
    assert_eq!(
        allowances(&wrote(&mut h, 1, WINDOW / 4)),
        [(r(1), WINDOW / 4 + WINDOW)]
    );
    // Another request's writes are its own; an ended request hears nothing more.
    h.complete(1);
    assert_eq!(allowances(&wrote(&mut h, 1, 10 * WINDOW)), []);
    assert_eq!(h.session.current_load(), 0);
}

#[test]
fn a_blocked_backend_read_resumes_as_soon_as_the_link_writes() {
    let mut h = paced(2);
    h.request(1);
    h.request(2);
    // Request 1 reads its whole window: it waits for the link.
    let per_chunk = chunk_cost(960);
    let mut read = 0;
    while read < WINDOW {
        chunk(&mut h, 1, 960);
        read += per_chunk;
    }
    // The first chunk written (less than a quarter of the window) lets it go at once.
    assert_eq!(
        allowances(&wrote(&mut h, 1, per_chunk)),
        [(r(1), per_chunk + WINDOW)]
    );
    // Request 2, not blocked, waits for a quarter's worth.
    chunk(&mut h, 2, 500);
    assert_eq!(allowances(&wrote(&mut h, 2, chunk_cost(500))), []);
    // A cancel drops request 1's window with it.
    h.frame(ServerMessage::Cancel(Cancel {
        request_id: r(1),
        reason: CancelReason::ClientDisconnect,
    }));
    assert_eq!(allowances(&wrote(&mut h, 1, 2 * WINDOW)), []);
}

#[test]
fn tiny_chunks_cost_their_overhead() {
    let mut h = paced(1);
    h.request(1);
    // One-byte chunks: a window holds WINDOW / (1 + overhead) of them, not WINDOW.
    let per_chunk = 1 + CHUNK_COST_OVERHEAD;
    assert_eq!(chunk_cost(1), per_chunk);
    let fits = WINDOW.div_ceil(per_chunk);
    for _ in 0..fits {
        assert_eq!(allowances(&chunk(&mut h, 1, 1)), []);
    }
    // The backend now waits; writing one tiny chunk frees exactly its cost.
    assert_eq!(
        allowances(&wrote(&mut h, 1, per_chunk)),
        [(r(1), per_chunk + WINDOW)]
    );
}

fn window(h: &mut Harness, id: u64, max_bytes: u64) -> Vec<SessionOutput> {
    h.frame(ServerMessage::WindowUpdate(WindowUpdate {
        request_id: r(id),
        max_bytes,
    }))
}

#[test]
fn on_a_v2_1_link_the_backend_is_read_only_within_the_relays_window() {
    // A writer window far larger than the relay's: the relay's is the limit.
    let mut h = paced_with(1, LinkFlow::Windowed, 16 * INITIAL_WINDOW);
    // The first allowance is the protocol's first window, in payload bytes.
    assert_eq!(allowances(&h.request(1)), [(r(1), INITIAL_WINDOW)]);
    // Chunks of 1000 bytes: the backend reads while its cost is under the allowance,
    // which stops it once it has read INITIAL_WINDOW payload bytes (plus the last
    // chunk, which a read cannot cut short), whatever the per-chunk overhead.
    let (mut cost, mut payload, mut allowed) = (0, 0, INITIAL_WINDOW);
    while cost < allowed {
        for (_, up_to) in allowances(&chunk(&mut h, 1, 1000)) {
            allowed = up_to;
        }
        cost += chunk_cost(1000);
        payload += 1000;
    }
    assert!(
        (INITIAL_WINDOW..INITIAL_WINDOW + 1000).contains(&payload),
        "{payload} payload bytes read under a first window of {INITIAL_WINDOW}"
    );
    // Writing it all does not let the backend read on: the relay has not granted more.
    assert_eq!(allowances(&wrote(&mut h, 1, cost)), []);
    // A window_update does, by exactly what it grants.
    let grant = 3 * INITIAL_WINDOW;
    assert_eq!(
        allowances(&window(&mut h, 1, grant)),
        [(r(1), grant + (payload / 1000) * CHUNK_COST_OVERHEAD)]
    );
}

#[test]
fn window_updates_never_shrink_and_those_for_other_requests_or_links_are_ignored() {
    let mut h = paced_on(2, LinkFlow::Windowed);
    h.request(1);
    let mut read = 0;
    while read < WINDOW {
        chunk(&mut h, 1, 1000);
        read += 1000;
    }
    // A smaller value, a repeat, and a request that is not running change nothing.
    assert_eq!(allowances(&window(&mut h, 1, 10)), []);
    assert_eq!(allowances(&window(&mut h, 1, INITIAL_WINDOW)), []);
    assert_eq!(allowances(&window(&mut h, 9, 10 * INITIAL_WINDOW)), []);
    // On a link without windows the relay cannot hold the worker back: updates are ignored.
    let mut plain = paced_on(1, LinkFlow::Unwindowed);
    assert_eq!(allowances(&plain.request(1)), [(r(1), WINDOW)]);
    assert_eq!(allowances(&window(&mut plain, 1, 1)), []);
    assert_eq!(allowances(&window(&mut plain, 1, 100 * WINDOW)), []);
}

#[test]
fn without_relay_windows_the_worker_never_waits_for_credit() {
    // A v2 relay from before the revision (or a v1 one) never sends a window_update:
    // the writer alone paces the backend, however far past INITIAL_WINDOW it reads.
    let mut h = paced_on(1, LinkFlow::Unwindowed);
    h.request(1);
    let mut written = 0;
    for _ in 0..(4 * INITIAL_WINDOW / 1000) {
        chunk(&mut h, 1, 1000);
        written += chunk_cost(1000);
        wrote(&mut h, 1, written);
    }
    let outputs = chunk(&mut h, 1, 1000);
    assert!(
        outputs
            .iter()
            .all(|o| !matches!(o, SessionOutput::CloseLink { link: L0 }))
    );
    // Everything read was written: the allowance is the writer's, a window ahead.
    let last = allowances(&wrote(&mut h, 1, written + chunk_cost(1000)));
    assert!(
        last.iter().all(|(_, up_to)| *up_to > 4 * INITIAL_WINDOW),
        "{last:?}"
    );
}

/// A registered session whose link's liveness is judged by `liveness`.
fn registered_judged_by(liveness: Liveness) -> Harness {
    let mut h = Harness::new(2);
    h.outputs();
    h.handle(SessionInput::LinkUp {
        link: L0,
        wire: WireVersion::V1,
        flow: LinkFlow::Unwindowed,
        liveness,
    });
    h.ack();
    h
}

#[test]
fn a_streaming_worker_keeps_a_link_whose_relay_never_pings_while_its_probes_are_answered() {
    // As behind a ModelRelay server: it pings only after 30 s of silence from the
    // worker, so while the worker streams nothing at all comes from the relay.
    let mut h = registered_judged_by(Liveness::Probed);
    h.request(1);
    let mut probes = 0;
    for second in 1..=70 {
        let mut outputs = h.advance(SECOND);
        outputs.extend(h.handle(SessionInput::BackendChunk {
            request: k(1),
            chunk: Bytes::from(format!("data: token {second}\n\n")),
        }));
        assert!(
            !outputs.contains(&SessionOutput::CloseLink { link: L0 }),
            "given up at {second} s"
        );
        if outputs.contains(&SessionOutput::ProbeLink { link: L0 }) {
            probes += 1;
            // Every WebSocket peer answers a ping with a pong.
            h.handle(SessionInput::SignOfLife { link: L0 });
        }
    }
    assert_eq!(
        probes,
        70 / LINK_PROBE_AFTER.as_secs(),
        "one probe per quiet spell"
    );
    let outputs = h.complete(1);
    assert!(matches!(
        &outputs[..],
        [SessionOutput::Send {
            link: L0,
            message: WorkerMessage::ResponseComplete(_)
        }]
    ));
    // A relay that pauses just short of the probe timeout keeps its worker, and
    // any frame answers a probe as well as a pong does.
    h.handle(SessionInput::SignOfLife { link: L0 });
    assert_eq!(
        h.advance(LINK_PROBE_AFTER),
        [SessionOutput::ProbeLink { link: L0 }]
    );
    assert!(h.advance(LINK_PROBE_TIMEOUT - SECOND).is_empty());
    h.frame(ServerMessage::Ping(Ping {
        timestamp_unix_ms: None,
    }));
    assert!(h.advance(LINK_PROBE_AFTER - SECOND).is_empty());
    assert!(h.session.is_serving());
    // The numbers: probe after 15 s of quiet, give up 30 s after an unanswered probe.
    assert_eq!(
        (LINK_PROBE_AFTER, LINK_PROBE_TIMEOUT),
        (15 * SECOND, 30 * SECOND)
    );
}

#[test]
fn a_link_the_transport_watches_is_never_probed_or_given_up_by_the_session() {
    // QUIC: keep-alives and the idle timeout judge the link, and report it down.
    let mut h = registered_judged_by(Liveness::Transport);
    h.request(1);
    assert!(h.advance(Duration::from_secs(3600)).is_empty());
    assert!(h.session.is_serving());
    let outputs = h.handle(SessionInput::LinkDown { link: L0 });
    assert_eq!(aborted(&outputs), [(1, CancelReason::WorkerDisconnect)]);
}

/// The `response_complete` sent in `outputs`, if exactly one (a load update
/// to a relay refused as at capacity may follow it).
fn the_complete(outputs: &[SessionOutput]) -> &ResponseComplete {
    let completes: Vec<&ResponseComplete> = outputs
        .iter()
        .filter_map(|output| match output {
            SessionOutput::Send {
                link: L0,
                message: WorkerMessage::ResponseComplete(complete),
            } => Some(complete),
            _ => None,
        })
        .collect();
    let others = outputs.iter().filter(|output| {
        !matches!(
            output,
            SessionOutput::Send {
                message: WorkerMessage::ResponseComplete(_) | WorkerMessage::ModelsUpdate(_),
                ..
            }
        )
    });
    match (&completes[..], others.count()) {
        ([complete], 0) => complete,
        _ => panic!("expected one response_complete, got {outputs:?}"),
    }
}

#[test]
fn on_v1_refusals_and_failures_end_as_a_response_complete_and_never_as_an_error() {
    let mut h = registered_on(WireVersion::V1);
    h.request(1);
    h.request(2);
    // At capacity: a 503 marked as a refusal, before any chunk.
    let outputs = h.request(3);
    let refusal = the_complete(&outputs);
    assert_eq!(refusal.status_code, 503);
    assert_eq!(
        refusal.headers.get("x-modelrelay-refused"),
        Some(REFUSED_AT_CAPACITY)
    );
    assert_eq!(marked_refusal(refusal), Some(REFUSED_AT_CAPACITY));
    assert_eq!(
        ended_in_error(&outputs),
        [(3, REFUSED_AT_CAPACITY.to_string())]
    );
    // A failed backend call: an error status and body, as ModelRelay's worker passes a backend's.
    let outputs = h.handle(SessionInput::BackendFailed {
        request: k(1),
        code: "backend_unreachable".into(),
        message: "connection refused".into(),
    });
    let failure = the_complete(&outputs);
    assert_eq!(failure.status_code, 502);
    assert_eq!(
        failure.headers.get("content-type"),
        Some("application/json")
    );
    assert_eq!(marked_refusal(failure), None, "a failure is no refusal");
    assert_eq!(
        ended_in_error(&outputs),
        [(1, "backend_unreachable".to_string())]
    );
    // Draining: the refusal says so.
    h.frame(ServerMessage::GracefulShutdown(GracefulShutdown {
        reason: None,
        drain_timeout_secs: Some(30),
    }));
    let outputs = h.request(4);
    assert_eq!(
        marked_refusal(the_complete(&outputs)),
        Some(REFUSED_DRAINING)
    );
    // The same events on v2 are error frames.
    let mut h = registered_on(WireVersion::V2);
    h.request(1);
    h.request(2);
    assert_eq!(
        refusals(&h.request(3)),
        [(3, REFUSED_AT_CAPACITY.to_string())]
    );
}

#[test]
fn a_backend_cannot_mark_its_own_answer_as_a_refusal() {
    let mut h = registered_on(WireVersion::V1);
    h.request(1);
    let outputs = h.handle(SessionInput::BackendComplete {
        request: k(1),
        status_code: 503,
        headers: [
            ("content-type", "application/json"),
            ("X-ModelRelay-Refused", REFUSED_AT_CAPACITY),
        ]
        .into_iter()
        .collect(),
        body: Bytes::from_static(b"{}"),
        token_counts: None,
    });
    let answer = the_complete(&outputs);
    assert_eq!(answer.status_code, 503);
    assert_eq!(answer.headers.get("x-modelrelay-refused"), None);
    assert_eq!(marked_refusal(answer), None);
}

// ---- Several relays: one worker's links to each ----

/// The frames sent on each link, by link.
fn sent_on(outputs: &[SessionOutput], on: LinkId) -> Vec<WorkerMessage> {
    outputs
        .iter()
        .filter_map(|output| match output {
            SessionOutput::Send { link, message } if *link == on => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The loads told to a relay in `models_update`s.
fn loads_told(outputs: &[SessionOutput], on: LinkId) -> Vec<u32> {
    sent_on(outputs, on)
        .into_iter()
        .filter_map(|message| match message {
            WorkerMessage::ModelsUpdate(update) => Some(update.current_load),
            _ => None,
        })
        .collect()
}

fn started_on(outputs: &[SessionOutput]) -> Vec<LinkRequest> {
    outputs
        .iter()
        .filter_map(|output| match output {
            SessionOutput::StartRequest { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_slots_are_the_workers_across_every_link_and_what_does_not_fit_is_refused_as_at_capacity() {
    let mut h = Harness::registered(2);
    let (l1, _) = h.add_registered_link();
    // Both relays may use the same id: they are two requests.
    let outputs = h.request_on(L0, 1);
    assert_eq!(started_on(&outputs), [k(1)]);
    let outputs = h.request_on(l1, 1);
    assert_eq!(started_on(&outputs), [LinkRequest::new(l1, r(1))]);
    assert_eq!(h.session.current_load(), 2);
    // Each relay was told the whole capacity, so both may send more: refused.
    for link in [L0, l1] {
        let outputs = h.request_on(link, 2);
        assert!(started_on(&outputs).is_empty());
        assert!(matches!(
            &sent_on(&outputs, link)[..],
            [WorkerMessage::Error(WorkerError { code, .. })] if code == REFUSED_AT_CAPACITY
        ));
    }
    // A slot freed by one relay's request is free for the other's.
    h.complete(1);
    let outputs = h.request_on(l1, 3);
    assert_eq!(started_on(&outputs), [LinkRequest::new(l1, r(3))]);
    // A cancel names a request on its own link only.
    let outputs = h.frame_on(
        L0,
        ServerMessage::Cancel(Cancel {
            request_id: r(3),
            reason: CancelReason::ClientDisconnect,
        }),
    );
    assert!(aborted(&outputs).is_empty());
    assert_eq!(h.session.current_load(), 2);
}

#[test]
fn every_other_relay_hears_the_workers_load_when_it_changes_once_per_batch() {
    let mut h = Harness::registered(4);
    assert!(
        loads_told(&h.request(1), L0).is_empty(),
        "one relay: no news"
    );
    let (l1, outputs) = h.add_registered_link();
    assert!(
        loads_told(&outputs, l1).is_empty(),
        "register carried the load"
    );
    // A request from relay 0 starting: relay 1 hears the load, relay 0 knows it.
    let outputs = h.request_on(L0, 2);
    assert_eq!(loads_told(&outputs, l1), [2]);
    assert!(loads_told(&outputs, L0).is_empty());
    // Several changes before the driver polls: one update, the latest load.
    h.session.handle(
        h.now,
        SessionInput::Frame {
            link: l1,
            message: ServerMessage::Request(Arc::new(RequestFrame {
                request_id: r(7),
                model: ModelName::new("m"),
                endpoint_path: "/v1/chat/completions".into(),
                is_streaming: true,
                body: Bytes::from_static(b"{}"),
                headers: Headers::new(),
            })),
        },
    );
    h.session.handle(
        h.now,
        SessionInput::BackendFailed {
            request: k(1),
            code: "backend_error".into(),
            message: "x".into(),
        },
    );
    h.session.handle(
        h.now,
        SessionInput::BackendFailed {
            request: k(2),
            code: "backend_error".into(),
            message: "x".into(),
        },
    );
    let outputs = h.outputs();
    assert_eq!(
        loads_told(&outputs, L0),
        [1],
        "relay 0 hears of relay 1's request"
    );
    assert_eq!(
        loads_told(&outputs, l1),
        [1],
        "relay 1 hears of relay 0's two ending"
    );
    // A pong tells the load too: nothing more is owed to a relay just pinged.
    let outputs = h.frame_on(
        l1,
        ServerMessage::Ping(Ping {
            timestamp_unix_ms: None,
        }),
    );
    assert!(loads_told(&outputs, l1).is_empty());
}

#[test]
fn a_relays_drain_drains_its_link_alone_and_the_others_keep_serving() {
    let mut h = Harness::registered(4);
    let (l1, _) = h.add_registered_link();
    h.request_on(L0, 1);
    h.request_on(l1, 1);
    h.frame(ServerMessage::GracefulShutdown(GracefulShutdown {
        reason: None,
        drain_timeout_secs: Some(10),
    }));
    // The draining relay's new requests are refused as draining; the other's start.
    let outputs = h.request_on(L0, 2);
    assert_eq!(refusals(&outputs), [(2, REFUSED_DRAINING.to_string())]);
    let outputs = h.request_on(l1, 2);
    assert_eq!(started_on(&outputs), [LinkRequest::new(l1, r(2))]);
    assert!(h.session.is_serving());
    // At the drain's deadline (plus grace) only its link closes, and only its
    // request is aborted.
    let outputs = h.advance(16 * SECOND);
    assert!(outputs.contains(&SessionOutput::CloseLink { link: L0 }));
    assert!(!outputs.contains(&SessionOutput::CloseLink { link: l1 }));
    assert_eq!(aborted(&outputs), [(1, CancelReason::WorkerDisconnect)]);
    assert!(
        outputs.iter().all(
            |o| !matches!(o, SessionOutput::AbortRequest { request, .. } if request.link == l1)
        )
    );
    assert_eq!(h.session.current_load(), 2);
    // It redials on its own after its backoff; the other link is untouched.
    let outputs = h.handle(SessionInput::LinkDown { link: L0 });
    assert!(matches!(
        &outputs[..],
        [SessionOutput::Reconnecting { link: L0, .. }]
    ));
    let outputs = h.advance(60 * SECOND);
    assert!(outputs.contains(&SessionOutput::Connect { link: L0 }));
    assert!(!outputs.contains(&SessionOutput::Connect { link: l1 }));
}

#[test]
fn a_link_lost_aborts_only_its_own_requests() {
    let mut h = Harness::registered(4);
    let (l1, _) = h.add_registered_link();
    h.request_on(L0, 1);
    h.request_on(l1, 1);
    h.request_on(l1, 2);
    let outputs = h.handle(SessionInput::LinkDown { link: l1 });
    let mut lost: Vec<LinkRequest> = outputs
        .iter()
        .filter_map(|o| match o {
            SessionOutput::AbortRequest { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect();
    lost.sort();
    assert_eq!(
        lost,
        [LinkRequest::new(l1, r(1)), LinkRequest::new(l1, r(2))]
    );
    assert_eq!(
        loads_told(&outputs, L0),
        [1],
        "the surviving relay hears the freed slots"
    );
    assert_eq!(h.session.current_load(), 1);
    assert!(h.session.is_serving());
}

#[test]
fn a_local_shutdown_finishes_every_links_requests_then_exits_when_all_are_down() {
    let mut h = Harness::registered(4);
    let (l1, _) = h.add_registered_link();
    h.request_on(L0, 1);
    let outputs = h.handle(SessionInput::Shutdown);
    // The link with work hears "no models"; the idle one closes at once.
    assert!(matches!(
        &sent_on(&outputs, L0)[..],
        [WorkerMessage::ModelsUpdate(ModelsUpdate { models, current_load: 1 })] if models.is_empty()
    ));
    assert!(outputs.contains(&SessionOutput::CloseLink { link: l1 }));
    assert!(!outputs.contains(&SessionOutput::CloseLink { link: L0 }));
    assert!(
        h.handle(SessionInput::LinkDown { link: l1 })
            .iter()
            .all(|o| *o != SessionOutput::Exit)
    );
    // The last request ends: its link closes, and once it is down the worker exits.
    let outputs = h.complete(1);
    assert!(outputs.contains(&SessionOutput::CloseLink { link: L0 }));
    assert_eq!(
        h.handle(SessionInput::LinkDown { link: L0 }),
        [SessionOutput::Exit]
    );
}

#[test]
fn a_retired_relay_gets_no_new_work_closes_once_idle_and_is_never_redialed() {
    let mut h = Harness::registered(4);
    let (l1, _) = h.add_registered_link();
    h.request_on(l1, 1);
    h.session.retire_link(l1);
    assert!(h.outputs().is_empty(), "its request runs on");
    let outputs = h.request_on(l1, 2);
    assert!(matches!(
        &sent_on(&outputs, l1)[..],
        [WorkerMessage::Error(WorkerError { code, .. })] if code == REFUSED_DRAINING
    ));
    let outputs = h.handle(SessionInput::BackendComplete {
        request: LinkRequest::new(l1, r(1)),
        status_code: 200,
        headers: Headers::new(),
        body: Bytes::new(),
        token_counts: None,
    });
    assert!(outputs.contains(&SessionOutput::CloseLink { link: l1 }));
    let outputs = h.handle(SessionInput::LinkDown { link: l1 });
    assert!(outputs.is_empty(), "no reconnect: {outputs:?}");
    assert!(
        h.advance(600 * SECOND)
            .iter()
            .all(|o| *o != SessionOutput::Connect { link: l1 })
    );
    // A retired link that is down is forgotten at once; new links get new ids.
    let l2 = h.session.add_link();
    assert_ne!(l2, l1);
    h.session.retire_link(l2);
    assert_eq!(
        h.outputs(),
        [
            SessionOutput::Connect { link: l2 },
            SessionOutput::CloseLink { link: l2 }
        ]
    );
}

#[test]
fn a_relay_refused_as_at_capacity_hears_when_its_own_request_frees_a_slot() {
    let mut h = Harness::registered(2);
    let (l1, _) = h.add_registered_link();
    h.request_on(l1, 1);
    h.request_on(L0, 1);
    let outputs = h.request_on(L0, 2);
    assert!(matches!(
        &sent_on(&outputs, L0)[..],
        [WorkerMessage::Error(WorkerError { code, .. })] if code == REFUSED_AT_CAPACITY
    ));
    assert!(
        loads_told(&outputs, L0).is_empty(),
        "a refusal is not followed by \"still full\""
    );
    // Its own request ends: the relay that rests the worker hears the slot.
    let outputs = h.complete(1);
    assert_eq!(loads_told(&outputs, L0), [1]);
    assert_eq!(loads_told(&outputs, l1), [1]);
    // Told once; its next request of its own ending is news to nobody else.
    // With one relay the same holds: a refused relay hears the slot its own
    // request (a cancelled one, say) frees, and nothing is sent otherwise.
    h.request_on(L0, 3);
    let outputs = h.complete(3);
    assert!(loads_told(&outputs, L0).is_empty());
}
