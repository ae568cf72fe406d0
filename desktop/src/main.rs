//! `modelrelay-desktop`: the ModelRelay worker in a tray app.

// No console window on Windows: the app is its tray icon (and the settings window).
#![cfg_attr(windows, windows_subsystem = "windows")]

mod app;
mod autostart;
mod command;
mod connection;
mod notify;
mod opener;
mod secret;
mod settings_file;
mod tray;
mod validate;
mod window;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// The window process's exit status when it closed without saving.
const NOT_SAVED: u8 = 3;

/// ModelRelay's desktop app: serves your local model server's models through a
/// ModelRelay relay, from a tray icon.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-desktop", version)]
struct Args {
    /// The folder of the settings file (default: the platform's config
    /// directory, e.g. ~/.config/modelrelay-desktop).
    #[arg(long, env = "MODELRELAY_DESKTOP_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Open the settings window at start.
    #[arg(long)]
    open_settings: bool,
    /// Show only the settings window (the tray starts it so); exits 0 when it saved.
    #[arg(long, hide = true)]
    settings_window: bool,
    /// Log level: error, warn, info, debug, trace (RUST_LOG wins).
    #[arg(long, env = "MODELRELAY_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = args.config_dir.unwrap_or_else(settings_file::default_dir);
    init_logs(&args.log_level, &dir, args.settings_window);
    if args.settings_window {
        return match window::show(dir) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(NOT_SAVED),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "the settings window failed");
                ExitCode::FAILURE
            }
        };
    }
    let commands = command::queue();
    let sender = commands.0.clone();
    let open_settings = args.open_settings;
    let outcome = tray::run_with_tray(sender, move |tray| {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|error| anyhow::anyhow!("no async runtime: {error}"))?;
        runtime.block_on(app::run(dir, open_settings, tray, commands))
    });
    modelrelay_process::exit_code(outcome)
}

/// Logs to standard error, or on Windows (where the app has no console) to
/// `modelrelay-desktop.log` in the config directory, emptied at each start
/// (`modelrelay-desktop-settings.log` for the settings window's process).
/// Where that file cannot be made, standard error it is.
fn init_logs(level: &str, dir: &Path, settings_window: bool) {
    let format = modelrelay_process::LogFormat::Text;
    if cfg!(windows) {
        let name = if settings_window {
            "modelrelay-desktop-settings.log"
        } else {
            "modelrelay-desktop.log"
        };
        let opened =
            std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(dir.join(name)));
        if let Ok(file) = opened {
            return modelrelay_process::init_to_file(level, format, file);
        }
    }
    modelrelay_process::init(level, format);
}
