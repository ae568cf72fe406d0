//! Parts of tests skipped on purpose, recorded where people look: the
//! `SKIPPED:` block that `scripts/test` prints at the end of a run, and on
//! which CI fails.

use std::io::Write;

/// The variable naming the file that skips are appended to (`scripts/test` sets it).
pub const SKIP_FILE_VAR: &str = "MODELRELAY_SKIP_FILE";

/// Records that `what` was not checked, and why (say how to make it run).
#[allow(
    clippy::print_stderr,
    reason = "stderr too, for runs outside scripts/test"
)]
pub fn skipped(what: &str, why: &str) {
    let line = format!("{what}: {why}");
    eprintln!("SKIPPED {line}");
    let Some(path) = std::env::var_os(SKIP_FILE_VAR) else {
        return;
    };
    // One short append per skip: lines from test processes running at once stay whole.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record the skip of {what} in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}
