//! Where the tray lives: an event loop on the main thread (macOS draws status
//! items only there, Windows delivers the icon's messages to the thread that
//! made it), with the app on a thread of its own sending it what to show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

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
    /// Show the latest view (in [`LatestView`]).
    ViewChanged,
    /// Take the tray down and end the loop.
    Exit,
}

/// The newest view the app has not had shown yet: one slot, so that however
/// fast the app's state changes and however slow the tray is to show it,
/// at most one view and one [`TrayEvent::ViewChanged`] wait.
#[derive(Clone, Default)]
struct LatestView(Arc<Mutex<Option<TrayView>>>);

impl LatestView {
    /// Puts `view` in the slot; whether the slot was empty (no wake-up pending).
    fn put(&self, view: TrayView) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(view)
            .is_none()
    }

    /// Takes the view out of the slot.
    fn take(&self) -> Option<TrayView> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Where the app's events go: the event loop, a plain channel (Linux with no
/// display, where ksni needs only D-Bus), or nowhere (no tray).
enum Outbox {
    Loop(EventLoopProxy<TrayEvent>),
    Channel(mpsc::Sender<TrayEvent>),
    Nowhere,
}

/// The app's handle on the tray: sends it views, and takes it down when dropped.
pub(crate) struct Tray {
    outbox: Outbox,
    latest: LatestView,
}

impl Tray {
    /// Shows `view`, in place of any the tray has not shown yet (nothing once
    /// the tray has gone).
    pub(crate) fn show(&self, view: TrayView) {
        if self.latest.put(view) {
            self.send(TrayEvent::ViewChanged);
        }
    }

    fn send(&self, event: TrayEvent) {
        match &self.outbox {
            Outbox::Loop(proxy) => {
                let _ = proxy.send_event(event);
            }
            Outbox::Channel(sender) => {
                let _ = sender.send(event);
            }
            Outbox::Nowhere => {}
        }
    }
}

impl Drop for Tray {
    /// Ends the tray however the app ended (returned, failed or panicked).
    fn drop(&mut self) {
        self.send(TrayEvent::Exit);
    }
}

/// Runs `app` on a thread of its own while this thread keeps the tray, until
/// the app ends; returns what the app returned. The tray lives on an event
/// loop; on Linux with no display it lives on a plain loop instead (ksni needs
/// only D-Bus); elsewhere, with no event loop, the app runs trayless (logged).
pub(crate) fn run_with_tray<F>(commands: Sender<Command>, app: F) -> anyhow::Result<()>
where
    F: FnOnce(Tray) -> anyhow::Result<()> + Send + 'static,
{
    let event_loop = match event_loop() {
        Ok(event_loop) => event_loop,
        Err(error) if cfg!(target_os = "linux") => {
            tracing::warn!(%error, "no display for an event loop: the tray goes on D-Bus alone");
            return run_on_a_channel(commands, app);
        }
        Err(error) => {
            tracing::error!(%error, "no tray: no event loop for it");
            return app(Tray {
                outbox: Outbox::Nowhere,
                latest: LatestView::default(),
            });
        }
    };
    event_loop.set_control_flow(ControlFlow::Wait);
    let outbox = Outbox::Loop(event_loop.create_proxy());
    let mut host = Host::new(commands, spawn_app(app, outbox)?);
    if let Err(error) = event_loop.run_app(&mut host) {
        tracing::error!(%error, "the tray's event loop failed");
    }
    host.finish()
}

/// The event loop, made for a tray-only app: on macOS no Dock icon, no menu
/// bar and no focus taken at start, even outside an app bundle.
fn event_loop() -> Result<EventLoop<TrayEvent>, winit::error::EventLoopError> {
    #[cfg_attr(not(target_os = "macos"), allow(unused_mut))]
    let mut builder = EventLoop::<TrayEvent>::with_user_event();
    #[cfg(target_os = "macos")]
    {
        use winit::platform::macos::{ActivationPolicy, EventLoopBuilderExtMacOS};
        builder
            .with_activation_policy(ActivationPolicy::Accessory)
            .with_default_menu(false)
            .with_activate_ignoring_other_apps(false);
    }
    builder.build()
}

