//! End-to-end tests of ModelRelay: the real `modelrelay-server` and
//! `modelrelay-worker` binaries (and the simulated backend as a process), and
//! the whole system in-process. The tests are in `tests/`; this library finds
//! the binaries for them. `README.md` beside it says how to add a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A binary of the workspace that end-to-end tests start as a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `modelrelay-server`, the relay.
    Server,
    /// `modelrelay-worker`, beside a backend.
    Worker,
    /// `modelrelay-simulated-backend`, the test kit's model server.
    SimulatedBackend,
}

impl Binary {
    /// The executable's file name (without the platform's suffix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "modelrelay-server",
            Self::Worker => "modelrelay-worker",
            Self::SimulatedBackend => "modelrelay-simulated-backend",
        }
    }
}

/// The path of `binary`, built from the current sources for this test run's
/// profile; panics with cargo's output if it cannot be built.
///
/// Cargo builds another package's binaries for a test only when that package
/// is tested too, so the first call builds them all once per test process
/// with `cargo build --workspace --bins --tests` into this run's target
/// directory. The same package selection as `cargo test --workspace` gives
/// the same features, so after a workspace test build this compiles nothing
/// but is a freshness check; run alone (`cargo test -p e2e`) it builds what
/// is stale.
pub fn binary(binary: Binary) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_binaries);
    match dir {
        Ok(dir) => dir.join(format!("{}{}", binary.name(), std::env::consts::EXE_SUFFIX)),
        Err(why) => panic!("the workspace's binaries could not be built: {why}"),
    }
}

/// Builds the workspace's binaries beside this test executable; where they are.
fn build_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("where is this test? {e}"))?;
    // target/<profile>/deps/<test>: the binaries go to target/<profile>/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("this test does not run from a cargo target directory")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("this test does not run from a cargo target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--workspace", "--bins", "--tests", "--quiet"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => return Err("the target directory has no profile folder".into()),
    }
    let output = command
        .output()
        .map_err(|e| format!("cargo did not start: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(profile_dir.to_path_buf())
}
