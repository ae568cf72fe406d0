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
/// The allowance is the least of two limits: the link writer's (what it has
/// handed on, plus the window) and, on a v2.1 link, the relay's (the payload
/// bytes its `window_update`s allow, `INITIAL_WINDOW` until the first).
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
    /// Chunks the backend call has read.
    chunks: u64,
    /// Payload bytes the relay allows in all (`u64::MAX` on a link without windows).
    relay_max: u64,
}

impl ReadWindow {
    /// A request that has read nothing, with its first allowance: the whole
    /// window, or less if the relay's first window (`relay_max`) is smaller.
    pub(super) fn new(window: u64, relay_max: u64) -> (Self, u64) {
        let mut state = Self {
            window,
            read: 0,
            unqueued: 0,
            written: 0,
            allowed: 0,
            chunks: 0,
            relay_max,
        };
        state.allowed = state.limit();
        let first = state.allowed;
        (state, first)
    }

    /// The backend call read a chunk costing `read`, of which `queued` went into the link's queue.
    pub(super) fn on_read(&mut self, read: u64, queued: u64) -> Option<u64> {
        self.read = self.read.saturating_add(read);
        self.chunks = self.chunks.saturating_add(1);
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

    /// The relay allows `max_bytes` payload bytes in all (a `window_update`; never shrinks).
    pub(super) fn on_relay_window(&mut self, max_bytes: u64) -> Option<u64> {
        self.relay_max = self.relay_max.max(max_bytes);
        self.next_allowance()
    }

    /// How far reading may go now.
    fn limit(&self) -> u64 {
        let writer = self
            .written
            .saturating_add(self.unqueued)
            .saturating_add(self.window);
        // Cost is payload plus an overhead per chunk: reading below this cost is
        // reading below `relay_max` payload bytes.
        let relay = self
            .relay_max
            .saturating_add(self.chunks.saturating_mul(CHUNK_COST_OVERHEAD));
        writer.min(relay)
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
    const NO_RELAY_LIMIT: u64 = u64::MAX;

    impl ReadWindow {
        fn unwindowed(window: u64) -> (Self, u64) {
            Self::new(window, NO_RELAY_LIMIT)
        }
    }

    #[test]
    fn a_new_request_may_read_a_whole_window() {
        assert_eq!(ReadWindow::unwindowed(WINDOW).1, WINDOW);
    }

    #[test]
    fn the_relays_window_caps_the_payload_read_whatever_the_chunk_count() {
        let (mut window, first) = ReadWindow::new(WINDOW, 300);
        assert_eq!(first, 300, "the relay's first window is the smaller limit");
        // Two chunks of 100 bytes: cost 328, payload 200; 100 payload bytes to go.
        assert_eq!(window.on_read(chunk_cost(100), chunk_cost(100)), None);
        assert_eq!(window.on_read(chunk_cost(100), chunk_cost(100)), Some(428));
        // A third of 100 reaches the relay's 300: the reader waits (cost 492 ≥ 492).
        assert_eq!(window.on_read(chunk_cost(100), chunk_cost(100)), Some(492));
        assert_eq!(
            window.on_written(3 * chunk_cost(100)),
            None,
            "the writer is not the limit"
        );
        assert_eq!(window.on_relay_window(200), None, "a window never shrinks");
        assert_eq!(window.on_relay_window(400), Some(592));
    }

    #[test]
    fn writes_raise_the_allowance_in_quarters_of_the_window() {
        let (mut window, _) = ReadWindow::unwindowed(WINDOW);
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
        let (mut window, _) = ReadWindow::unwindowed(WINDOW);
        assert_eq!(window.on_read(WINDOW, WINDOW), None);
        assert_eq!(window.on_written(1), Some(WINDOW + 1));
        assert_eq!(window.on_written(1), None, "a total that did not grow");
        assert_eq!(window.on_written(0), None, "totals never go back");
    }

    #[test]
    fn cost_that_never_reaches_the_queue_does_not_hold_the_reader_back() {
        let (mut window, _) = ReadWindow::unwindowed(WINDOW);
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
