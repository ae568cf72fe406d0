//! Where the tray lives: an event loop on the main thread (macOS draws status
//! items only there, Windows delivers the icon's messages to the thread that
//! made it), with the app on a thread of its own sending it what to show.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc::Sender;
use tray_icon::menu::MenuEvent;
use tray_icon::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};
use winit::application::ApplicationHandler;
use winit::event::{StartCause, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::window::WindowId;

use super::menu::{self, TrayMenu};
use super::{TrayView, icon};
use crate::command::{self, Command};
use crate::connection::LinkState;

/// The item's id (on Linux, its name on the session bus).
const ID: &str = "modelrelay-desktop";

/// Linux shows a title beside the tooltip's text (macOS would put it in the
/// menu bar beside the icon, Windows has none), so only there is it set.
const HAS_TITLE: bool = cfg!(target_os = "linux");

/// What the app asks of the tray's loop.
#[derive(Debug)]
pub(crate) enum TrayEvent {
    /// Show this.
    Show(TrayView),
    /// Take the tray down and end the loop.
    Exit,
}

/// The app's handle on the tray: sends it views, takes it down. Without an
/// event loop (no display) it has nothing to send to and the app runs trayless.
pub(crate) struct Tray {
    proxy: Option<EventLoopProxy<TrayEvent>>,
}

impl Tray {
    /// Shows `view` (dropped once the loop has ended).
    pub(crate) fn show(&self, view: TrayView) {
        if let Some(proxy) = &self.proxy {
            let _ = proxy.send_event(TrayEvent::Show(view));
        }
    }
}

impl Drop for Tray {
    /// Ends the tray's loop however the app ended (returned, failed or panicked).
    fn drop(&mut self) {
        if let Some(proxy) = &self.proxy {
            let _ = proxy.send_event(TrayEvent::Exit);
        }
    }
}

/// Runs `app` on a thread of its own while this thread runs the tray's event
/// loop, until the app ends; returns what the app returned. With no event loop
/// to be had (no display) the app runs here, trayless, and that is logged.
pub(crate) fn run_with_tray<F>(commands: Sender<Command>, app: F) -> anyhow::Result<()>
where
    F: FnOnce(Tray) -> anyhow::Result<()> + Send + 'static,
{
    let event_loop = match EventLoop::<TrayEvent>::with_user_event().build() {
        Ok(event_loop) => event_loop,
        Err(error) => {
            tracing::error!(%error, "no tray: no event loop for it (is there a display?)");
            return app(Tray { proxy: None });
        }
    };
    event_loop.set_control_flow(ControlFlow::Wait);
    let tray = Tray {
        proxy: Some(event_loop.create_proxy()),
    };
    let app = std::thread::Builder::new()
        .name("app".into())
        .spawn(move || app(tray))?;
    let mut host = Host::new(commands.clone());
    if let Err(error) = event_loop.run_app(&mut host) {
        tracing::error!(%error, "the tray's event loop failed");
    }
    if !host.exit_asked {
        // The loop ended without the app asking (the platform quit it): the
        // app must leave too, so this waits for room rather than drop it.
        let _ = commands.blocking_send(Command::Quit);
    }
    app.join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the app's thread panicked")))
}

/// The tray on the event loop: made once the loop runs, changed by the app's events.
struct Host {
    /// Whether the worker is wanted, for the Connect/Disconnect item's clicks.
    wanted: Arc<AtomicBool>,
    view: TrayView,
    tray: Option<(TrayIcon, TrayMenu)>,
    /// The app sent [`TrayEvent::Exit`].
    exit_asked: bool,
}

impl Host {
    /// Sends the menu's and the icon's clicks to `commands` (through the
    /// bounded queue: clicks past it are dropped, never kept).
    fn new(commands: Sender<Command>) -> Self {
        let wanted = Arc::new(AtomicBool::new(false));
        let (menu_commands, menu_wanted) = (commands.clone(), wanted.clone());
        MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
            if let Some(command) =
                menu::command_for(event.id.as_ref(), menu_wanted.load(Ordering::Relaxed))
            {
                command::click(&menu_commands, command);
            }
        }));
        let icon_commands = commands;
        TrayIconEvent::set_event_handler(Some(move |event: TrayIconEvent| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                command::click(&icon_commands, Command::OpenSettings);
            }
        }));
        Self {
            wanted,
            view: TrayView::starting(),
            tray: None,
            exit_asked: false,
        }
    }

    /// Puts the tray up; where the platform has none the app runs on, trayless.
    fn create(&mut self) {
        let menu = match TrayMenu::new(&self.view) {
            Ok(menu) => menu,
            Err(error) => return tracing::error!(%error, "no tray: its menu failed"),
        };
        let mut builder = TrayIconBuilder::new()
            .with_id(ID)
            .with_menu(Box::new(menu.menu.clone()))
            // A left click opens the settings; the menu is on the right button.
            .with_menu_on_left_click(false)
            .with_tooltip(tooltip(&self.view));
        if HAS_TITLE {
            builder = builder.with_title(self.view.title());
        }
        if let Some(icon) = icon::of(self.view.state) {
            builder = builder.with_icon(icon);
        }
        match builder.build() {
            Ok(tray) => {
                self.tray = Some((tray, menu));
                self.apply();
            }
            Err(error) => tracing::error!(%error, "no tray: the desktop took no tray icon"),
        }
    }

    /// Makes the tray show `self.view`.
    fn apply(&self) {
        let Some((tray, menu)) = &self.tray else {
            return;
        };
        let view = &self.view;
        self.wanted.store(view.wanted, Ordering::Relaxed);
        menu.show(view);
        if HAS_TITLE {
            tray.set_title(Some(view.title()));
        }
        if let Err(error) = tray.set_tooltip(Some(tooltip(view))) {
            tracing::warn!(%error, "the tray's tooltip");
        }
        if let Err(error) = tray.set_icon(icon::of(view.state)) {
            tracing::warn!(%error, "the tray's icon");
        }
        passive_when_disconnected(tray, view.state);
    }
}

/// The tooltip's text: the detail under the title, where there is no title
/// of its own. (Windows cuts it at 127 characters.)
fn tooltip(view: &TrayView) -> String {
    match view.detail.as_str() {
        detail if HAS_TITLE => detail.to_owned(),
        "" => view.title(),
        detail => format!("{}\n{detail}", view.title()),
    }
}

/// On Linux the item is `Passive` (hosts may tuck it away) while no link is
/// open; elsewhere hiding it would leave nothing to click, so it stays.
fn passive_when_disconnected(tray: &TrayIcon, state: LinkState) {
    if cfg!(target_os = "linux")
        && let Err(error) = tray.set_visible(state != LinkState::Disconnected)
    {
        tracing::warn!(%error, "the tray's status");
    }
}

impl ApplicationHandler<TrayEvent> for Host {
    fn new_events(&mut self, _event_loop: &ActiveEventLoop, cause: StartCause) {
        // macOS wants the loop running before a status item is made.
        if cause == StartCause::Init {
            self.create();
        }
    }

    fn resumed(&mut self, _event_loop: &ActiveEventLoop) {}

    fn window_event(&mut self, _event_loop: &ActiveEventLoop, _id: WindowId, _event: WindowEvent) {}

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: TrayEvent) {
        match event {
            TrayEvent::Show(view) => {
                self.view = view;
                self.apply();
            }
            TrayEvent::Exit => {
                self.exit_asked = true;
                self.tray = None;
                event_loop.exit();
            }
        }
    }
}
