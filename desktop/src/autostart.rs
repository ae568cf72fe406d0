//! Start on login: an XDG autostart file on Linux; a LaunchAgent on macOS and
//! the Run key on Windows (through `auto-launch`).

/// The app's name for the login item.
#[cfg_attr(target_os = "linux", allow(dead_code))]
const NAME: &str = "ModelRelay";

/// Turns start on login on or off for this executable.
pub(crate) fn apply(enabled: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    platform(enabled, &exe)
}

/// The autostart file on Linux: `$XDG_CONFIG_HOME/autostart/modelrelay-desktop.desktop`.
#[cfg(target_os = "linux")]
pub(crate) fn linux_file() -> Option<std::path::PathBuf> {
    directories::BaseDirs::new().map(|dirs| {
        dirs.config_dir()
            .join("autostart/modelrelay-desktop.desktop")
    })
}

#[cfg(target_os = "linux")]
fn platform(enabled: bool, exe: &std::path::Path) -> anyhow::Result<()> {
    let Some(file) = linux_file() else {
        anyhow::bail!("no home directory for the autostart file");
    };
    if !enabled {
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => return Ok(()),
        }
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let entry = format!(
        "[Desktop Entry]\nType=Application\nName=ModelRelay\n\
         Comment=Serve your local models through a ModelRelay relay\n\
         Exec=\"{}\"\nIcon=modelrelay-desktop\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        exe.display()
    );
    std::fs::write(&file, entry)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn platform(enabled: bool, exe: &std::path::Path) -> anyhow::Result<()> {
    let exe = exe.to_string_lossy();
    let launcher = auto_launch::AutoLaunchBuilder::new()
        .set_app_name(NAME)
        .set_app_path(&exe)
        // macOS: a LaunchAgent rather than an AppleScript login item.
        .set_use_launch_agent(true)
        .build()?;
    if enabled {
        launcher.enable()?;
    } else if launcher.is_enabled()? {
        launcher.disable()?;
    }
    Ok(())
}
