//! Opens a URL with the system's opener (xdg-open, open, start).

/// Opens `url` in the default browser; a failure is logged.
pub(crate) fn open(url: &str) {
    #[cfg(target_os = "macos")]
    let mut command = std::process::Command::new("open");
    #[cfg(target_os = "windows")]
    let mut command = {
        let mut command = std::process::Command::new("cmd");
        command.args(["/C", "start", ""]);
        command
    };
    #[cfg(not(any(target_os = "macos", target_os = "windows")))]
    let mut command = std::process::Command::new("xdg-open");
    match command.arg(url).spawn() {
        // The opener hands the URL on and exits; reap it off the app's thread.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(error) => tracing::warn!(%error, %url, "cannot open the browser"),
    }
}
