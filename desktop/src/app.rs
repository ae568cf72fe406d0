//! The tray app's loop: menu commands in, the worker started and stopped, the
//! tray and notifications following the worker's link state.

use std::path::PathBuf;

use tokio::sync::mpsc::{Receiver, Sender};

use crate::command::{self, Command};
use crate::connection::{LinkState, Worker};
use crate::settings_file::{self as settings, Settings};
use crate::tray::{Tray, TrayView};
use crate::{notify, opener, secret, validate};

/// The app's state between events.
struct App {
    dir: PathBuf,
    commands: Sender<Command>,
    settings: Option<Settings>,
    worker: Option<Worker>,
    /// The user wants the worker running (Connect, or a start with settings).
    wanted: bool,
    state: LinkState,
    detail: String,
    /// A settings window is open.
    window_open: bool,
}

/// Runs the tray app until Quit or a stop signal, reading its commands from
/// `inbox` (`commands` is its sending end) and showing its state on `tray`.
pub(crate) async fn run(
    dir: PathBuf,
    open_settings: bool,
    tray: Tray,
    (commands, mut inbox): (Sender<Command>, Receiver<Command>),
) -> anyhow::Result<()> {
    let mut app = App {
        dir,
        commands: commands.clone(),
        settings: None,
        worker: None,
        wanted: false,
        state: LinkState::Disconnected,
        detail: String::new(),
        window_open: false,
    };
    app.load();
    tray.show(app.view());
    if open_settings || !app.view().configured {
        command::click(&commands, Command::OpenSettings);
    }
    if app.view().configured {
        app.connect().await;
    }
    let mut shown = app.view();
    tray.show(shown.clone());
    let mut stop = std::pin::pin!(modelrelay_process::shutdown_signal());
    loop {
        tokio::select! {
            Some(command) = inbox.recv() => {
                tracing::info!(?command, "menu");
                if command == Command::Quit {
                    break;
                }
                app.on_command(command).await;
            }
            () = status_changed(&mut app.worker) => app.on_status().await,
            () = &mut stop => break,
        }
        let view = app.view();
        if view != shown {
            tracing::info!(state = app.state.word(), wanted = app.wanted, "tray");
            tray.show(view.clone());
            shown = view;
        }
    }
    app.disconnect().await;
    // Dropping the tray takes it down.
    drop(tray);
    Ok(())
}

/// Resolves when the worker's status changed; never without a worker. A worker
/// that ended on its own is dropped.
async fn status_changed(worker: &mut Option<Worker>) {
    let Some(running) = worker else {
        return std::future::pending().await;
    };
    if running.status.changed().await.is_err() {
        *worker = None;
    }
}

impl App {
    /// Reads the settings file; a bad one is logged and the window asks again.
    fn load(&mut self) {
        self.settings = match settings::load(&self.dir) {
            Ok(settings) => settings,
            Err(error) => {
                tracing::error!(%error, "cannot read the settings");
                self.detail = error.to_string();
                None
            }
        };
    }

    /// What the tray shows now.
    fn view(&self) -> TrayView {
        TrayView {
            state: self.state,
            wanted: self.wanted,
            configured: self.settings.as_ref().is_some_and(Settings::is_configured),
            detail: self.detail.clone(),
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect => self.connect().await,
            Command::Disconnect => self.disconnect().await,
            Command::OpenSettings => self.open_settings(),
            Command::SettingsClosed { saved } => {
                self.window_open = false;
                if saved {
                    self.load();
                    self.disconnect().await;
                    self.connect().await;
                }
            }
            Command::OpenDashboard => {
                if let Some(settings) = &self.settings
                    && let Ok(base) = validate::relay_http_base(&settings.relay_url)
                {
                    opener::open(&format!(
                        "{}/dashboard",
                        base.as_str().trim_end_matches('/')
                    ));
                }
            }
            Command::Quit => {}
        }
    }

    /// Starts the worker with the saved settings.
    async fn connect(&mut self) {
        let Some(settings) = self.settings.clone().filter(Settings::is_configured) else {
            return;
        };
        if self.worker.is_some() {
            return;
        }
        self.wanted = true;
        let for_secret = settings.clone();
        let secret = tokio::task::spawn_blocking(move || secret::read(&for_secret))
            .await
            .unwrap_or_default();
        match Worker::start(&settings, secret) {
            Ok(worker) => {
                self.detail = settings.relay_url.clone();
                self.worker = Some(worker);
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot start the worker");
                self.detail = format!("{error:#}");
                self.wanted = false;
            }
        }
    }

    /// Stops the worker gracefully.
    async fn disconnect(&mut self) {
        self.wanted = false;
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
        self.set_state(LinkState::Disconnected).await;
    }

    /// The worker's status changed: the state follows.
    async fn on_status(&mut self) {
        let state = match &self.worker {
            Some(worker) => LinkState::of(&worker.status.borrow()),
            None => LinkState::Disconnected,
        };
        self.set_state(state).await;
    }

    /// Moves to `state`, notifying when the link came up or went down.
    async fn set_state(&mut self, state: LinkState) {
        let before = self.state;
        self.state = state;
        let was_up = before != LinkState::Disconnected;
        let is_up = state != LinkState::Disconnected;
        if was_up != is_up {
            let relay = self
                .settings
                .as_ref()
                .map_or_else(String::new, |s| s.relay_url.clone());
            tracing::info!(state = state.word(), %relay, "link state");
            notify::link_changed(state, &relay).await;
        }
    }

    /// Starts the settings window as a process of its own (the window's event
    /// loop wants the main thread, which the tray keeps), unless one is open.
    fn open_settings(&mut self) {
        if self.window_open {
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(error) => return tracing::error!(%error, "cannot find this executable"),
        };
        let child = tokio::process::Command::new(exe)
            .arg("--settings-window")
            .arg("--config-dir")
            .arg(&self.dir)
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                self.window_open = true;
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let saved = child.wait().await.is_ok_and(|status| status.success());
                    // Waits for room rather than being dropped: the app must
                    // hear that the window closed.
                    let _ = commands.send(Command::SettingsClosed { saved }).await;
                });
            }
            Err(error) => tracing::error!(%error, "cannot open the settings window"),
        }
    }
}
