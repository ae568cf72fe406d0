//! What the binaries share: log set-up (`RUST_LOG` wins over `--log-level`), signals,
//! seeds, the host's name, shell completions, the error they stop with.

mod failure;
mod log;

pub use failure::{error_line, exit_code};
pub use log::{LogFormat, init, init_to_file};

/// The host's name (`HOSTNAME`, else the system's, on Linux, macOS and
/// Windows alike), or `fallback` when neither gives one.
pub fn host_name(fallback: &str) -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| gethostname::gethostname().into_string().ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// A seed for reconnect jitter that differs between processes and starts.
pub fn process_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Resolves at the first SIGTERM or Ctrl-C; a second one exits the process at once.
pub async fn graceful_stop_signal() {
    shutdown_signal().await;
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

/// Prints `C`'s shell completions for `shell` on stdout.
pub fn print_completions<C: clap::CommandFactory>(shell: clap_complete::Shell) {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_name_is_the_systems_one_trimmed() {
        let name = super::host_name("fallback");
        assert!(!name.is_empty() && name.trim() == name, "{name:?}");
        let system = gethostname::gethostname().into_string().unwrap_or_default();
        let from_env = std::env::var("HOSTNAME").unwrap_or_default();
        assert!(
            name == system.trim() || name == from_env.trim(),
            "{name:?} is neither the system's {system:?} nor HOSTNAME {from_env:?}"
        );
    }
}
