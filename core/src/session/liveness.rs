//! Whether the worker's link is alive, judged by evidence the worker controls.
//!
//! A relay's own ping cadence is no such evidence: ModelRelay's server pings a
//! worker only after 30 s of silence *from the worker*, which a streaming
//! worker never is, so it may send nothing for as long as a stream lasts. The
//! worker therefore asks for a sign of life itself. On a probed link
//! (WebSocket), after [`LINK_PROBE_AFTER`] without hearing anything it sends a
//! WebSocket ping, which every WebSocket peer answers with a pong (RFC 6455,
//! 5.5.2); if nothing at all (the pong, any frame, a ping) arrives within
//! [`LINK_PROBE_TIMEOUT`] of the probe, the link is dead. A quiet link is so
//! given up at most 45 s after the last thing heard, and a relay that pauses
//! (a stalled process, a full inbox that stops it reading) keeps its workers
//! through pauses of up to 30 s. On QUIC the transport judges: its keep-alives
//! and idle timeout close a dead connection, and the session is told the link
//! went down.

use std::time::{Duration, Instant};

/// How long the worker hears nothing on a probed link before it probes.
pub const LINK_PROBE_AFTER: Duration = Duration::from_secs(15);

/// How long after a probe the worker waits for any sign of life before it gives the link up.
pub const LINK_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who judges whether a link is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// The session: it asks for probes ([`SessionOutput::ProbeLink`](super::SessionOutput::ProbeLink))
    /// and gives up a link that answers none (WebSocket).
    Probed,
    /// The transport: its keep-alives and idle timeout end a dead link (QUIC).
    Transport,
}

/// What a link's watch asks for when its time comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing yet.
    Alive,
    /// Ask the peer for a sign of life.
    Probe,
    /// No sign of life within the probe timeout: the link is dead.
    Dead,
}

/// The watch over the current link: when to probe, and when to give up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct LinkWatch {
    /// Probe at this instant unless something is heard first.
    probe_at: Option<Instant>,
    /// A probe is out: dead at this instant unless something is heard first.
    dead_at: Option<Instant>,
    /// How long to hear nothing before probing, and how long a probe may go unanswered.
    timing: Option<(Duration, Duration)>,
}

impl LinkWatch {
    /// Watches a link that just came up; a transport-judged link is not watched.
    pub(super) fn start(
        now: Instant,
        liveness: Liveness,
        probe_after: Duration,
        probe_timeout: Duration,
    ) -> Self {
        match liveness {
            Liveness::Transport => Self::default(),
            Liveness::Probed => {
                let mut watch = Self {
                    timing: Some((probe_after, probe_timeout)),
                    ..Self::default()
                };
                watch.heard(now);
                watch
            }
        }
    }

    /// Something arrived on the link: it is alive, and quiet time starts over.
    pub(super) fn heard(&mut self, now: Instant) {
        if let Some((probe_after, _)) = self.timing {
            self.probe_at = now.checked_add(probe_after);
            self.dead_at = None;
        }
    }

    /// When [`LinkWatch::on_timeout`] has something to say.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.dead_at.or(self.probe_at)
    }

    /// Time passed: probe once the link has been quiet long enough, give it up
    /// once a probe went unanswered for the timeout.
    pub(super) fn on_timeout(&mut self, now: Instant) -> Verdict {
        if self.dead_at.is_some_and(|at| at <= now) {
            *self = Self::default();
            return Verdict::Dead;
        }
        match (self.probe_at, self.timing) {
            (Some(at), Some((_, probe_timeout))) if at <= now => {
                self.probe_at = None;
                self.dead_at = now.checked_add(probe_timeout);
                Verdict::Probe
            }
            _ => Verdict::Alive,
        }
    }
}
