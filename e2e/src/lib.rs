//! End-to-end tests of ModelRelay: the real `modelrelay-server` and
//! `modelrelay-worker` binaries (and the simulated backend as a process), and
//! the whole system in-process. The tests are in `tests/`; this library finds
//! the binaries for them. `README.md` beside it says how to add a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// How long [`Process::logged`] and [`Process::announced`] wait for a line.
const LINE_WAIT: Duration = Duration::from_secs(30);

/// A binary of the workspace that end-to-end tests start as a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `modelrelay-server`, the relay.
    Server,
    /// `modelrelay-worker`, beside a backend.
    Worker,
    /// `modelrelay-simulated-backend`, the test kit's model server.
    SimulatedBackend,
    /// `modelrelay-desktop`, the tray app.
    Desktop,
}

impl Binary {
    /// The executable's file name (without the platform's suffix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "modelrelay-server",
            Self::Worker => "modelrelay-worker",
            Self::SimulatedBackend => "modelrelay-simulated-backend",
            Self::Desktop => "modelrelay-desktop",
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
    // Cargo gives this test the package's own variables; build scripts that
    // watch them (ring's does) would see them change and rebuild, twice per run.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_set_by_cargo_for_a_crate) {
            command.env_remove(name);
        }
    }
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

/// Whether `name` is one of the variables cargo sets for a crate it runs (as
/// opposed to those that configure cargo itself).
fn is_set_by_cargo_for_a_crate(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// A running binary of the workspace, killed when dropped, its standard error
/// read line by line (JSON log lines parsed) as it runs. Its standard output is
/// kept for [`Process::announced`]; the relay and the worker write nothing there.
pub struct Process {
    child: tokio::process::Child,
    logs: mpsc::UnboundedReceiver<Value>,
    /// Every line it wrote to standard error, as written.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `binary` with `args`; `RUST_LOG` is removed so its log level is
    /// the flags', and `DATABASE_URL` (which the server reads as ModelRelay
    /// does) so a developer's own database is never touched.
    pub fn start(binary: Binary, args: &[&str]) -> Self {
        Self::start_with_env(binary, args, &[])
    }

    /// Starts `binary` with `args` and the environment variables `env` (besides
    /// the test's own, less `RUST_LOG` and `DATABASE_URL` unless `env` sets them).
    pub fn start_with_env(binary: Binary, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(self::binary(binary))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.name()));
        let stderr = child.stderr.take().expect("stderr is piped");
        // Unbounded, like `lines`: a test's child writes a few hundred log lines
        // at most, and a line left unread must not stall the child's stderr.
        let (tx, logs) = mpsc::unbounded_channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                seen.lock().expect("lines lock").push(line.clone());
                let entry = serde_json::from_str(&line).unwrap_or(Value::String(line));
                // The test may stop listening; the lines are still kept.
                let _ = tx.send(entry);
            }
        });
        Self { child, logs, lines }
    }

    /// The fields of the first JSON log line (`--log-format json`) from now on
    /// whose message starts with `message`; panics after 30 s or at exit.
    pub async fn logged(&mut self, message: &str) -> Value {
        let wait = async {
            while let Some(entry) = self.logs.recv().await {
                let text = entry["fields"]["message"].as_str().unwrap_or_default();
                if text.starts_with(message) {
                    return entry["fields"].clone();
                }
            }
            panic!("the process exited before logging {message:?}");
        };
        tokio::time::timeout(LINE_WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("the process never logged {message:?}"))
    }

    /// The first standard-error line from now on that contains `needle`, as
    /// written (for text logs); panics after 30 s or at exit.
    pub async fn wrote(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(entry) = self.logs.recv().await {
                let line = match entry {
                    Value::String(line) => line,
                    json => json.to_string(),
                };
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the process exited before writing {needle:?}");
        };
        tokio::time::timeout(LINE_WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("the process never wrote {needle:?}"))
    }

    /// Its peak resident memory so far in bytes (`VmHWM` in
    /// `/proc/<pid>/status`; Linux only), or `None` once it has exited.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id()?)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The address a process that prints `listening on ADDR` first on its
    /// standard output (the simulated backend) listens on.
    pub async fn announced(&mut self) -> String {
        let stdout = self.child.stdout.take().expect("stdout read once");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(LINE_WAIT, lines.next_line())
            .await
            .expect("the process says where it listens within 30 s")
            .expect("its stdout is readable")
            .expect("the process exited before saying where it listens");
        // Whatever it prints later is read and dropped, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        line.strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("not an address announcement: {line:?}"))
            .to_owned()
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks it to stop as a service manager would (SIGTERM) and waits up to
    /// `within` for it to exit; its exit status, or `None` if it did not.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.exited(within).await
    }

    /// Sends it SIGTERM without waiting (a second one stops our binaries at once).
    pub fn sigterm(&self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "SIGTERM could not be sent to {pid}");
    }

    /// Waits up to `within` for it to exit; its exit status, or `None` if it did not.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("the exit status is readable"))
    }

    /// Kills it at once and waits for it to be gone.
    pub async fn stop(mut self) {
        self.child.kill().await.expect("the process can be killed");
    }
}

/// Where test artifacts (screenshots) go: `<target dir>/test-artifacts`, created if needed.
pub fn artifacts_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = workspace_root(&manifest);
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts folder");
    dir
}

/// The nearest folder at or above `start` whose Cargo.toml declares a workspace.
pub fn workspace_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(start)
        .to_path_buf()
}
