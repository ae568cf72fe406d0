//! The desktop tray app (`modelrelay-desktop`) for real on Linux: under Xvfb,
//! with a private session bus and a minimal `org.kde.StatusNotifierWatcher`
//! served by this test (it records the items that register), the app starts
//! against a relay and the simulated backend (as an executable). The test
//! checks the item registers with the watcher, its `Status`, `ToolTip` and
//! `IconPixmap` say connected (and relaying while a request runs), its menu (dbusmenu) has the items, the relay lists the worker,
//! Disconnect clicked through dbusmenu takes it off the relay, and it keeps a
//! screenshot of the settings window (opened with `--open-settings`) at
//! `target/test-artifacts/desktop-settings.png`, taken with `xwd` and
//! converted by ImageMagick's `convert`. Another test starts with nothing
//! configured and types the relay URL, the secret and the backend URL into the
//! settings window with `xdotool` (Tab between fields, Enter saves), then
//! checks the relay lists the worker and the item says connected. A third test packs the `.deb` from
//! the binary this test ran, checks it with `dpkg-deb`, and (as root, with no
//! copy of the package already there) installs it with `apt-get`, runs it
//! from the PATH and removes it again, leaving the machine as it was.
//!
//! The keyring: the private bus has no Secret Service, so the app uses its
//! documented fallback, the secret in the settings file (mode 600); the test
//! writes it there.
//!
//! Without Xvfb, dbus-daemon, xwd, convert or xdotool the test fails and says how to
//! install them, unless `MODELRELAY_SKIP_DESKTOP_TESTS=1` asks to skip it.
#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Binary, Process};
use modelrelay_relay::{RunningServer, ServerConfig};
use modelrelay_testkit::Http;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zbus::zvariant::{OwnedValue, Value};

const SKIP_VAR: &str = "MODELRELAY_SKIP_DESKTOP_TESTS";
/// What the test runs besides the app, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/Xvfb", "xvfb"),
    ("/usr/bin/dbus-daemon", "dbus"),
    ("/usr/bin/xwd", "x11-apps"),
    ("/usr/bin/convert", "imagemagick"),
    (XDOTOOL, "xdotool"),
];
/// Types into the settings window and presses its keys, as a person would.
const XDOTOOL: &str = "/usr/bin/xdotool";
const SECRET: &str = "desktop-secret";
const WORKER_NAME: &str = "desktop-test";
/// How long the app may take to reach a state the test waits for.
const WAIT: Duration = Duration::from_secs(30);
/// How often a wait looks again at state the app changes in its own process.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The watcher the test serves: it records who registered.
#[derive(Clone, Default)]
struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    /// An item registers: `service` is its bus name (or a path, with the sender's name).
    async fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let name = if service.starts_with('/') {
            header.sender().map(|s| s.to_string()).unwrap_or_default()
        } else {
            service.to_owned()
        };
        self.items.lock().unwrap().push(name);
    }

    async fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    async fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    async fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    async fn protocol_version(&self) -> i32 {
        0
    }
}

/// Xvfb and a session bus, ended when dropped.
struct Desktop {
    display: String,
    bus: String,
    _xvfb: Child,
    _dbus: Child,
}

impl Desktop {
    async fn start() -> Self {
        let (display, xvfb) = start_xvfb().await;
        let mut dbus = Command::new("/usr/bin/dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon starts");
        let stdout = dbus.stdout.take().expect("piped");
        let bus = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
            .await
            .expect("dbus-daemon prints its address")
            .expect("readable")
            .expect("an address line");
        Self {
            display,
            bus,
            _xvfb: xvfb,
            _dbus: dbus,
        }
    }
}

