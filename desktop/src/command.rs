//! What the tray's menu asks of the app, and the bounded queue it goes through.

use tokio::sync::mpsc::{self, Receiver, Sender, error::TrySendError};

/// Commands waiting for the app's loop. Clicks come from the session bus,
/// where any program may send them: past this many unread, a click is
/// dropped (a person clicking never gets near it; the loop reads at once
/// except while it waits up to 30 s for a worker to stop).
pub(crate) const COMMAND_QUEUE: usize = 32;

/// The queue from the tray (and the settings window's exit) to the app's loop.
pub(crate) fn queue() -> (Sender<Command>, Receiver<Command>) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Sends a click without waiting: dropped, and logged, when the queue is full.
pub(crate) fn click(commands: &Sender<Command>, command: Command) {
    if let Err(TrySendError::Full(command)) = commands.try_send(command) {
        tracing::warn!(
            ?command,
            "too many menu clicks waiting: this one is dropped"
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_past_the_queue_are_dropped_not_kept() {
        let (commands, mut inbox) = queue();
        for _ in 0..COMMAND_QUEUE + 10 {
            click(&commands, Command::Connect);
        }
        let mut waiting = 0;
        while inbox.try_recv().is_ok() {
            waiting += 1;
        }
        assert_eq!(waiting, COMMAND_QUEUE);
    }
}
