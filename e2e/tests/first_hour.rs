//! What a new operator meets in the first hour: the server binary's log
//! through a pipe, its warnings and error messages at start-up, `/metrics` as
//! a scraper reads it, and the login page during its cooldown.

mod common;

use e2e::{Binary, Process};

/// The escape that starts an ANSI colour sequence.
const ANSI_ESCAPE: &str = "\u{1b}[";

/// A server on a free loopback port with `args`, logging text (the default).
fn start_text_server(args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut all = vec!["--listen", "127.0.0.1:0", "--worker-secret", "s"];
    all.extend(args);
    Process::start_with_env(Binary::Server, &all, env)
}

#[tokio::test]
async fn logs_through_a_pipe_carry_no_colour_codes() {
    // NO_COLOR empty counts as unset: only the pipe may turn colour off.
    let mut server = start_text_server(&["--log-level", "debug"], &[("NO_COLOR", "")]);
    server.wrote("relay listening").await;
    let lines = server.lines.lock().unwrap().clone();
    for line in &lines {
        assert!(!line.contains(ANSI_ESCAPE), "a colour code in {line:?}");
    }
    assert!(
        lines.iter().any(|line| line.contains(" INFO ")),
        "{lines:?}"
    );
    server.stop().await;
}
