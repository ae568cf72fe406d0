//! The dashboard in a real browser: headless Chromium opens
//! `/dashboard/login#token=…` on a running server with a worker connected, and
//! the test waits until the page shows that worker's row, then drains the
//! worker from the page and opens the setup page.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket, JSON commands).
//! A screenshot is kept at `target/test-artifacts/dashboard.png`, also when
//! the check fails. Without `/usr/bin/chromium` the test fails and says how to
//! install it, unless `MODELRELAY_SKIP_BROWSER_TESTS=1` asks to skip it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use modelrelay_relay::{RunningServer, ServerConfig};
use modelrelay_testkit::simulated_backend::SimulatedBackendConfig;
use modelrelay_testkit::{Http, WorkerSpec};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
const SKIP_VAR: &str = "MODELRELAY_SKIP_BROWSER_TESTS";
const SECRET: &str = "test-secret";
const ADMIN_TOKEN: &str = "test-admin-token";
/// The worker's name, as the server's `--demo` names its own.
const DEMO_WORKER: &str = "demo-worker";
/// The model it serves, as the server's `--demo` does.
const DEMO_MODEL: &str = "demo";
/// How long the page may take to show the worker (it polls every 2 s).
const WAIT_FOR_ROW: Duration = Duration::from_secs(30);
/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn dashboard_in_headless_chromium_shows_the_connected_worker() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let mut config = ServerConfig::new(SECRET);
    config.admin_token = Some(modelrelay_relay::AdminToken::new(ADMIN_TOKEN));
    config.drain_timeout = Duration::from_secs(2);
    // A second relay on the same database, so the page lists the relays.
    config.keys = Some(common::keys::sqlite_keys().await);
    let mut second = config.clone();
    config.relay_name = "relay-one".into();
    // Clients need a key, so the usage table has something to show.
    config.require_api_keys = true;
    config.usage_flush_every = Duration::from_millis(200);
    second.relay_name = "relay-two".into();
    let relay = RunningServer::start(config, "127.0.0.1:0")
        .await
        .expect("start the server");
    let second = RunningServer::start(second, "127.0.0.1:0")
        .await
        .expect("start the second server");
    let backend = modelrelay_testkit::backend_with(SimulatedBackendConfig {
        models: vec![DEMO_MODEL.into()],
        tokens: 40,
        token_delay: Duration::from_millis(5),
    })
    .await;
    let mut spec = WorkerSpec::new(&relay, &backend, &[DEMO_MODEL]);
    spec.secret = SECRET;
    spec.name = DEMO_WORKER;
    spec.max_concurrent = 16;
    let worker = spec.start();

    let started = Instant::now();
    let browser = Browser::launch(&chromium).await;
    let page = browser.new_page().await;
    page.navigate(&format!(
        "{}/dashboard/login#token={ADMIN_TOKEN}",
        relay.url()
    ))
    .await;

    // The demo worker's row, or undefined.
    let row = format!(
        "[...document.querySelectorAll('[data-testid=\"worker-row\"]')]\
         .find(row => row.textContent.includes({}))",
        json!(DEMO_WORKER)
    );
    let found = page.wait_for(&format!("!!{row}"), WAIT_FOR_ROW).await;
    // Kept whether or not the row appeared: a failure's picture is the useful one.
    let screenshot = e2e::artifacts_dir().join("dashboard.png");
    page.screenshot(&screenshot).await;
    note(&format!(
        "dashboard screenshot: {} ({} ms after launching Chromium)",
        screenshot.display(),
        started.elapsed().as_millis()
    ));
    if !found {
        panic!(
            "no worker row naming {DEMO_WORKER:?} within {WAIT_FOR_ROW:?}\n{}",
            page.diagnostics(&browser).await
        );
    }

    let row_text = page.eval(&format!("{row}.textContent")).await;
    let row_text = row_text.as_str().unwrap_or_default();
    assert!(
        row_text.contains(DEMO_MODEL),
        "the worker's row lists its model: {row_text:?}"
    );
    assert!(row_text.contains("active"), "state shown: {row_text:?}");
    // Some traffic with a key, then the last hour's charts and the usage table draw it.
    let http = Http::new();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let made = http
        .post_with(
            &format!("{}/admin/keys", relay.url()),
            r#"{"name":"browser-key"}"#,
            &[
                ("authorization", &admin),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(made.status, http::StatusCode::CREATED, "{}", made.text());
    let key = made.json()["key"].as_str().expect("the new key").to_owned();
    let bearer = format!("Bearer {key}");
    for n in 0..3 {
        let body = format!(
            r#"{{"model":"{DEMO_MODEL}","stream":true,"messages":[],"mock":{{"tokens":3,"tag":"chart-{n}"}}}}"#
        );
        let reply = http
            .post_with(
                &format!("{}/v1/chat/completions", relay.url()),
                &body,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
            )
            .await;
        assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    }
    let drawn = "!!document.querySelector('#chart-requests polyline[data-series=\"completed\"]')         && !!document.querySelector('#chart-first-chunk polyline[data-series=\"p50\"]')";
    let charted = page.wait_for(drawn, Duration::from_secs(20)).await;
    let charts = e2e::artifacts_dir().join("dashboard-charts.png");
    page.screenshot(&charts).await;
    note(&format!("dashboard with charts: {}", charts.display()));
    assert!(
        charted,
        "the last hour's charts draw the requests\n{}",
        page.diagnostics(&browser).await
    );
    // The usage table: the key's row, today's cell counting its three requests.
    let usage = "[...document.querySelectorAll('#usage-table tr[data-testid=\"usage-row\"]')]\
        .map(r => r.querySelector('th').textContent + ':' + r.querySelector('td[data-day=\"total\"]').dataset.requests).join('|')";
    let counted = page
        .wait_for(
            &format!("({usage}) === 'browser-key:3'"),
            Duration::from_secs(30),
        )
        .await;
    let usage_shot = e2e::artifacts_dir().join("dashboard-usage.png");
    page.eval(
        "(() => { document.getElementById('usage-table').scrollIntoView(); return true; })()",
    )
    .await;
    page.screenshot(&usage_shot).await;
    assert!(
        counted,
        "the usage table counts the key's requests: {}\n{}",
        page.eval(usage).await,
        page.diagnostics(&browser).await
    );
    let relays_listed = "!document.getElementById('relays').hidden && \
        [...document.querySelectorAll('[data-testid=\"relay-row\"]')].map(r => r.textContent).join('|')";
    let listed = page
        .wait_for(
            &format!("({relays_listed}).includes('relay-two')"),
            Duration::from_secs(10),
        )
        .await;
    let relays_text = page.eval(relays_listed).await;
    assert!(
        listed
            && relays_text
                .as_str()
                .is_some_and(|t| t.contains("relay-one (this relay)") && t.contains("serving")),
        "both relays listed: {relays_text}\n{}",
        page.diagnostics(&browser).await
    );
    let location = page
        .eval("location.pathname + location.search + location.hash")
        .await;
    assert_eq!(
        location,
        json!("/dashboard"),
        "the login redirected to the dashboard and the token fragment is gone"
    );

    // Drain (two clicks: the first only arms the button) goes through: the page's
    // write carries the session cookie and the CSRF header the server wants.
    page.eval(&format!(
        "(() => {{ const b = {row}.querySelector('button'); b.click(); b.click(); return true; }})()"
    ))
    .await;
    let settled = format!(
        "(() => {{ const row = {row}; \
         return !document.getElementById('action-banner').hidden || !row \
         || row.querySelector('.badge').textContent === 'draining'; }})()"
    );
    let drain_settled = page.wait_for(&settled, Duration::from_secs(10)).await;
    let drain_error = page
        .eval("document.getElementById('action-banner').hidden ? '' : document.getElementById('action-text').textContent")
        .await;
    assert!(
        drain_settled && drain_error == json!(""),
        "draining from the page failed: {drain_error}\n{}",
        page.diagnostics(&browser).await
    );
    assert_eq!(
        page.statuses("/drain"),
        [202],
        "one drain request, accepted"
    );

    // The setup page has its placeholders filled in with this server's URL.
    page.navigate(&format!("{}/setup", relay.url())).await;
    let setup_ready = format!(
        "document.readyState === 'complete' && document.body.textContent.includes({})",
        json!(relay.url())
    );
    let setup_ok = page.wait_for(&setup_ready, Duration::from_secs(10)).await;
    page.screenshot(&e2e::artifacts_dir().join("setup.png"))
        .await;
    assert!(
        setup_ok,
        "the setup page shows the server's URL {}\n{}",
        relay.url(),
        page.diagnostics(&browser).await
    );
    let leftover = page
        .eval("document.documentElement.outerHTML.includes('{{')")
        .await;
    assert_eq!(
        leftover,
        json!(false),
        "a placeholder was left on the setup page"
    );
    // Named on the page, the worker is put in every command and watched for.
    page.eval(&format!(
        "(() => {{ const i = document.getElementById('worker-name'); i.value = {}; \
         i.dispatchEvent(new Event('input')); return true; }})()",
        json!(DEMO_WORKER)
    ))
    .await;
    let named = page
        .eval(&format!(
            "[...document.querySelectorAll('#linux pre')].some(p => p.textContent.includes(\"--worker-name '\" + {} + \"'\"))",
            json!(DEMO_WORKER)
        ))
        .await;
    assert_eq!(named, json!(true), "the commands carry the name chosen");
    let connected = format!(
        "document.getElementById('worker-watch').textContent.includes({} + ' is connected: ' + {})",
        json!(DEMO_WORKER),
        json!(DEMO_MODEL)
    );
    let seen = page.wait_for(&connected, Duration::from_secs(20)).await;
    page.screenshot(&e2e::artifacts_dir().join("setup-connected.png"))
        .await;
    assert!(
        seen,
        "the setup page sees the worker it names connect\n{}",
        page.diagnostics(&browser).await
    );

    // Logging out from the page sends the CSRF header the server now wants,
    // and the session is gone afterwards.
    page.navigate(&format!("{}/dashboard", relay.url())).await;
    let on_dashboard = "document.readyState === 'complete' && !!document.getElementById('logout')";
    assert!(page.wait_for(on_dashboard, Duration::from_secs(10)).await);
    page.eval("(() => { document.querySelector('#logout button').click(); return true; })()")
        .await;
    let at_login = "location.pathname === '/dashboard/login'";
    let logged_out = page.wait_for(at_login, Duration::from_secs(10)).await;
    assert!(
        logged_out,
        "logging out did not reach the login page\n{}",
        page.diagnostics(&browser).await
    );
    page.navigate(&format!("{}/dashboard", relay.url())).await;
    assert!(
        page.wait_for(at_login, Duration::from_secs(10)).await,
        "the session outlived the logout"
    );

    let exceptions = page.exceptions();
    assert!(
        exceptions.is_empty(),
        "the pages threw: {exceptions:#?}\n{}",
        page.diagnostics(&browser).await
    );

    drop(page);
    browser.close().await;
    note(&format!(
        "browser check took {} ms",
        started.elapsed().as_millis()
    ));
    worker.begin_stop();
    second.shutdown().await;
    relay.shutdown().await;
    worker.exited_within(Duration::from_secs(5)).await;
}

/// The Chromium to run, `None` when the test is skipped on purpose; panics when it is missing.
fn chromium_or_skip() -> Option<PathBuf> {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        modelrelay_testkit::skip::skipped(
            "the dashboard in a browser",
            &format!("{SKIP_VAR}=1 (unset it; scripts/test installs Chromium)"),
        );
        return None;
    }
    let path = PathBuf::from(CHROMIUM);
    assert!(
        path.exists(),
        "{CHROMIUM} not found: this test needs headless Chromium. \
         Install it with `apt-get install -y chromium` (scripts/test does), \
         or set {SKIP_VAR}=1 to skip the browser test on purpose."
    );
    Some(path)
}

