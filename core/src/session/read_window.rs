//! How far one running request's backend call may read: its read window.
//!
//! The worker reads a backend only as fast as its link writer hands the answer
//! on. Both sides count in *cost*: a chunk's payload length plus
//! [`CHUNK_COST_OVERHEAD`], so that a backend sending one-byte chunks cannot
//! fill the link's queue with millions of items. The backend call may read
//! while the cost it has read is below the allowance last sent
//! ([`SessionOutput::AllowBackendRead`](super::SessionOutput::AllowBackendRead)).

/// What each chunk costs on top of its payload bytes (a queued item's own weight).
pub const CHUNK_COST_OVERHEAD: u64 = 64;

/// The default cost a request's backend call may read ahead of its link writer (256 KiB).
pub const DEFAULT_LINK_WRITE_WINDOW: u64 = 256 * 1024;

/// The cost of a chunk of `payload_len` bytes.
pub fn chunk_cost(payload_len: usize) -> u64 {
    u64::try_from(payload_len)
        .unwrap_or(u64::MAX)
        .saturating_add(CHUNK_COST_OVERHEAD)
}

/// One running request's read window. Every count is cumulative since the request started.
///
/// The allowance is the least of its limits; today the only one is the link
/// writer's (what it has handed on, plus the window). A further limit (the
/// relay's per-request window) is one more field, taken into [`ReadWindow::limit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ReadWindow {
    /// How far reading may run ahead of the link writer.
    window: u64,
    /// Cost the backend call has read.
    read: u64,
    /// Cost read that never went into the link's queue (bytes a v1 link holds
    /// back until a character is whole, a chunk merged into the next, a chunk dropped).
    unqueued: u64,
    /// Cost the link writer has handed on.
    written: u64,
    /// The allowance last sent.
    allowed: u64,
}

impl ReadWindow {
    /// A request that has read nothing, with its first allowance (the whole window).
    pub(super) fn new(window: u64) -> (Self, u64) {
        let state = Self {
            window,
            read: 0,
            unqueued: 0,
            written: 0,
            allowed: window,
        };
        (state, window)
    }

    /// The backend call read a chunk costing `read`, of which `queued` went into the link's queue.
    pub(super) fn on_read(&mut self, read: u64, queued: u64) -> Option<u64> {
        self.read = self.read.saturating_add(read);
        self.unqueued = self
            .unqueued
            .saturating_add(read.saturating_sub(queued))
            .saturating_sub(queued.saturating_sub(read));
        self.next_allowance()
    }

    /// The link writer has handed on `total` cost of this request's chunks in all.
    pub(super) fn on_written(&mut self, total: u64) -> Option<u64> {
        self.written = self.written.max(total);
        self.next_allowance()
    }

    /// How far reading may go now.
    fn limit(&self) -> u64 {
        self.written
            .saturating_add(self.unqueued)
            .saturating_add(self.window)
    }

    /// A new allowance to send: once the limit has grown by a quarter of the
    /// window, or at once if the backend call is waiting and it has grown at all.
    fn next_allowance(&mut self) -> Option<u64> {
        let limit = self.limit();
        let blocked = self.read >= self.allowed;
        let grown = limit.saturating_sub(self.allowed);
        if grown == 0 || (!blocked && grown < self.window / 4) {
            return None;
        }
        self.allowed = limit;
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 1024;

    #[test]
    fn a_new_request_may_read_a_whole_window() {
        assert_eq!(ReadWindow::new(WINDOW).1, WINDOW);
    }

    #[test]
    fn writes_raise_the_allowance_in_quarters_of_the_window() {
        let (mut window, _) = ReadWindow::new(WINDOW);
        assert_eq!(window.on_read(100, 100), None);
        assert_eq!(window.on_written(100), None, "less than a quarter");
        assert_eq!(window.on_written(255), None);
        assert_eq!(window.on_written(256), Some(WINDOW + 256));
        assert_eq!(
            window.on_written(300),
            None,
            "counted from the last allowance"
        );
    }

    #[test]
    fn a_blocked_reader_is_let_go_by_any_write() {
        let (mut window, _) = ReadWindow::new(WINDOW);
        assert_eq!(window.on_read(WINDOW, WINDOW), None);
        assert_eq!(window.on_written(1), Some(WINDOW + 1));
        assert_eq!(window.on_written(1), None, "a total that did not grow");
        assert_eq!(window.on_written(0), None, "totals never go back");
    }

    #[test]
    fn cost_that_never_reaches_the_queue_does_not_hold_the_reader_back() {
        let (mut window, _) = ReadWindow::new(WINDOW);
        // A chunk held back whole (a split character on a v1 link): no write will count it.
        assert_eq!(window.on_read(WINDOW, 0), Some(2 * WINDOW));
        // Sent with the next chunk, as one frame: two overheads became one.
        assert_eq!(
            window.on_read(WINDOW, 2 * WINDOW - CHUNK_COST_OVERHEAD),
            None
        );
        // Once all of it is written, the reader may read a whole window more.
        assert_eq!(
            window.on_written(2 * WINDOW - CHUNK_COST_OVERHEAD),
            Some(3 * WINDOW)
        );
    }

    #[test]
    fn a_chunk_costs_its_bytes_and_the_overhead() {
        assert_eq!(chunk_cost(0), CHUNK_COST_OVERHEAD);
        assert_eq!(chunk_cost(1), 1 + CHUNK_COST_OVERHEAD);
        assert_eq!(chunk_cost(1000), 1000 + CHUNK_COST_OVERHEAD);
    }
}