/// Xvfb on a display it picks itself (`-displayfd 1`: it writes the number
/// to its standard output once it accepts connections).
async fn start_xvfb() -> (String, Child) {
    let mut child = Command::new("/usr/bin/Xvfb")
        .args([
            "-displayfd",
            "1",
            "-nolisten",
            "tcp",
            "-screen",
            "0",
            "1024x768x24",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Xvfb starts");
    let stdout = child.stdout.take().expect("piped");
    let number = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("Xvfb says its display")
        .expect("readable")
        .expect("a display number");
    (format!(":{}", number.trim()), child)
}

/// Whether the test runs; panics with the install hint when a tool is missing.
fn tools_or_skip() -> bool {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        modelrelay_testkit::skip::skipped(
            "the desktop tray app under Xvfb",
            &format!("{SKIP_VAR}=1 (unset it; scripts/test installs Xvfb and dbus)"),
        );
        return false;
    }
    for (tool, package) in TOOLS {
        assert!(
            Path::new(tool).exists(),
            "{tool} not found: this test needs it. Install it with `apt-get install -y {package}` \
             (scripts/test does), or set {SKIP_VAR}=1 to skip the desktop test on purpose."
        );
    }
    true
}

/// Waits until `check` gives something, looking every [`LOOK_EVERY`]; panics after [`WAIT`].
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < WAIT, "waited {WAIT:?} for {what}");
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Workers the relay counts as connected.
async fn workers_connected(http: &Http, relay: &RunningServer) -> u64 {
    let health = http.get(&format!("{}/health", relay.url())).await.json();
    health["workers_connected"].as_u64().expect("a count")
}

/// Waits until the relay lists `count` workers.
async fn until_the_relay_lists(http: &Http, relay: &RunningServer, count: u64) {
    until(&format!("the relay to list {count} workers"), || async {
        (workers_connected(http, relay).await == count).then_some(())
    })
    .await;
}

/// Runs `check` for at most four waits; past that, fails with what the app wrote.
async fn within_the_wait(app: &Process, check: impl Future<Output = ()>) {
    let outcome = tokio::time::timeout(WAIT * 4, check).await;
    let logs = app.lines.lock().unwrap().join("\n");
    assert!(
        outcome.is_ok(),
        "the test timed out; the app wrote:\n{logs}"
    );
}

/// Waits until the item is `Active` with the tooltip `ModelRelay: connected`.
async fn until_it_says_connected(sni: &zbus::Proxy<'_>) {
    until("the item to say connected", || async {
        let status: String = sni.get_property("Status").await.ok()?;
        let tip: ToolTip = sni.get_property("ToolTip").await.ok()?;
        (status == "Active" && tip.2 == "ModelRelay: connected").then_some(())
    })
    .await;
}

/// The `StatusNotifierItem` interface of `item`.
async fn sni<'a>(bus: &zbus::Connection, item: &'a str) -> zbus::Proxy<'a> {
    proxy(
        bus,
        item,
        "/StatusNotifierItem",
        "org.kde.StatusNotifierItem",
    )
    .await
}

/// A proxy on the item's `interface` at `path`, reading properties afresh each time.
async fn proxy<'a>(
    bus: &zbus::Connection,
    item: &'a str,
    path: &'a str,
    interface: &'a str,
) -> zbus::Proxy<'a> {
    zbus::proxy::Builder::new(bus)
        .destination(item)
        .unwrap()
        .path(path)
        .unwrap()
        .interface(interface)
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a proxy on the item")
}

/// An item's icons: width, height and ARGB pixels in network byte order.
type Pixmaps = Vec<(i32, i32, Vec<u8>)>;

/// The `ToolTip` property: icon name, icons, title, description.
type ToolTip = (String, Pixmaps, String, String);

/// The icon's colours (RGB) while connected and while relaying, as
/// `desktop/src/tray/icon.rs` draws them.
const CONNECTED_COLOUR: [u8; 3] = [0x2e, 0x9d, 0x4f];
const RELAYING_COLOUR: [u8; 3] = [0x2d, 0x7f, 0xf9];

/// The RGB at the centre of the first icon, if it is opaque there.
fn centre_colour(icons: &Pixmaps) -> Option<[u8; 3]> {
    let (width, height, argb) = icons.first()?;
    let (width, height) = (
        usize::try_from(*width).ok()?,
        usize::try_from(*height).ok()?,
    );
    let at = (height / 2 * width + width / 2) * 4;
    let [a, r, g, b] = argb.get(at..at + 4)?.try_into().ok()?;
    (a == 255).then_some([r, g, b])
}

/// The menu's labels by item id (dbusmenu `GetGroupProperties` over the first ids).
async fn menu_labels(menu: &zbus::Proxy<'_>) -> HashMap<i32, String> {
    let ids: Vec<i32> = (1..=20).collect();
    let items: Vec<(i32, HashMap<String, OwnedValue>)> = menu
        .call("GetGroupProperties", &(ids, vec!["label"]))
        .await
        .expect("GetGroupProperties answers");
    items
        .into_iter()
        .filter_map(|(id, props)| {
            let label = props.get("label")?.try_clone().ok()?;
            Some((id, String::try_from(label).ok()?))
        })
        .collect()
}