/// The tray on a plain loop reading the app's events from a channel.
fn run_on_a_channel<F>(commands: Sender<Command>, app: F) -> anyhow::Result<()>
where
    F: FnOnce(Tray) -> anyhow::Result<()> + Send + 'static,
{
    // Unbounded, yet at most one ViewChanged and the Exit ever wait in it.
    let (sender, events) = mpsc::channel();
    let mut host = Host::new(commands, spawn_app(app, Outbox::Channel(sender))?);
    host.create();
    // Ends at Exit, which the app's handle always sends when dropped.
    while let Ok(event) = events.recv() {
        if !host.on_event(event) {
            break;
        }
    }
    host.finish()
}

/// The app on a thread of its own, its tray handle sending to `outbox`; the
/// views it sends wait in a slot shared with the host.
fn spawn_app<F>(
    app: F,
    outbox: Outbox,
) -> std::io::Result<(JoinHandle<anyhow::Result<()>>, LatestView)>
where
    F: FnOnce(Tray) -> anyhow::Result<()> + Send + 'static,
{
    let latest = LatestView::default();
    let tray = Tray {
        outbox,
        latest: latest.clone(),
    };
    let app = std::thread::Builder::new()
        .name("app".into())
        .spawn(move || app(tray))?;
    Ok((app, latest))
}

/// The tray on the main thread: made once its loop runs, changed by the app's events.
struct Host {
    commands: Sender<Command>,
    /// Whether the worker is wanted, for the Connect/Disconnect item's clicks.
    wanted: Arc<AtomicBool>,
    /// The app's newest view (what a tray made later starts with).
    view: TrayView,
    /// Where the app leaves the views to show.
    latest: LatestView,
    tray: Option<ShownTray>,
    /// The app sent [`TrayEvent::Exit`].
    exit_asked: bool,
    /// The app's thread, until [`Host::finish`] has waited for it.
    app: Option<JoinHandle<anyhow::Result<()>>>,
    /// What the app returned, once waited for.
    outcome: Option<anyhow::Result<()>>,
}

impl Host {
    /// Sends the menu's and the icon's clicks to `commands` (through the
    /// bounded queue: clicks past it are dropped, never kept).
    fn new(
        commands: Sender<Command>,
        (app, latest): (JoinHandle<anyhow::Result<()>>, LatestView),
    ) -> Self {
        let wanted = Arc::new(AtomicBool::new(false));
        let (menu_commands, menu_wanted) = (commands.clone(), wanted.clone());
        MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
            let wanted = menu_wanted.load(Ordering::Relaxed);
            if let Some(command) = menu::command_for(event.id.as_ref(), wanted) {
                command::click(&menu_commands, command);
            }
        }));
        let icon_commands = commands.clone();
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
            commands,
            wanted,
            view: TrayView::starting(),
            latest,
            tray: None,
            exit_asked: false,
            app: Some(app),
            outcome: None,
        }
    }

    /// Handles one of the app's events; `false` once it asked the tray to go.
    fn on_event(&mut self, event: TrayEvent) -> bool {
        match event {
            TrayEvent::ViewChanged => {
                if let Some(view) = self.latest.take() {
                    self.wanted.store(view.wanted, Ordering::Relaxed);
                    if let Some(tray) = &mut self.tray {
                        tray.show(&view);
                    }
                    self.view = view;
                }
                true
            }
            TrayEvent::Exit => {
                self.exit_asked = true;
                self.tray = None;
                false
            }
        }
    }

    /// Takes the tray down and waits for the app, first telling it to quit
    /// when the loop ended without the app asking (the platform quit it);
    /// gives what the app returned. Safe to call twice: macOS ends the
    /// process after [`ApplicationHandler::exiting`], so that calls it too.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.tray = None;
        if let Some(app) = self.app.take() {
            if !self.exit_asked {
                // Waits for room rather than drop it: the app must leave too.
                let _ = self.commands.blocking_send(Command::Quit);
            }
            let ended = app
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the app's thread panicked")));
            self.outcome = Some(ended);
        }
        self.outcome.take().unwrap_or(Ok(()))
    }

    /// Puts the tray up, showing the newest view; where the platform has
    /// none the app runs on, trayless.
    fn create(&mut self) {
        let menu = match TrayMenu::new(&self.view) {
            Ok(menu) => menu,
            Err(error) => return tracing::error!(%error, "no tray: its menu failed"),
        };
        let built = TrayIconBuilder::new()
            .with_id(ID)
            .with_menu(Box::new(menu.menu.clone()))
            // A left click opens the settings; the menu is on the right button.
            .with_menu_on_left_click(false)
            .build();
        match built {
            Ok(icon) => {
                let mut tray = ShownTray {
                    icon,
                    menu,
                    showing: None,
                };
                tray.show(&self.view);
                self.tray = Some(tray);
            }
            Err(error) => tracing::error!(%error, "no tray: the desktop took no tray icon"),
        }
    }
}

