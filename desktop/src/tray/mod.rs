//! The tray icon: its icon, title, tooltip and status follow the link state;
//! its menu holds a status line, Settings…, Connect/Disconnect, Open dashboard
//! and Quit. One implementation for every platform (`tray-icon`): ksni's
//! StatusNotifierItem on Linux, the status bar on macOS, the notification area
//! on Windows; it lives on the event loop of the main thread ([`host`]).

mod host;
mod icon;
mod menu;

pub(crate) use host::{Tray, run_with_tray};

use crate::connection::LinkState;

/// What the tray shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrayView {
    /// The link state.
    pub(crate) state: LinkState,
    /// Whether the user wants the worker running (the menu offers Disconnect).
    pub(crate) wanted: bool,
    /// Whether there are settings to connect with.
    pub(crate) configured: bool,
    /// A line more for the tooltip (the relay, or what went wrong).
    pub(crate) detail: String,
}

impl TrayView {
    /// What the tray shows before the app has said anything.
    pub(crate) fn starting() -> Self {
        Self {
            state: LinkState::Disconnected,
            wanted: false,
            configured: false,
            detail: String::new(),
        }
    }

    /// The title and status line: `ModelRelay: connected`.
    pub(crate) fn title(&self) -> String {
        format!("ModelRelay: {}", self.state.word())
    }
}
