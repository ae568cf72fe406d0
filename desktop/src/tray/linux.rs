//! The tray on Linux: a StatusNotifierItem with a dbusmenu (ksni), shown by
//! any desktop with a StatusNotifierWatcher (KDE, GNOME with AppIndicator, XFCE, …).

use ksni::menu::{MenuItem, StandardItem};
use ksni::{Status, ToolTip, TrayMethods};
use tokio::sync::mpsc::Sender;

use super::{TrayView, icon_name};
use crate::command::{self, Command};

/// The item's id on the bus.
const ID: &str = "modelrelay-desktop";

/// The tray item: what it shows and where its clicks go.
struct Item {
    view: TrayView,
    commands: Sender<Command>,
}

impl Item {
    /// A menu entry that sends `command` when clicked.
    fn entry(label: &str, command: Command, enabled: bool) -> MenuItem<Self> {
        StandardItem {
            label: label.into(),
            enabled,
            activate: Box::new(move |item: &mut Self| {
                command::click(&item.commands, command);
            }),
            ..Default::default()
        }
        .into()
    }
}

impl ksni::Tray for Item {
    fn id(&self) -> String {
        ID.into()
    }
    fn title(&self) -> String {
        self.view.title()
    }
    fn status(&self) -> Status {
        match self.view.state {
            crate::connection::LinkState::Disconnected => Status::Passive,
            _ => Status::Active,
        }
    }
    fn icon_name(&self) -> String {
        icon_name(self.view.state).into()
    }
    fn tool_tip(&self) -> ToolTip {
        ToolTip {
            icon_name: icon_name(self.view.state).into(),
            title: self.view.title(),
            description: self.view.detail.clone(),
            icon_pixmap: Vec::new(),
        }
    }
    fn activate(&mut self, _x: i32, _y: i32) {
        command::click(&self.commands, Command::OpenSettings);
    }
    fn menu(&self) -> Vec<MenuItem<Self>> {
        let view = &self.view;
        let (label, command) = if view.wanted {
            ("Disconnect", Command::Disconnect)
        } else {
            ("Connect", Command::Connect)
        };
        vec![
            StandardItem {
                label: view.title(),
                enabled: false,
                ..Default::default()
            }
            .into(),
            MenuItem::Separator,
            Self::entry("Settings…", Command::OpenSettings, true),
            Self::entry(label, command, view.configured),
            Self::entry("Open dashboard", Command::OpenDashboard, view.configured),
            MenuItem::Separator,
            Self::entry("Quit", Command::Quit, true),
        ]
    }
}

/// The running tray item.
pub(crate) struct Tray {
    handle: Option<ksni::Handle<Item>>,
}

impl Tray {
    /// Puts the item on the session bus; without a bus the app runs on, trayless (logged).
    pub(crate) async fn start(view: TrayView, commands: Sender<Command>) -> Self {
        match (Item { view, commands }).spawn().await {
            Ok(handle) => Self {
                handle: Some(handle),
            },
            Err(error) => {
                tracing::error!(%error, "no tray: the desktop shows no StatusNotifierItem");
                Self { handle: None }
            }
        }
    }

    /// Shows `view`.
    pub(crate) async fn show(&self, view: TrayView) {
        if let Some(handle) = &self.handle {
            handle.update(move |item| item.view = view).await;
        }
    }

    /// Takes the item off the bus.
    pub(crate) async fn remove(self) {
        if let Some(handle) = self.handle {
            handle.shutdown().await;
        }
    }
}
