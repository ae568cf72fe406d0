//! Several relays behind an ordinary load balancer, as real processes: two
//! `modelrelay-server`s sharing one PostgreSQL database for API keys, Debian's
//! HAProxy balancing clients across them, and two `modelrelay-worker`s, each
//! beside its own simulated backend that the test watches for how many
//! requests it runs at once. One relay is killed (SIGKILL) under load, then
//! started again.
//!
//! The story: build the world, load it through HAProxy, kill relay A, check
//! that only A's requests failed, that HAProxy took A out and new requests
//! still succeed, start A again and time how long until it serves, load it
//! once more; throughout, no backend ran more than its worker's capacity, and
//! no request reached a backend twice.
//!
//! Run it alone with its timings printed:
//! `cargo test -p e2e --test several_relays -- --nocapture`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use e2e::{Binary, Process};
use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelrelay_testkit::simulated_backend::{BackendEvent, SimulatedBackendConfig, expected_text};
use serde_json::{Value, json};

/// Workers, each linked to both relays, each beside its own backend.
const WORKERS: u64 = 2;
/// Requests each worker runs at once (`--max-concurrency`).
const CAPACITY: usize = 3;
/// Tokens per answer, and the pause before each: a stream lasts about a second.
const TOKENS: usize = 40;
const TOKEN_DELAY_MS: u64 = 25;
/// Concurrent streaming clients in each wave of load.
const WAVE: usize = 24;
/// The operator's token on both relays.
const ADMIN: &str = "several-relays-admin";
/// HAProxy's names for the two relays (it tells the client which one served it).
const RELAY_NAMES: [&str; 2] = ["relay_a", "relay_b"];
/// The response header HAProxy sets to the relay it sent the request to.
const SERVED_BY: &str = "x-served-by";
/// The longest any step waits for the world to reach a state.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// The test's own HTTP client: it reads answers that break off, and answers from relays that are gone.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The HAProxy binary, or `None` when told to skip (recorded); panics when missing.
fn haproxy() -> Option<PathBuf> {
    if std::env::var("MODELRELAY_SKIP_HAPROXY").is_ok_and(|v| v == "1") {
        skip::skipped(
            "several relays behind HAProxy",
            "MODELRELAY_SKIP_HAPROXY=1 (unset it; scripts/test-deps installs Debian's haproxy)",
        );
        return None;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file());
    Some(found.expect(
        "HAProxy is not installed: run scripts/test-deps (apt-get install haproxy), \
         or set MODELRELAY_SKIP_HAPROXY=1 to skip this test on purpose",
    ))
}

/// A loopback port free right now (the relays must come back on the same one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts a relay on `port` with its keys in `database`; returns once it listens.
async fn start_relay(port: u16, database: &str, data_dir: &Path) -> Process {
    let listen = format!("127.0.0.1:{port}");
    let mut relay = Process::start(
        Binary::Server,
        &[
            "--listen",
            &listen,
            "--worker-secret",
            SECRET,
            "--database-url",
            database,
            "--admin-token",
            ADMIN,
            "--require-api-keys",
            "--data-dir",
            data_dir.to_str().expect("a UTF-8 path"),
            "--log-format",
            "json",
        ],
    );
    relay.logged("relay listening").await;
    relay
}

/// HAProxy's configuration: clients on `front`, the relays behind, checked
/// every 100 ms, and the stats page on `stats`.
fn haproxy_config(front: u16, stats: u16, relays: [u16; 2]) -> String {
    let servers: String = RELAY_NAMES
        .iter()
        .zip(relays)
        .map(|(name, port)| format!("    server {name} 127.0.0.1:{port}\n"))
        .collect();
    format!(
        "global\n    maxconn 1000\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch 1\n\
         frontend api\n    bind 127.0.0.1:{front}\n    default_backend relays\n\
         backend relays\n    balance leastconn\n    option httpchk GET /health\n    \
         http-check expect status 200\n    default-server check inter 100ms fall 2 rise 1\n    \
         http-after-response set-header {SERVED_BY} %[srv_name]\n{servers}\
         listen stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n"
    )
}

/// HAProxy running in the foreground (`-db`), killed when dropped.
struct Haproxy {
    _child: tokio::process::Child,
    /// Where clients send requests.
    url: String,
    /// Its stats page, as CSV.
    stats_url: String,
}