/// Saves a screenshot of the whole X screen as a PNG.
async fn screenshot(display: &str, png: &Path) {
    let xwd = png.with_extension("xwd");
    let took = Command::new("/usr/bin/xwd")
        .args(["-root", "-silent", "-display", display, "-out"])
        .arg(&xwd)
        .status()
        .await
        .expect("xwd runs");
    assert!(took.success(), "xwd failed");
    let converted = Command::new("/usr/bin/convert")
        .arg(format!("xwd:{}", xwd.display()))
        .arg(png)
        .status()
        .await
        .expect("convert runs");
    assert!(converted.success(), "convert failed");
    let _ = std::fs::remove_file(&xwd);
}

impl Desktop {
    /// The desktop with the test's watcher served on its bus, and a bus connection for the test.
    async fn with_watcher() -> (Self, Watcher, zbus::Connection) {
        let desktop = Self::start().await;
        let watcher = Watcher::default();
        let bus = zbus::connection::Builder::address(desktop.bus.as_str())
            .unwrap()
            .name("org.kde.StatusNotifierWatcher")
            .unwrap()
            .serve_at("/StatusNotifierWatcher", watcher.clone())
            .unwrap()
            .build()
            .await
            .expect("the watcher is on the bus");
        (desktop, watcher, bus)
    }

    /// The app on this display and bus with `args`, its settings in `config`
    /// and its home beside them (so no autostart file lands in the real one).
    fn app(&self, args: &[&str], config: &Path) -> Process {
        self.app_on(&self.display, args, config)
    }

    /// [`Desktop::app`] on X display `display` (empty: none).
    fn app_on(&self, display: &str, args: &[&str], config: &Path) -> Process {
        let home = config.join("home");
        let mut all = args.to_vec();
        all.extend(["--config-dir", config.to_str().unwrap()]);
        Process::start_with_env(
            Binary::Desktop,
            &all,
            &[
                ("DISPLAY", display),
                ("DBUS_SESSION_BUS_ADDRESS", self.bus.as_str()),
                ("HOME", home.to_str().unwrap()),
                ("XDG_CONFIG_HOME", home.join(".config").to_str().unwrap()),
                ("LIBGL_ALWAYS_SOFTWARE", "1"),
            ],
        )
    }
}

/// The first item that registered with the watcher.
async fn registered(watcher: &Watcher) -> String {
    until("the item to register with the watcher", || {
        let items = watcher.items.clone();
        async move { items.lock().unwrap().first().cloned() }
    })
    .await
}

/// Waits until the app wrote a line containing `text`.
async fn wrote(app: &Process, what: &str, text: &str) {
    until(what, || {
        let lines = app.lines.clone();
        async move {
            let lines = lines.lock().unwrap();
            lines.iter().any(|l| l.contains(text)).then_some(())
        }
    })
    .await;
}