/// A line for whoever reads the test output (shown with `--nocapture` or on failure).
#[allow(clippy::print_stderr)]
fn note(line: &str) {
    eprintln!("{line}");
}

/// Headless Chromium with a fresh profile, and a DevTools connection to it.
struct Browser {
    child: Child,
    profile: PathBuf,
    cdp: Arc<tokio::sync::Mutex<Cdp>>,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    async fn launch(chromium: &Path) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let profile = std::env::temp_dir().join(format!(
            "modelrelay-chromium-{}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("create a Chromium profile folder");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", chromium.display()));

        // Chromium prints its DevTools address on stderr; the rest is kept for diagnostics.
        let stderr = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let log = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut url_tx = Some(url_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = url_tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let ws_url = match tokio::time::timeout(Duration::from_secs(30), url_rx).await {
            Ok(Ok(url)) => url,
            _ => panic!(
                "Chromium did not print its DevTools address; its output:\n{}",
                stderr.lock().unwrap_or_else(|e| e.into_inner())
            ),
        };
        let cdp = Cdp::connect(&ws_url).await;
        Self {
            child,
            profile,
            cdp: Arc::new(tokio::sync::Mutex::new(cdp)),
            stderr,
        }
    }

    /// A new tab, 1280×900, reporting script errors and console messages.
    async fn new_page(&self) -> Page {
        let mut cdp = self.cdp.lock().await;
        let target = cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .expect("open a tab");
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .expect("attach to the tab");
        let session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        for method in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            cdp.call(Some(&session), method, json!({}))
                .await
                .unwrap_or_else(|e| panic!("{method}: {e}"));
        }
        cdp.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .expect("set the viewport");
        Page {
            cdp: Arc::clone(&self.cdp),
            session,
        }
    }

    /// Asks Chromium to quit, kills it if it does not, and removes its profile.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            self.cdp
                .lock()
                .await
                .call(None, "Browser.close", json!({}))
                .await
        })
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        // Drop removes the profile.
    }

    fn stderr_tail(&self) -> String {
        let log = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        // D-Bus complaints are normal in a container and say nothing about the page.
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus/")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Give Chromium a moment to exit so its profile can be removed.
        for _ in 0..20 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab of the browser.
struct Page {
    cdp: Arc<tokio::sync::Mutex<Cdp>>,
    session: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.cdp
            .lock()
            .await
            .call(Some(&self.session), method, params)
            .await
    }

    async fn navigate(&self, url: &str) {
        let result = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        if let Some(error) = result.get("errorText") {
            panic!("navigate to {url}: {error}");
        }
    }

    /// The value of a JavaScript expression, or an error (for instance while a page loads).
    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(details.to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    async fn eval(&self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("evaluate {expression}: {e}"))
    }

    /// Polls the page until `expression` is true, for at most `within`.
    async fn wait_for(&self, expression: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            // Errors are expected while the login form posts and the dashboard loads.
            if self.try_eval(expression).await == Ok(Value::Bool(true)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the whole page at `path`.
    async fn screenshot(&self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await
            .expect("take a screenshot");
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot data is base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The statuses of the admin API's answers whose URL ends with `url_suffix`.
    fn statuses(&self, url_suffix: &str) -> Vec<u64> {
        let cdp = self.cdp.try_lock().expect("no command running");
        cdp.events
            .iter()
            .filter(|e| e["method"] == "Network.responseReceived")
            .filter(|e| {
                e["params"]["response"]["url"]
                    .as_str()
                    .is_some_and(|url| url.ends_with(url_suffix))
            })
            .filter_map(|e| e["params"]["response"]["status"].as_u64())
            .collect()
    }

    /// Uncaught script errors the tab reported.
    fn exceptions(&self) -> Vec<String> {
        let cdp = self.cdp.try_lock().expect("no command running");
        cdp.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .map(|e| {
                let details = &e["params"]["exceptionDetails"];
                details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// What the tab shows and said, and what Chromium printed: for failure messages.
    async fn diagnostics(&self, browser: &Browser) -> String {
        let page = self
            .try_eval(
                "JSON.stringify({url: location.href, title: document.title, \
                 text: document.body ? document.body.innerText.slice(0, 3000) : ''})",
            )
            .await
            .unwrap_or_else(|e| Value::String(format!("(page not readable: {e})")));
        let events: Vec<String> = {
            let cdp = self.cdp.lock().await;
            cdp.events
                .iter()
                .filter(|e| e["params"]["entry"]["level"] != "verbose")
                .map(|e| {
                    let p = &e["params"];
                    match e["method"].as_str() {
                        Some("Log.entryAdded") => format!(
                            "log {}: {} {}",
                            p["entry"]["level"], p["entry"]["text"], p["entry"]["url"]
                        ),
                        Some("Runtime.consoleAPICalled") => {
                            format!("console.{}: {}", p["type"], p["args"])
                        }
                        Some("Runtime.exceptionThrown") => {
                            format!("exception: {}", p["exceptionDetails"])
                        }
                        Some("Network.responseReceived") => format!(
                            "response {} {}",
                            p["response"]["status"], p["response"]["url"]
                        ),
                        _ => e.to_string(),
                    }
                })
                .collect()
        };
        format!(
            "page: {}\nbrowser events:\n  {}\nChromium stderr (last lines):\n{}",
            page.as_str().unwrap_or(&page.to_string()),
            events.join("\n  "),
            browser.stderr_tail()
        )
    }
}

/// A DevTools protocol connection: numbered JSON commands, answers matched by id.
struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    /// Events worth reporting: script errors and console messages.
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Self {
        let address = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools address {ws_url}"));
        let tcp = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("connect to DevTools at {address}: {e}"));
        let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp)
            .await
            .unwrap_or_else(|e| panic!("DevTools handshake at {ws_url}: {e}"));
        Self {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, self.exchange(id, command)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("{method}: no answer within {COMMAND_TIMEOUT:?}")),
        }
    }

    async fn exchange(&mut self, id: u64, command: Value) -> Result<Value, String> {
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .map_err(|e| format!("send to DevTools: {e}"))?;
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => return Err("DevTools closed".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read from DevTools: {e}")),
            };
            let message: Value =
                serde_json::from_str(&text).map_err(|e| format!("DevTools sent bad JSON: {e}"))?;
            if message["id"] == json!(id) {
                if let Some(error) = message.get("error") {
                    return Err(error.to_string());
                }
                return Ok(message["result"].clone());
            }
            let keep = match message["method"].as_str() {
                Some("Runtime.exceptionThrown" | "Log.entryAdded" | "Runtime.consoleAPICalled") => {
                    true
                }
                // Only the admin API's answers, to check what the page's writes got.
                Some("Network.responseReceived") => message["params"]["response"]["url"]
                    .as_str()
                    .is_some_and(|url| url.contains("/admin/")),
                _ => false,
            };
            if keep {
                self.events.push(message);
            }
        }
    }
}

/// Standard base64 (with padding), as DevTools sends screenshots.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&[a, b, c]),
            3 => out.extend_from_slice(&[a, b]),
            2 => out.push(a),
            _ => return None,
        }
    }
    Some(out)
}

