//! What the tray's menu asks of the app.

/// A menu click, or the settings window closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start the worker.
    Connect,
    /// Stop the worker gracefully.
    Disconnect,
    /// Show the settings window.
    OpenSettings,
    /// The settings window closed; whether it saved.
    SettingsClosed {
        /// The user saved new settings.
        saved: bool,
    },
    /// Open the relay's dashboard in the browser.
    OpenDashboard,
    /// Stop the worker and leave.
    Quit,
}