/// Runs `xdotool` on `display` with `args`; its standard output. Bounded by [`WAIT`].
async fn xdotool(display: &str, args: &[&str]) -> String {
    let run = Command::new(XDOTOOL)
        .args(args)
        .env("DISPLAY", display)
        .stderr(Stdio::inherit())
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("xdotool {args:?} took more than {WAIT:?}"))
        .expect("xdotool runs");
    assert!(output.status.success(), "xdotool {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fills the settings window from the keyboard as a person would: the
/// window gets the keyboard, the relay URL field has it at once, Tab moves to
/// the secret and the backend URL (each field's text replaced), Enter saves. Keeps a screenshot before Enter.
async fn fill_in_the_settings(display: &str, app: &Process, relay: &str, backend: &str) {
    let found = xdotool(
        display,
        &["search", "--sync", "--name", "ModelRelay settings"],
    )
    .await;
    let window = found.lines().next().expect("the window's id").to_owned();
    xdotool(display, &["windowfocus", "--sync", &window]).await;
    wrote(
        app,
        "the relay URL field to take the keyboard",
        "the first field has the keyboard",
    )
    .await;
    for (text, then) in [(relay, "Tab"), (SECRET, "Tab"), (backend, "")] {
        // Ctrl+A first: a field may hold a default (the backend URL does).
        xdotool(display, &["key", "ctrl+a"]).await;
        xdotool(display, &["type", "--delay", "20", text]).await;
        if !then.is_empty() {
            xdotool(display, &["key", then]).await;
        }
    }
    let png = e2e::artifacts_dir().join("desktop-first-start.png");
    screenshot(display, &png).await;
    xdotool(display, &["key", "Return"]).await;
}

/// A relay taking the test's secret, and the simulated backend (serving `m`) with its URL.
async fn relay_and_backend() -> (RunningServer, Process, String) {
    let relay = RunningServer::start(ServerConfig::new(SECRET), "127.0.0.1:0")
        .await
        .unwrap();
    let mut backend = Process::start(Binary::SimulatedBackend, &["--models", "m"]);
    let backend_url = format!("http://{}", backend.announced().await);
    (relay, backend, backend_url)
}

/// A config directory named after `name` whose settings connect to `relay`
/// with `backend_url` (the secret in the file, the keyring's fallback).
fn configured(name: &str, relay: &RunningServer, backend_url: &str) -> PathBuf {
    let config = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("settings.toml"),
        format!(
            "backend_url = \"{backend_url}\"\nrelay_url = \"{}\"\nmodels = \"*\"\n\
             models_poll_interval = 60\nworker_name = \"{WORKER_NAME}\"\n\
             start_on_login = false\nworker_secret = \"{SECRET}\"\n",
            relay.url()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_opens_the_settings_and_typing_a_relay_secret_and_backend_there_connects_the_worker()
 {
    if !tools_or_skip() {
        return;
    }
    let (desktop, watcher, bus) = Desktop::with_watcher().await;
    let (relay, _backend, backend_url) = relay_and_backend().await;
    let config = std::env::temp_dir().join(format!("desktop-first-{}", std::process::id()));
    let app = desktop.app(&[], &config);
    let check = async {
        let item = registered(&watcher).await;
        wrote(
            &app,
            "the settings window to open by itself",
            "settings window shown",
        )
        .await;
        let sni = sni(&bus, &item).await;
        let status: String = sni.get_property("Status").await.unwrap();
        assert_eq!(status, "Passive");
        let menu = proxy(&bus, &item, "/MenuBar", "com.canonical.dbusmenu").await;
        let labels = menu_labels(&menu).await;
        let connect = labels
            .iter()
            .find(|(_, l)| *l == "Connect")
            .map(|(id, _)| *id);
        let connect = connect.expect("the menu offers Connect");
        let enabled: OwnedValue = menu
            .call("GetProperty", &(connect, "enabled"))
            .await
            .expect("GetProperty answers");
        assert!(
            !bool::try_from(&*enabled).unwrap(),
            "nothing to connect with"
        );

        fill_in_the_settings(&desktop.display, &app, &relay.url(), &backend_url).await;
        let http = Http::new();
        until_the_relay_lists(&http, &relay, 1).await;
        until_it_says_connected(&sni).await;
        let saved = std::fs::read_to_string(config.join("settings.toml")).unwrap();
        assert!(saved.contains(&backend_url), "{saved}");
    };
    within_the_wait(&app, check).await;
    let mut app = app;
    app.terminate(Duration::from_secs(20)).await;
    let _ = std::fs::remove_dir_all(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_app_registers_shows_its_state_and_menu_and_disconnect_takes_the_worker_off_the_relay()
 {
    if !tools_or_skip() {
        return;
    }
    let (desktop, watcher, bus) = Desktop::with_watcher().await;
    let (relay, _backend, backend_url) = relay_and_backend().await;
    let config = configured("desktop-tray", &relay, &backend_url);
    let app = desktop.app(&["--open-settings"], &config);
    let check = async {
        let item = registered(&watcher).await;
        let sni = sni(&bus, &item).await;
        let http = Http::new();
        until_the_relay_lists(&http, &relay, 1).await;
        until_it_says_connected(&sni).await;
        let tip: ToolTip = sni.get_property("ToolTip").await.expect("a tooltip");
        assert_eq!(tip.2, "ModelRelay: connected", "{tip:?}");
        assert_eq!(tip.3, relay.url(), "the tooltip names the relay");
        assert_eq!(centre_colour(&tip.1), Some(CONNECTED_COLOUR));
        let icon: Pixmaps = sni.get_property("IconPixmap").await.expect("an icon");
        assert_eq!(centre_colour(&icon), Some(CONNECTED_COLOUR));
        let menu = proxy(&bus, &item, "/MenuBar", "com.canonical.dbusmenu").await;
        let labels = menu_labels(&menu).await;
        let mut shown: Vec<&str> = labels.values().map(String::as_str).collect();
        shown.sort_unstable();
        for wanted in [
            "ModelRelay: connected",
            "Settings…",
            "Disconnect",
            "Open dashboard",
            "Quit",
        ] {
            assert!(
                shown.contains(&wanted),
                "{wanted:?} is not in the menu {shown:?}"
            );
        }

        // A request running through the worker: the tray says relaying, then connected again.
        let url = format!("{}/v1/chat/completions", relay.url());
        let asking = tokio::spawn(async move {
            let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],
                "mock":{"tokens":20,"delay_ms":100}}"#;
            Http::new().post(&url, body).await.status
        });
        until("the tooltip to say relaying", || async {
            let tip: ToolTip = sni.get_property("ToolTip").await.ok()?;
            let icon: Pixmaps = sni.get_property("IconPixmap").await.ok()?;
            (tip.2 == "ModelRelay: relaying" && centre_colour(&icon) == Some(RELAYING_COLOUR))
                .then_some(())
        })
        .await;
        assert_eq!(asking.await.unwrap(), 200);
        until("the tooltip to say connected again", || async {
            let tip: ToolTip = sni.get_property("ToolTip").await.ok()?;
            (tip.2 == "ModelRelay: connected").then_some(())
        })
        .await;

        let png = e2e::artifacts_dir().join("desktop-settings.png");
        wrote(
            &app,
            "the settings window to be drawn",
            "settings window shown",
        )
        .await;
        screenshot(&desktop.display, &png).await;
        assert!(std::fs::metadata(&png).expect("the screenshot").len() > 1000);

        let disconnect = labels
            .iter()
            .find(|(_, label)| *label == "Disconnect")
            .map(|(id, _)| *id)
            .unwrap();
        let () = menu
            .call("Event", &(disconnect, "clicked", Value::from(""), 0u32))
            .await
            .expect("the click is taken");
        until_the_relay_lists(&http, &relay, 0).await;
        until("the item's Status to say disconnected", || async {
            let status: String = sni.get_property("Status").await.ok()?;
            (status == "Passive").then_some(())
        })
        .await;
        let labels = menu_labels(&menu).await;
        assert!(labels.values().any(|l| l == "Connect"), "{labels:?}");
    };
    within_the_wait(&app, check).await;
    let mut app = app;
    app.terminate(Duration::from_secs(40)).await;
    let _ = std::fs::remove_dir_all(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_display_the_tray_goes_on_the_bus_alone_and_the_worker_connects() {
    if !tools_or_skip() {
        return;
    }
    let (desktop, watcher, bus) = Desktop::with_watcher().await;
    let (relay, _backend, backend_url) = relay_and_backend().await;
    let config = configured("desktop-no-display", &relay, &backend_url);
    // No DISPLAY (a Wayland-only session, or a start before X is up): no
    // event loop, and the item still goes on the session bus.
    let app = desktop.app_on("", &[], &config);
    let check = async {
        let item = registered(&watcher).await;
        let sni = sni(&bus, &item).await;
        let http = Http::new();
        until_the_relay_lists(&http, &relay, 1).await;
        until_it_says_connected(&sni).await;
        wrote(&app, "the app to say why", "the tray goes on D-Bus alone").await;
    };
    within_the_wait(&app, check).await;
    // A stop signal ends it as on a display: the worker leaves the relay.
    let mut app = app;
    let status = app.terminate(Duration::from_secs(40)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "it ended with {status:?}"
    );
    let http = Http::new();
    until_the_relay_lists(&http, &relay, 0).await;
    let _ = std::fs::remove_dir_all(&config);
}

/// Runs a command to its end; its standard output, or a panic with its standard error.
fn output_of(command: &mut std::process::Command) -> String {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_deb_package_is_built_from_the_tested_binary_and_installs_runs_and_removes_cleanly() {
    let binary = e2e::binary(Binary::Desktop);
    let script = e2e::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")))
        .join("desktop/packaging/build-deb");
    let out = e2e::artifacts_dir();
    let deb = output_of(std::process::Command::new(&script).arg(&binary).arg(&out));
    let deb = PathBuf::from(deb.trim());
    let info = output_of(
        std::process::Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb),
    );
    assert!(info.contains("Package: modelrelay-desktop"), "{info}");
    assert!(info.contains("Depends: libc6, libdbus-1-3"), "{info}");
    let contents = output_of(
        std::process::Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&deb),
    );
    for path in PACKAGED_FILES {
        assert!(
            contents.contains(&format!(".{path}")),
            "{path} is not in the package:\n{contents}"
        );
    }
    // Unpacked: it runs without being installed.
    let unpacked = std::env::temp_dir().join(format!("desktop-deb-{}", std::process::id()));
    output_of(
        std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked),
    );
    let help = output_of(
        std::process::Command::new(unpacked.join("usr/bin/modelrelay-desktop")).arg("--help"),
    );
    assert!(
        help.contains("--open-settings") && help.contains("--config-dir"),
        "{help}"
    );
    std::fs::remove_dir_all(&unpacked).unwrap();
    if may_install_the_package() {
        installs_runs_and_removes_cleanly(&deb);
    }
}

/// The package's name, as dpkg knows it.
const PACKAGE: &str = "modelrelay-desktop";

/// What the package installs besides its documentation.
const PACKAGED_FILES: [&str; 3] = [
    "/usr/bin/modelrelay-desktop",
    "/usr/share/applications/modelrelay-desktop.desktop",
    "/usr/share/icons/hicolor/scalable/apps/modelrelay-desktop.svg",
];

/// What dpkg says of the package: `install ok installed`, or `None` when it
/// does not know it.
fn package_status() -> Option<String> {
    let output = std::process::Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", PACKAGE])
        .output()
        .expect("dpkg-query starts");
    let status = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !status.is_empty()).then_some(status)
}

/// Whether this run may install the package: as root (CI is), with no copy
/// of it on the machine already (which the test would then remove). Either
/// way out is a recorded skip of that part.
fn may_install_the_package() -> bool {
    let uid = output_of(std::process::Command::new("id").arg("-u"));
    if uid.trim() != "0" {
        modelrelay_testkit::skip::skipped(
            "installing the desktop .deb",
            "installing a package needs root (CI runs as root)",
        );
        return false;
    }
    if let Some(status) = package_status()
        && status.ends_with(" installed")
    {
        modelrelay_testkit::skip::skipped(
            "installing the desktop .deb",
            &format!(
                "{PACKAGE} is already installed here ({status}), and the test \
                 would remove it: `apt-get remove {PACKAGE}` first"
            ),
        );
        return false;
    }
    true
}

/// Purges the package when dropped before the test removed it, so a failing
/// check leaves no package behind.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("dpkg")
            .args(["--purge", PACKAGE])
            .stdout(Stdio::null())
            .status();
    }
}