#[test]
fn base64_decodes_every_padding() {
    assert_eq!(base64_decode("").unwrap(), b"");
    assert_eq!(base64_decode("Zg==").unwrap(), b"f");
    assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
    assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
    assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
    assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
    assert!(base64_decode("Z").is_none());
    assert!(base64_decode("Zm9v!").is_none());
}

/// The setup wizard's name for the worker it starts.
const WIZARD_WORKER: &str = "wizard-box";

#[tokio::test]
async fn the_setup_wizard_starts_a_real_worker_sees_it_connect_and_gets_its_answer() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let mut config = ServerConfig::new(SECRET);
    config.admin_token = Some(modelrelay_relay::AdminToken::new(ADMIN_TOKEN));
    let relay = RunningServer::start(config, "127.0.0.1:0")
        .await
        .expect("start the server");
    let tokens = 12;
    let backend = modelrelay_testkit::backend_with(SimulatedBackendConfig {
        models: vec![DEMO_MODEL.into()],
        tokens,
        token_delay: Duration::from_millis(5),
    })
    .await;
    // A second worker on the same model: the test request must still go to the wizard's.
    let other_backend = modelrelay_testkit::backend(&[DEMO_MODEL]).await;
    let mut spec = WorkerSpec::new(&relay, &other_backend, &[DEMO_MODEL]);
    spec.secret = SECRET;
    spec.name = "another-box";
    let other = spec.start();

    let browser = Browser::launch(&chromium).await;
    let page = browser.new_page().await;
    page.navigate(&format!(
        "{}/dashboard/login#token={ADMIN_TOKEN}",
        relay.url()
    ))
    .await;
    assert!(
        page.wait_for(
            "location.pathname === '/dashboard'",
            Duration::from_secs(10)
        )
        .await,
        "logged in\n{}",
        page.diagnostics(&browser).await
    );
    page.navigate(&format!("{}/setup", relay.url())).await;
    let wizard = "document.body.classList.contains('wizard') && \
                  document.getElementById('step-platform').classList.contains('current')";
    assert!(
        page.wait_for(wizard, Duration::from_secs(10)).await,
        "the wizard opens on its first step\n{}",
        page.diagnostics(&browser).await
    );
    let shot = |name: &'static str| e2e::artifacts_dir().join(name);
    page.screenshot(&shot("wizard-1-platform.png")).await;
    assert_eq!(
        page.eval("document.querySelector('input[name=platform]:checked').value")
            .await,
        json!("linux"),
        "the platform is taken from the browser (Chromium on Linux)"
    );

    // The model server: another one, at the simulated backend's address.
    let next = "(() => { document.querySelector('section.step.current .step-nav .next').click(); return true; })()";
    page.eval(next).await;
    let set_value = |id: &str, value: &str| {
        format!(
            "(() => {{ const i = document.getElementById({}); i.value = {}; \
             i.dispatchEvent(new Event('input')); return true; }})()",
            json!(id),
            json!(value)
        )
    };
    page.eval("(() => { const r = document.querySelector('input[name=backend][value=other]'); r.click(); return true; })()")
        .await;
    page.eval(&set_value("backend-url", &backend.url)).await;
    let check_command = page
        .eval("document.querySelector('#step-backend pre').innerText")
        .await;
    assert_eq!(
        check_command,
        json!(format!("curl -s '{}/v1/models'", backend.url)),
        "how to check the backend is up"
    );
    page.screenshot(&shot("wizard-2-backend.png")).await;
    page.eval(next).await; // get the worker
    page.screenshot(&shot("wizard-3-get.png")).await;
    page.eval(next).await; // configure
    page.eval(&set_value("worker-name", WIZARD_WORKER)).await;
    page.eval(&set_value("worker-models", DEMO_MODEL)).await;
    page.eval(&set_value("worker-concurrency", "2")).await;
    page.screenshot(&shot("wizard-4-configure.png")).await;
    page.eval(next).await; // start it

    // The command the page shows, run as it is with the secret in the environment.
    let shown = page
        .eval("document.querySelector('#linux [data-testid=start-command]').innerText")
        .await;
    let shown = shown.as_str().expect("a start command").to_owned();
    assert!(
        !shown.contains(SECRET),
        "the secret is never on the page: {shown}"
    );
    let argv = shell_words(&shown);
    assert_eq!(
        argv.first().map(String::as_str),
        Some("modelrelay-worker"),
        "{shown}"
    );
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    for expected in [
        ["--proxy-url", &relay.url()],
        ["--backend-url", &backend.url],
        ["--worker-name", WIZARD_WORKER],
        ["--models", DEMO_MODEL],
        ["--max-concurrency", "2"],
    ] {
        assert!(
            args.windows(2).any(|w| w == expected),
            "{expected:?} in {shown}"
        );
    }
    let mut worker =
        e2e::Process::start_with_env(e2e::Binary::Worker, &args, &[("WORKER_SECRET", SECRET)]);
    let connected = format!(
        "document.getElementById('worker-watch').textContent.includes({} + ' is connected: ' + {})",
        json!(WIZARD_WORKER),
        json!(DEMO_MODEL)
    );
    let seen = page.wait_for(&connected, Duration::from_secs(30)).await;
    page.screenshot(&shot("wizard-5-connected.png")).await;
    assert!(
        seen,
        "the wizard sees the worker it started connect\n{}\nworker: {:?}",
        page.diagnostics(&browser).await,
        worker.lines.lock().unwrap()
    );

    // The test request, from the page, to that worker.
    page.eval(next).await;
    assert_eq!(
        page.eval("document.getElementById('test-model').value")
            .await,
        json!(DEMO_MODEL),
        "the worker's model is offered"
    );
    page.eval("(() => { document.getElementById('test-send').click(); return true; })()")
        .await;
    let answered = "document.getElementById('test-status').textContent.includes('answered')";
    let done = page.wait_for(answered, Duration::from_secs(30)).await;
    page.screenshot(&shot("wizard-6-tested.png")).await;
    let output = page
        .eval("document.getElementById('test-output').textContent")
        .await;
    assert!(
        done && output == json!(modelrelay_testkit::simulated_backend::expected_text(tokens)),
        "the page shows the streamed answer: {output}\n{}",
        page.diagnostics(&browser).await
    );
    assert_eq!(
        page.statuses("/v1/chat/completions"),
        [200],
        "one pinned request, answered"
    );
    assert!(
        other_backend.sim.events().is_empty(),
        "the other worker got nothing: {:?}",
        other_backend.sim.events()
    );

    // Keeping it running: this platform's recipe only, with the worker's name.
    page.eval(next).await;
    let recipe = page
        .eval("[...document.querySelectorAll('#persist li')].filter(li => !li.hidden).map(li => li.dataset.platform + ':' + li.innerText).join('|')")
        .await;
    let recipe = recipe.as_str().unwrap_or_default();
    assert!(
        recipe.starts_with("linux:")
            && !recipe.contains('|')
            && recipe.contains(&format!("WORKER_NAME={WIZARD_WORKER}"))
            && recipe.contains(&format!("BACKEND_URL={}", backend.url)),
        "the systemd recipe alone, filled in: {recipe}"
    );
    page.screenshot(&shot("wizard-7-persist.png")).await;
    let exceptions = page.exceptions();
    assert!(exceptions.is_empty(), "the page threw: {exceptions:#?}");

    drop(page);
    browser.close().await;
    worker.terminate(Duration::from_secs(5)).await;
    other.begin_stop();
    relay.shutdown().await;
}

/// The words of a POSIX shell command as the page writes them: backslash-newline
/// continues a line, single quotes keep what they hold, whitespace separates.
fn shell_words(command: &str) -> Vec<String> {
    let joined = command.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in joined.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[test]
fn shell_words_joins_continued_lines_and_keeps_quoted_text() {
    assert_eq!(
        shell_words("a \\\n  --x 'b c' \\\n  --y ''"),
        ["a", "--x", "b c", "--y", ""]
    );
}
