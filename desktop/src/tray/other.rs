//! The tray on macOS and Windows: not built yet (TODO: `tray-icon` with the
//! same menu). The app runs without one, its settings window opened at start.

use tokio::sync::mpsc::Sender;

use super::TrayView;
use crate::command::{self, Command};

/// No tray: a placeholder with the Linux tray's interface.
pub(crate) struct Tray;

impl Tray {
    /// Logs that there is no tray here and opens the settings.
    pub(crate) async fn start(_view: TrayView, commands: Sender<Command>) -> Self {
        tracing::warn!("no tray on this platform yet: opening the settings window");
        command::click(&commands, Command::OpenSettings);
        Self
    }

    /// Nothing to show it on.
    pub(crate) async fn show(&self, _view: TrayView) {}

    /// Nothing to remove.
    pub(crate) async fn remove(self) {}
}
