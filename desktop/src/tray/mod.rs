//! The tray icon: its icon, tooltip and status follow the link state; its menu
//! holds a status line, Settings…, Connect/Disconnect, Open dashboard and Quit.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(not(target_os = "linux"))]
mod other;

#[cfg(target_os = "linux")]
pub(crate) use linux::Tray;
#[cfg(not(target_os = "linux"))]
pub(crate) use other::Tray;

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
    /// The title and status line: `ModelRelay: connected`.
    pub(crate) fn title(&self) -> String {
        format!("ModelRelay: {}", self.state.word())
    }
}

/// The freedesktop icon name for a state (from the standard icon theme).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn icon_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Disconnected => "network-offline",
        LinkState::Connected => "network-idle",
        LinkState::Relaying => "network-transmit-receive",
    }
}