/// Installs `deb` as a user would (`apt-get install ./…deb`, its
/// dependencies from Debian), runs the binary from the PATH, finds the menu
/// entry and icon where desktops look, then removes it and finds nothing left.
fn installs_runs_and_removes_cleanly(deb: &Path) {
    let apt = |args: &[&str]| {
        output_of(
            std::process::Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                // Another apt (scripts/test-deps in a parallel run) may hold the lock a while.
                .args(["-o", "DPkg::Lock::Timeout=120", "-y", "-q"])
                .args(args),
        )
    };
    let installed = Installed;
    apt(&[
        "install",
        "--no-install-recommends",
        &deb.display().to_string(),
    ]);
    assert_eq!(package_status().as_deref(), Some("install ok installed"));
    for file in PACKAGED_FILES {
        assert!(Path::new(file).exists(), "{file} was not installed");
    }
    let version = output_of(std::process::Command::new("modelrelay-desktop").arg("--version"));
    assert!(version.starts_with("modelrelay-desktop "), "{version}");
    apt(&["remove", "--purge", PACKAGE]);
    // Removed: nothing left for the guard to purge.
    std::mem::forget(installed);
    assert_eq!(package_status(), None, "dpkg still knows {PACKAGE}");
    for file in PACKAGED_FILES {
        assert!(!Path::new(file).exists(), "{file} was left behind");
    }
}
