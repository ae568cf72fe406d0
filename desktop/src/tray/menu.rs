//! The tray's menu: its items, how a view changes them, and which command a
//! click on each sends.

use tray_icon::menu::{Menu, MenuItem, PredefinedMenuItem};

use super::TrayView;
use crate::command::Command;

/// The menu items' ids, which clicks come back with.
const SETTINGS: &str = "settings";
const CONNECTION: &str = "connection";
const DASHBOARD: &str = "dashboard";
const QUIT: &str = "quit";
const STATUS: &str = "status";

/// The menu and the items a view changes.
pub(crate) struct TrayMenu {
    /// The menu the tray shows.
    pub(crate) menu: Menu,
    status: MenuItem,
    connection: MenuItem,
    dashboard: MenuItem,
}

impl TrayMenu {
    /// The menu, showing `view`.
    pub(crate) fn new(view: &TrayView) -> Result<Self, tray_icon::menu::Error> {
        let this = Self {
            menu: Menu::new(),
            status: MenuItem::with_id(STATUS, view.title(), false, None),
            connection: MenuItem::with_id(CONNECTION, connection_label(view), false, None),
            dashboard: MenuItem::with_id(DASHBOARD, "Open dashboard", false, None),
        };
        this.menu.append_items(&[
            &this.status,
            &PredefinedMenuItem::separator(),
            &MenuItem::with_id(SETTINGS, "Settings…", true, None),
            &this.connection,
            &this.dashboard,
            &PredefinedMenuItem::separator(),
            &MenuItem::with_id(QUIT, "Quit", true, None),
        ])?;
        this.show(view);
        Ok(this)
    }

    /// Makes the items say what `view` says.
    pub(crate) fn show(&self, view: &TrayView) {
        self.status.set_text(view.title());
        self.connection.set_text(connection_label(view));
        self.connection.set_enabled(view.configured);
        self.dashboard.set_enabled(view.configured);
    }
}

/// Connect, or Disconnect while the worker is wanted.
fn connection_label(view: &TrayView) -> &'static str {
    if view.wanted { "Disconnect" } else { "Connect" }
}

/// The command a click on item `id` sends, the worker wanted or not (the
/// Connect/Disconnect item is one item whose label follows that); `None` for
/// the status line and ids that are not ours.
pub(crate) fn command_for(id: &str, wanted: bool) -> Option<Command> {
    match id {
        SETTINGS => Some(Command::OpenSettings),
        CONNECTION if wanted => Some(Command::Disconnect),
        CONNECTION => Some(Command::Connect),
        DASHBOARD => Some(Command::OpenDashboard),
        QUIT => Some(Command::Quit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_item_sends_its_command_and_connection_follows_what_is_wanted() {
        assert_eq!(command_for(SETTINGS, false), Some(Command::OpenSettings));
        assert_eq!(command_for(CONNECTION, false), Some(Command::Connect));
        assert_eq!(command_for(CONNECTION, true), Some(Command::Disconnect));
        assert_eq!(command_for(DASHBOARD, true), Some(Command::OpenDashboard));
        assert_eq!(command_for(QUIT, true), Some(Command::Quit));
        assert_eq!(command_for(STATUS, true), None);
        assert_eq!(command_for("someone-else's", true), None);
    }

    // macOS makes menus on the main thread only, which a test thread is not.
    #[test]
    #[cfg_attr(
        target_os = "macos",
        ignore = "muda makes menus on the main thread only"
    )]
    fn the_items_follow_the_view() {
        let mut view = TrayView::starting();
        let menu = TrayMenu::new(&view).unwrap();
        assert_eq!(menu.status.text(), "ModelRelay: disconnected");
        assert_eq!(menu.connection.text(), "Connect");
        assert!(!menu.connection.is_enabled() && !menu.dashboard.is_enabled());
        view.configured = true;
        view.wanted = true;
        view.state = crate::connection::LinkState::Relaying;
        menu.show(&view);
        assert_eq!(menu.status.text(), "ModelRelay: relaying");
        assert_eq!(menu.connection.text(), "Disconnect");
        assert!(menu.connection.is_enabled() && menu.dashboard.is_enabled());
    }
}