/// The tray as made, and the view it shows.
struct ShownTray {
    icon: TrayIcon,
    menu: TrayMenu,
    /// `None` until the first view is shown.
    showing: Option<TrayView>,
}

impl ShownTray {
    /// Makes the tray show `view`, changing only what differs from the view
    /// it shows (each change is a message to the desktop; on Linux a D-Bus
    /// signal), so a request starting or ending redraws the icon and the
    /// status line, not the tooltip.
    fn show(&mut self, view: &TrayView) {
        let before = self.showing.as_ref();
        self.menu.show(view);
        if before.is_none_or(|before| before.state != view.state) {
            if HAS_TITLE {
                self.icon.set_title(Some(view.title()));
            }
            if let Err(error) = self.icon.set_icon(icon::of(view.state)) {
                tracing::warn!(%error, "the tray's icon");
            }
            passive_when_disconnected(&self.icon, view.state);
        }
        let text = tooltip(view);
        if before.is_none_or(|before| tooltip(before) != text)
            && let Err(error) = self.icon.set_tooltip(Some(text))
        {
            tracing::warn!(%error, "the tray's tooltip");
        }
        self.showing = Some(view.clone());
    }
}

/// Windows keeps at most 127 UTF-16 units of a tooltip (and tray-icon would
/// copy 128 with no terminator), so it is cut to that there.
const WINDOWS_TOOLTIP_UNITS: usize = 127;

/// The tooltip's text: the detail under the title, where there is no title
/// of its own.
fn tooltip(view: &TrayView) -> String {
    let text = match view.detail.as_str() {
        detail if HAS_TITLE => detail.to_owned(),
        "" => view.title(),
        detail => format!("{}\n{detail}", view.title()),
    };
    if cfg!(windows) {
        cut_to_utf16_units(&text, WINDOWS_TOOLTIP_UNITS).to_owned()
    } else {
        text
    }
}

/// The longest start of `text` that is at most `units` UTF-16 units, cut
/// between characters (never inside a surrogate pair).
fn cut_to_utf16_units(text: &str, units: usize) -> &str {
    let mut used = 0;
    for (at, character) in text.char_indices() {
        used += character.len_utf16();
        if used > units {
            return &text[..at];
        }
    }
    text
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
        if !self.on_event(event) {
            event_loop.exit();
        }
    }

    /// The loop is ending, by the app's Exit or the platform's quit (on macOS
    /// the process ends right after this): the worker is stopped here.
    fn exiting(&mut self, _event_loop: &ActiveEventLoop) {
        let outcome = self.finish();
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_the_tray_has_not_shown_wait_in_one_slot_the_newest_kept() {
        let latest = LatestView::default();
        let mut view = TrayView::starting();
        assert!(latest.put(view.clone()), "the first view wakes the tray");
        view.state = LinkState::Relaying;
        assert!(!latest.put(view.clone()), "a wake-up is already pending");
        view.state = LinkState::Connected;
        assert!(!latest.put(view.clone()));
        assert_eq!(latest.take(), Some(view.clone()));
        assert_eq!(latest.take(), None);
        assert!(latest.put(view), "once taken, the next view wakes it again");
    }

    #[test]
    fn a_tooltip_is_cut_between_characters_at_the_windows_limit() {
        assert_eq!(cut_to_utf16_units("short", WINDOWS_TOOLTIP_UNITS), "short");
        let long = "a".repeat(200);
        assert_eq!(cut_to_utf16_units(&long, WINDOWS_TOOLTIP_UNITS).len(), 127);
        // 126 units, then a character of two: it does not fit and is left out whole.
        let pair = format!("{}😀tail", "a".repeat(126));
        assert_eq!(
            cut_to_utf16_units(&pair, WINDOWS_TOOLTIP_UNITS),
            "a".repeat(126)
        );
        assert_eq!(cut_to_utf16_units("é😀", 3), "é😀");
        assert_eq!(cut_to_utf16_units("é😀", 2), "é");
    }
}
