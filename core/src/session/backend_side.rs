//! Handlers of what the backend returns for a request: chunks, the completion, a failure.

use bytes::Bytes;

use super::failure::failure_message;
use super::read_window::chunk_cost;
use super::text_carry::NotUtf8;
use super::{LinkRequest, SessionOutput, WorkerSession};
use crate::ids::LinkId;
use crate::wire::{
    CancelReason, REFUSAL_HEADER, ResponseChunk, ResponseComplete, WireVersion, WorkerMessage,
};

/// `error` code for a request whose backend output is not UTF-8 on a v1 link.
pub const BACKEND_OUTPUT_NOT_UTF8: &str = "backend_output_not_utf8";

impl WorkerSession {
    /// Response bytes from the backend: passed on while the request runs and the link is up.
    pub(super) fn on_backend_chunk(&mut self, request: LinkRequest, chunk: Bytes) {
        if !self.running.contains_key(&request) {
            return;
        }
        let read = chunk_cost(chunk.len());
        let queued = if self.linked(request.link).is_none() {
            None
        } else {
            match self.sendable_chunk(&request, chunk) {
                Ok(sendable) => sendable,
                Err(NotUtf8) => {
                    self.fail_not_utf8(request);
                    return;
                }
            }
        };
        let queued_cost = queued.as_ref().map_or(0, |chunk| chunk_cost(chunk.len()));
        if let Some(chunk) = queued {
            let message = WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: request.id.clone(),
                chunk,
            });
            self.send(request.link, message);
        }
        let allowance = self
            .running
            .get_mut(&request)
            .and_then(|window| window.on_read(read, queued_cost));
        self.allow_read(request, allowance);
    }

    /// The link writer handed on more of a request's chunks: its backend call may read further.
    pub(super) fn on_link_wrote(&mut self, request: LinkRequest, total: u64) {
        let allowance = self
            .running
            .get_mut(&request)
            .and_then(|window| window.on_written(total));
        self.allow_read(request, allowance);
    }

    /// Tells the driver a request's new allowance, if there is one.
    pub(super) fn allow_read(&mut self, request: LinkRequest, allowance: Option<u64>) {
        if let Some(up_to) = allowance {
            self.outputs
                .push_back(SessionOutput::AllowBackendRead { request, up_to });
        }
    }

    /// The backend finished a request: passed on, unless a v1 link cannot carry its output.
    /// Only the worker marks a refusal: a backend's header of that name is dropped.
    pub(super) fn on_backend_complete(&mut self, link: LinkId, mut complete: ResponseComplete) {
        complete.headers.remove(REFUSAL_HEADER);
        let request = LinkRequest::new(link, complete.request_id.clone());
        if !self.running.contains_key(&request) {
            return;
        }
        let leftover = self.text_carry.forget(&request);
        let v1 = self.wire_of(link) == Some(WireVersion::V1);
        if v1 && (leftover || std::str::from_utf8(&complete.body).is_err()) {
            self.fail_not_utf8(request);
            return;
        }
        self.running.remove(&request);
        self.load_changed(link);
        self.send(link, WorkerMessage::ResponseComplete(complete));
        self.after_request_ended(link);
    }

    /// The backend call failed: the request ends with the backend's error.
    pub(super) fn on_backend_failed(
        &mut self,
        request: LinkRequest,
        code: String,
        message: String,
    ) {
        if self.running.remove(&request).is_none() {
            return;
        }
        self.text_carry.forget(&request);
        self.load_changed(request.link);
        let failure = failure_message(self.wire_of(request.link), request.id, code, message);
        self.send(request.link, failure);
        self.after_request_ended(request.link);
    }

    /// The encoding of a link that is up.
    fn wire_of(&self, link: LinkId) -> Option<WireVersion> {
        self.links.get(&link).and_then(|record| record.wire)
    }

    /// The part of `chunk` that can go out now. v2 carries any bytes. On v1 a chunk
    /// must be UTF-8 text, and a backend may split a character across chunks: the
    /// incomplete end waits for the next chunk.
    fn sendable_chunk(
        &mut self,
        request: &LinkRequest,
        chunk: Bytes,
    ) -> Result<Option<Bytes>, NotUtf8> {
        if self.wire_of(request.link) != Some(WireVersion::V1) {
            return Ok(Some(chunk));
        }
        self.text_carry.whole_text(request, chunk)
    }

    /// Ends a request whose backend output cannot travel in a v1 text frame.
    fn fail_not_utf8(&mut self, request: LinkRequest) {
        self.running.remove(&request);
        self.text_carry.forget(&request);
        self.load_changed(request.link);
        self.outputs.push_back(SessionOutput::AbortRequest {
            request: request.clone(),
            reason: CancelReason::Other(BACKEND_OUTPUT_NOT_UTF8.into()),
        });
        let message = "the backend's output is not UTF-8 text, which a v1 link cannot carry";
        let failure = failure_message(
            self.wire_of(request.link),
            request.id,
            BACKEND_OUTPUT_NOT_UTF8.into(),
            message.into(),
        );
        self.send(request.link, failure);
        self.after_request_ended(request.link);
    }
}
