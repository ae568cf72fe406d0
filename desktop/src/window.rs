//! The settings window (egui through eframe, OpenGL on X11): the fields, their
//! problems inline, Save after the checks pass. It runs as a process of its own
//! (`--settings-window`); its exit status says whether it saved.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eframe::egui;

use crate::autostart;
use crate::secret::{self, Stored};
use crate::settings_file::{self as settings, Settings};
use crate::validate::{self, Problems};

/// The window's size in points.
const SIZE: [f32; 2] = [520.0, 520.0];

/// The color of a problem under its field.
const PROBLEM: egui::Color32 = egui::Color32::from_rgb(200, 40, 40);

/// The window's state.
struct Window {
    dir: PathBuf,
    settings: Settings,
    secret: String,
    poll: String,
    problems: Problems,
    /// What the last save did, or why it could not.
    outcome: Option<String>,
    saved: Arc<AtomicBool>,
    /// Frames drawn, up to [`SHOWN_AFTER`].
    frames: u32,
    /// The first field has been given the keyboard (done once, when the
    /// window first has the keyboard focus), so one can type at once and move
    /// on with Tab.
    first_field_focused: bool,
}

/// Frames after which the window counts as shown (logged once: the first frame
/// is laid out before it reaches the screen).
const SHOWN_AFTER: u32 = 3;

/// Shows the settings window until it is closed; whether it saved.
pub(crate) fn show(dir: PathBuf) -> anyhow::Result<bool> {
    let loaded = settings::load(&dir)?;
    let settings = loaded.unwrap_or_else(Settings::initial);
    let secret = secret::read(&settings);
    let saved = Arc::new(AtomicBool::new(false));
    let window = Window {
        dir,
        poll: settings.models_poll_interval.to_string(),
        secret,
        problems: Problems::default(),
        outcome: None,
        saved: Arc::clone(&saved),
        frames: 0,
        first_field_focused: false,
        settings,
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("ModelRelay settings")
            .with_app_id("modelrelay-desktop")
            .with_inner_size(SIZE),
        ..Default::default()
    };
    eframe::run_native(
        "ModelRelay settings",
        options,
        Box::new(|_| Ok(Box::new(window))),
    )
    .map_err(|error| anyhow::anyhow!("the settings window: {error}"))?;
    Ok(saved.load(Ordering::SeqCst))
}

/// A text field with its label and, under it, its problem; whether Enter was
/// pressed in it (which saves, as in most forms).
fn field(
    ui: &mut egui::Ui,
    label: &str,
    text: &mut String,
    problem: Option<&String>,
    password: bool,
) -> (egui::Response, bool) {
    ui.label(label);
    let response = ui.add(
        egui::TextEdit::singleline(text)
            .password(password)
            .desired_width(f32::INFINITY),
    );
    let entered = response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    if let Some(problem) = problem {
        ui.colored_label(PROBLEM, problem);
    }
    ui.add_space(4.0);
    (response, entered)
}

impl Window {
    /// Checks everything, then saves: the secret to the keyring (or the file),
    /// the file, autostart; whether it saved.
    fn save(&mut self) -> bool {
        let poll = self.poll.trim().parse::<u64>();
        self.problems = validate::all(&self.settings, &self.secret);
        if poll.is_err() {
            self.problems.models = Some("the poll interval is a number of seconds".into());
        }
        let (Ok(poll), true) = (poll, self.problems.is_empty()) else {
            self.outcome = Some("Not saved: see the problems above.".into());
            return false;
        };
        self.settings.models_poll_interval = poll;
        let stored = secret::store(&mut self.settings, self.secret.trim());
        if let Err(error) = settings::save(&self.dir, &self.settings) {
            self.outcome = Some(format!("Not saved: {error}"));
            return false;
        }
        if let Err(error) = autostart::apply(self.settings.start_on_login) {
            tracing::warn!(%error, "start on login");
        }
        self.saved.store(true, Ordering::SeqCst);
        self.outcome = Some(match stored {
            Stored::Keyring => "Saved. The secret is in your keyring.".into(),
            Stored::File => "Saved. No keyring here: the secret is in the settings file, \
                             readable by you alone."
                .into(),
        });
        true
    }
}

impl Window {
    /// Draws the fields; whether Enter was pressed in one of them.
    fn fields(&mut self, ui: &mut egui::Ui) -> bool {
        let problems = self.problems.clone();
        let s = &mut self.settings;
        let (relay, mut entered) = field(
            ui,
            "Relay URL (http, https, ws, wss or quic)",
            &mut s.relay_url,
            problems.relay.as_ref(),
            false,
        );
        if !self.first_field_focused && ui.input(|i| i.focused) {
            relay.request_focus();
            self.first_field_focused = true;
            tracing::info!("the first field has the keyboard");
        }
        let rest = [
            (
                "Worker secret",
                &mut self.secret,
                problems.secret.as_ref(),
                true,
            ),
            (
                "Backend URL (your model server)",
                &mut s.backend_url,
                problems.backend.as_ref(),
                false,
            ),
            (
                "Models (* for all the backend lists, or a comma list)",
                &mut s.models,
                None,
                false,
            ),
            (
                "Re-read the backend's models every (seconds, 0: never)",
                &mut self.poll,
                problems.models.as_ref(),
                false,
            ),
            (
                "Worker name (empty: this computer's name)",
                &mut s.worker_name,
                None,
                false,
            ),
        ];
        for (label, text, problem, password) in rest {
            entered |= field(ui, label, text, problem, password).1;
        }
        ui.checkbox(&mut s.start_on_login, "Start on login");
        entered
    }
}

impl eframe::App for Window {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        if self.frames < SHOWN_AFTER {
            self.frames += 1;
            if self.frames == SHOWN_AFTER {
                tracing::info!("settings window shown");
            } else {
                ctx.request_repaint();
            }
        }
        egui::CentralPanel::default().show(ctx, |ui| {
            ui.heading("ModelRelay");
            ui.add_space(6.0);
            let mut save = self.fields(ui);
            ui.add_space(8.0);
            ui.horizontal(|ui| {
                save |= ui.button("Save and connect").clicked();
                if ui.button("Close").clicked() {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            // A save that worked closes the window: the tray then connects
            // with the new settings (it hears of the save from this process's exit).
            if save && self.save() {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            if let Some(outcome) = &self.outcome {
                ui.label(outcome);
            }
            if self.settings.worker_secret.is_some() {
                ui.small(
                    "No keyring was found: the secret is kept in the settings file (mode 600).",
                );
            }
        });
    }
}
