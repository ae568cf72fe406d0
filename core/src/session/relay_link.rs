//! One relay the worker links to: where its link is, how it speaks, and what it was told.

use std::time::Instant;

use super::liveness::LinkWatch;
use crate::backoff::{Backoff, BackoffConfig};
use crate::ids::LinkId;
use crate::wire::{LinkFlow, WireVersion};

/// Where a link to one relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkState {
    /// No link; dial at the instant, if any.
    Down { reconnect_at: Option<Instant> },
    /// Asked the driver to dial.
    Connecting,
    /// Link open, `register` sent, waiting for the ack (until the deadline, if any).
    Registering { deadline: Option<Instant> },
    /// Registered: serving.
    Ready,
    /// Asked the driver to close the link.
    Closing,
}

/// One relay's link, with everything the session keeps about it alone.
///
/// Each link registers, reconnects (with its own backoff) and drains on its
/// own; what they share (the slots, the models) lives in the session.
#[derive(Debug)]
pub(super) struct RelayLink {
    pub(super) state: LinkState,
    pub(super) backoff: Backoff,
    /// The encoding of the link, once it is up.
    pub(super) wire: Option<WireVersion>,
    /// Whether the relay grants answer windows on it.
    pub(super) flow: LinkFlow,
    /// The relay has the current models (else a `models_update` is owed once registered).
    pub(super) models_sent: bool,
    /// The relay last heard a load that is no longer the worker's: a `models_update` is owed.
    pub(super) load_owed: bool,
    /// The worker refused one of this relay's requests as at capacity since it
    /// last told it its load: the relay rests the worker until told again, so
    /// it hears the next change, its own requests' included.
    pub(super) refused_since_told: bool,
    /// The relay asked this worker to drain: drop the link at this instant.
    pub(super) drain_deadline: Option<Instant>,
    /// The relay asked this worker to drain (until the link ends).
    pub(super) draining: bool,
    /// The relay is no longer wanted (its address left DNS): take no new work
    /// on it, close it once its requests end, and never dial it again.
    pub(super) retired: bool,
    /// When to probe the link, and when to give it up (a WebSocket link only).
    pub(super) watch: LinkWatch,
}

impl RelayLink {
    /// A link about to be dialed; its reconnect jitter differs from its siblings'.
    pub(super) fn connecting(id: LinkId, backoff: BackoffConfig, jitter_seed: u64) -> Self {
        // Links to several relays that fail together must not redial in step.
        let seed = jitter_seed ^ id.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            state: LinkState::Connecting,
            backoff: Backoff::new(backoff, seed),
            wire: None,
            flow: LinkFlow::Unwindowed,
            models_sent: false,
            load_owed: false,
            refused_since_told: false,
            drain_deadline: None,
            draining: false,
            retired: false,
            watch: LinkWatch::default(),
        }
    }

    /// Whether the link is up (registering or registered).
    pub(super) fn linked(&self) -> bool {
        matches!(self.state, LinkState::Registering { .. } | LinkState::Ready)
    }

    /// Whether the link is up or being opened (so closing it means something).
    pub(super) fn open_or_opening(&self) -> bool {
        self.linked() || self.state == LinkState::Connecting
    }

    /// Whether the relay may route new work here.
    pub(super) fn takes_work(&self) -> bool {
        self.state == LinkState::Ready && !self.draining && !self.retired
    }

    /// Forgets everything about the link that ended, keeping its backoff.
    pub(super) fn went_down(&mut self) {
        // The next `register` carries the load.
        self.load_owed = false;
        self.refused_since_told = false;
        self.wire = None;
        self.flow = LinkFlow::Unwindowed;
        self.drain_deadline = None;
        self.draining = false;
        self.watch = LinkWatch::default();
    }

    /// The earliest instant this link has something to do.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let state = match self.state {
            LinkState::Down { reconnect_at } => reconnect_at,
            LinkState::Registering { deadline } => deadline,
            _ => None,
        };
        [state, self.drain_deadline, self.watch.deadline()]
            .into_iter()
            .flatten()
            .min()
    }
}
