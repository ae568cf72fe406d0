//! Desktop notifications when the worker connects or disconnects; a failure to
//! notify (no notification daemon) is logged, never fatal.

use crate::connection::LinkState;

/// Tells the desktop the link went to `state` (relaying is not announced).
pub(crate) async fn link_changed(state: LinkState, relay: &str) {
    let body = match state {
        LinkState::Connected => format!("Connected to {relay}: serving your models."),
        LinkState::Disconnected => format!("Disconnected from {relay}."),
        LinkState::Relaying => return,
    };
    let mut notification = notify_rust::Notification::new();
    notification
        .summary("ModelRelay")
        .body(&body)
        .appname("ModelRelay");
    #[cfg(all(unix, not(target_os = "macos")))]
    let shown = notification.show_async().await.map(drop);
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    let shown = notification.show().map(drop);
    if let Err(error) = shown {
        tracing::info!(%error, "no desktop notification");
    }
}