impl Haproxy {
    /// Checks and starts HAProxy with `config`, its messages kept in `dir`.
    fn start(binary: &Path, dir: &Path, config: &str, front: u16, stats: u16) -> Self {
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("the HAProxy config is written");
        let checked = std::process::Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy runs");
        assert!(
            checked.status.success(),
            "HAProxy refuses the generated config: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("a log file");
        let child = tokio::process::Command::new(binary)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("HAProxy starts");
        Self {
            _child: child,
            url: format!("http://127.0.0.1:{front}"),
            stats_url: format!("http://127.0.0.1:{stats}/stats;csv"),
        }
    }

    /// The check status HAProxy shows for `server` ("UP", "DOWN", …), if it answers.
    async fn status(&self, client: &HttpClient, server: &str) -> String {
        let Ok(csv) = get_text(client, &self.stats_url).await else {
            return "no answer".into();
        };
        // Columns: pxname, svname, … the 18th is the status.
        csv.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&"relays") && cols.get(1) == Some(&server))
            .and_then(|cols| cols.get(17).map(|s| s.to_string()))
            .unwrap_or_else(|| "not listed".into())
    }

    /// Waits until HAProxy shows `server` as `want`.
    async fn wait_for(&self, client: &HttpClient, server: &str, want: &str) {
        let start = Instant::now();
        loop {
            let status = self.status(client, server).await;
            if status == want {
                return;
            }
            assert!(
                start.elapsed() < STEP_WAIT,
                "HAProxy never showed {server} {want}; it shows {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// GETs `url`; its body as text, or why not.
async fn get_text(client: &HttpClient, url: &str) -> Result<String, String> {
    let request = http::Request::get(url)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// What one client saw of its stream.
#[derive(Debug)]
struct Seen {
    /// The request's tag (the backend logs it).
    tag: String,
    /// The relay HAProxy sent it to, if an answer came back at all.
    relay: Option<String>,
    /// The whole answer arrived, every token and `[DONE]`.
    complete: bool,
    /// What went wrong, when something did.
    detail: String,
}

/// Streams one chat completion tagged `tag` from `url` with the API key `key`.
async fn stream_once(client: &HttpClient, url: &str, key: &str, tag: &str) -> Seen {
    let body = json!({
        "model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"tokens": TOKENS, "delay_ms": TOKEN_DELAY_MS, "tag": tag},
    });
    let request = http::Request::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let mut seen = Seen {
        tag: tag.to_owned(),
        relay: None,
        complete: false,
        detail: String::new(),
    };
    let answer = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        seen.relay = response
            .headers()
            .get(SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status();
        let body = response.into_body().collect().await;
        let body = body.map_err(|e| format!("status {status}, then the stream broke: {e}"))?;
        Ok::<_, String>((status, body.to_bytes()))
    };
    match tokio::time::timeout(STEP_WAIT, answer).await {
        Err(_) => seen.detail = "no end within 30 s".into(),
        Ok(Err(why)) => seen.detail = why,
        Ok(Ok((status, body))) => {
            let text = streamed_text(&body);
            seen.complete =
                status == StatusCode::OK && text.as_deref() == Some(&expected_text(TOKENS));
            if !seen.complete {
                seen.detail = format!("status {status}: {}", String::from_utf8_lossy(&body));
            }
        }
    }
    seen
}

/// The text of a whole SSE answer, or `None` if it did not end with `[DONE]`.
fn streamed_text(body: &[u8]) -> Option<String> {
    let events = sse_data(body);
    if events.last().map(String::as_str) != Some("[DONE]") {
        return None;
    }
    let mut text = String::new();
    for data in &events[..events.len() - 1] {
        let event: Value = serde_json::from_str(data).ok()?;
        text.push_str(
            event["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    Some(text)
}

/// `WAVE` clients at once through `url`, tagged `<wave>-<n>`.
async fn wave(client: &HttpClient, url: &str, key: &str, name: &str) -> Vec<Seen> {
    let tags: Vec<String> = (0..WAVE).map(|n| format!("{name}-{n}")).collect();
    join_all(tags.iter().map(|tag| stream_once(client, url, key, tag))).await
}

/// How many times each tag reached a backend.
fn received_tags(backends: &[Backend]) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for backend in backends {
        for event in backend.sim.events() {
            if let BackendEvent::Received { tag: Some(tag), .. } = event {
                *seen.entry(tag).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// `/health`'s `field` on the relay at `base`, or `None` when it does not answer.
async fn health_number(client: &HttpClient, base: &str, field: &str) -> Option<u64> {
    let text = get_text(client, &format!("{base}/health")).await.ok()?;
    serde_json::from_str::<Value>(&text).ok()?[field].as_u64()
}

/// Waits until `/health` on `base` shows `field` at least `at_least`.
async fn wait_for_health(client: &HttpClient, base: &str, field: &str, at_least: u64) {
    let start = Instant::now();
    loop {
        let now = health_number(client, base, field).await;
        if now.is_some_and(|n| n >= at_least) {
            return;
        }
        assert!(
            start.elapsed() < STEP_WAIT,
            "{base}/health never showed {field} >= {at_least} (last: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts worker `n` beside `backend`, linked to both relays (one comma list).
fn start_worker(n: usize, backend: &Backend, relay_urls: &[String; 2]) -> Process {
    let proxy_urls = relay_urls.join(",");
    Process::start(
        Binary::Worker,
        &[
            "--proxy-url",
            &proxy_urls,
            "--backend-url",
            &backend.url,
            "--worker-secret",
            SECRET,
            "--models",
            "m",
            "--max-concurrency",
            &CAPACITY.to_string(),
            "--worker-name",
            &format!("worker-{n}"),
        ],
    )
}

/// Creates an API key on the relay at `base` through its admin API.
async fn create_key(http: &Http, base: &str) -> String {
    let created = http
        .post_with(
            &format!("{base}/admin/keys"),
            r#"{"name":"several-relays"}"#,
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    created.json()["key"].as_str().expect("a key").to_owned()
}

/// The time a restarted relay took to serve again, step by step.
#[derive(Debug)]
struct Comeback {
    /// How long it was down: the workers' reconnect back-off grows meanwhile.
    down: Duration,
    listening: Duration,
    workers_back: Duration,
    balancer_up: Duration,
    first_answer: Duration,
}

/// Prints what the kill cost and how long the comeback took.
#[allow(clippy::print_stderr, reason = "the figures are for docs/scaling.md")]
fn report(comeback: &Comeback, failed: usize, carried: usize) {
    eprintln!(
        "several_relays: killing relay A failed {failed} of the {carried} requests HAProxy had \
         sent it, and no other; restarted after {:?} down, it listened after {:?}, had its \
         workers back after {:?}, was UP in HAProxy after {:?}, and had streamed a whole answer \
         (about 1 s) after {:?}",
        comeback.down,
        comeback.listening,
        comeback.workers_back,
        comeback.balancer_up,
        comeback.first_answer
    );
}

/// Everything the test started: the relays, workers, backends and HAProxy.
struct World {
    dir: PathBuf,
    database: String,
    ports: [u16; 2],
    relay_urls: [String; 2],
    /// The relay processes; `None` while one is killed.
    relays: [Option<Process>; 2],
    backends: Vec<Backend>,
    _workers: Vec<Process>,
    balancer: Haproxy,
    client: HttpClient,
    /// An API key made through relay A's admin API.
    key: String,
}

impl World {
    /// Two relays sharing a fresh PostgreSQL database, a key made on A and
    /// checked on B, two workers each linked to both, HAProxy in front with
    /// both relays UP. `None` when PostgreSQL or HAProxy is skipped on purpose.
    async fn build() -> Option<Self> {
        let haproxy_bin = haproxy()?;
        let database = postgres::fresh_database().await?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("several-relays-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a folder for the test");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let http = Http::new();
        let ports = [free_port(), free_port()];
        let relay_urls = ports.map(|port| format!("http://127.0.0.1:{port}"));
        let relays = [
            Some(start_relay(ports[0], &database, &dir.join("relay-0")).await),
            Some(start_relay(ports[1], &database, &dir.join("relay-1")).await),
        ];
        let key = create_key(&http, &relay_urls[0]).await;
        let models = http.get(&format!("{}/v1/models", relay_urls[1])).await;
        assert_eq!(
            models.status,
            StatusCode::UNAUTHORIZED,
            "relay B asks for a key"
        );

        // Each worker beside its own backend, so each one's load is counted apart.
        let mut backends = Vec::new();
        let mut workers = Vec::new();
        for n in 0..WORKERS as usize {
            let backend = Backend::start(SimulatedBackendConfig {
                models: vec!["m".into()],
                tokens: TOKENS,
                token_delay: Duration::from_millis(TOKEN_DELAY_MS),
            })
            .await
            .expect("a loopback port for the backend");
            workers.push(start_worker(n, &backend, &relay_urls));
            backends.push(backend);
        }
        for base in &relay_urls {
            wait_for_workers_at(&http, base, WORKERS).await;
        }
        let direct = stream_once(&client, &relay_urls[1], &key, "direct-b").await;
        assert!(
            direct.complete,
            "the key made on relay A works on relay B: {direct:?}"
        );

        let (front, stats) = (free_port(), free_port());
        let config = haproxy_config(front, stats, ports);
        let balancer = Haproxy::start(&haproxy_bin, &dir, &config, front, stats);
        for name in RELAY_NAMES {
            balancer.wait_for(&client, name, "UP").await;
        }
        Some(Self {
            dir,
            database,
            ports,
            relay_urls,
            relays,
            backends,
            _workers: workers,
            balancer,
            client,
            key,
        })
    }

    /// A wave of streaming clients through HAProxy, tagged `<name>-<n>`.
    async fn wave(&self, name: &str) -> Vec<Seen> {
        wave(&self.client, &self.balancer.url, &self.key, name).await
    }

    /// Kills relay A (SIGKILL) once both relays carry requests of `load`; what
    /// `load`'s clients saw, and when A died.
    async fn kill_relay_a_during(
        &mut self,
        load: tokio::task::JoinHandle<Vec<Seen>>,
    ) -> (Vec<Seen>, Instant) {
        for base in &self.relay_urls {
            wait_for_health(&self.client, base, "requests_in_progress", 3).await;
        }
        self.relays[0].take().expect("relay A runs").stop().await;
        let killed = Instant::now();
        (load.await.expect("the wave runs"), killed)
    }

    /// Starts relay A again (killed at `killed`) and times each step until it
    /// serves: it listens, its workers are back, HAProxy has it UP, a request
    /// sent to it is answered with the key made before.
    async fn restart_relay_a(&mut self, killed: Instant) -> Comeback {
        let start = Instant::now();
        let down = killed.elapsed();
        let relay = start_relay(self.ports[0], &self.database, &self.dir.join("relay-0")).await;
        self.relays[0] = Some(relay);
        let listening = start.elapsed();
        wait_for_health(
            &self.client,
            &self.relay_urls[0],
            "workers_connected",
            WORKERS,
        )
        .await;
        let workers_back = start.elapsed();
        self.balancer
            .wait_for(&self.client, RELAY_NAMES[0], "UP")
            .await;
        let balancer_up = start.elapsed();
        let answered = stream_once(&self.client, &self.relay_urls[0], &self.key, "comeback").await;
        assert!(
            answered.complete,
            "the restarted relay answers, the key still works: {answered:?}"
        );
        Comeback {
            down,
            listening,
            workers_back,
            balancer_up,
            first_answer: start.elapsed(),
        }
    }

    /// Every backend ran exactly its worker's capacity at its busiest (the
    /// load filled every slot, and never more), and no request reached a
    /// backend twice.
    fn check_backends(&self) {
        for (n, backend) in self.backends.iter().enumerate() {
            let peak = backend.sim.peak_concurrency();
            assert_eq!(
                peak, CAPACITY,
                "backend {n} ran at most {peak} requests at once; its worker has {CAPACITY} slots"
            );
        }
        for (tag, times) in received_tags(&self.backends) {
            assert_eq!(times, 1, "request {tag} reached a backend {times} times");
        }
    }
}

#[tokio::test]
async fn killing_one_relay_behind_haproxy_fails_only_its_own_requests_and_it_serves_again_after_restart()
 {
    let Some(mut world) = World::build().await else {
        return;
    };

    // Load through the balancer; once both relays carry streams, kill relay A.
    let load = {
        let (client, url) = (world.client.clone(), world.balancer.url.clone());
        let key = world.key.clone();
        tokio::spawn(async move { wave(&client, &url, &key, "first").await })
    };
    let (first, killed) = world.kill_relay_a_during(load).await;
    let (carried, failed) = only_the_killed_relays_requests_failed(&first);
    assert!(
        carried > 0 && failed > 0,
        "the kill cut requests: {first:#?}"
    );

    // HAProxy takes A out, and new requests keep succeeding through B.
    world
        .balancer
        .wait_for(&world.client, RELAY_NAMES[0], "DOWN")
        .await;
    for seen in world.wave("second").await {
        assert!(
            seen.complete,
            "with relay A down, every request is served: {seen:?}"
        );
    }

    // Relay A again, on its port and database: workers return, HAProxy sends it clients.
    let comeback = world.restart_relay_a(killed).await;
    let third = world.wave("third").await;
    for seen in &third {
        assert!(
            seen.complete,
            "with both relays up, every request is served: {seen:?}"
        );
    }
    assert!(
        third
            .iter()
            .any(|seen| seen.relay.as_deref() == Some(RELAY_NAMES[0])),
        "the restarted relay serves clients through the balancer: {third:#?}"
    );

    world.check_backends();
    report(&comeback, failed, carried);
    // Kept when the test fails: the relays' data and HAProxy's config and log.
    let _ = std::fs::remove_dir_all(&world.dir);
}

/// Checks the first wave after relay A's kill: every request HAProxy sent to
/// relay B completed, and every one that failed had gone to relay A (cut
/// mid-stream, or answered 502 by HAProxy when A vanished before answering).
/// Returns (requests A carried, of which failed).
fn only_the_killed_relays_requests_failed(first: &[Seen]) -> (usize, usize) {
    let mut carried = 0;
    let mut failed = 0;
    for seen in first {
        match seen.relay.as_deref() {
            Some(name) if name == RELAY_NAMES[1] => {
                assert!(
                    seen.complete,
                    "a request on the surviving relay failed: {seen:?}"
                );
            }
            Some(name) if name == RELAY_NAMES[0] => {
                carried += 1;
                failed += usize::from(!seen.complete);
            }
            _ => panic!("{} got no answer from either relay: {seen:?}", seen.tag),
        }
    }
    (carried, failed)
}
