//! Operating the relay: the admin API, API keys on client routes, `/metrics`,
//! the dashboard session and `/setup`.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use modelrelay_relay::{AdminToken, CSRF_HEADER, RunningServer, ServerConfig};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-tests";
const BEARER: &str = "Bearer admin-token-for-tests";

/// A relay with the admin token and a key store.
async fn admin_relay(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let keys = common::keys::sqlite_keys().await;
    relay(|config| {
        config.admin_token = Some(AdminToken::new(ADMIN));
        config.keys = Some(keys);
        tweak(config);
    })
    .await
}

async fn admin_get(http: &Http, relay: &RunningServer, path: &str) -> Reply {
    let streaming = http
        .send(
            Method::GET,
            &format!("{}{path}", relay.url()),
            "",
            &[("authorization", BEARER)],
        )
        .await;
    reply(streaming).await
}

async fn admin_send(
    http: &Http,
    relay: &RunningServer,
    method: Method,
    path: &str,
    body: &str,
) -> Reply {
    let streaming = http
        .send(
            method,
            &format!("{}{path}", relay.url()),
            body,
            &[
                ("authorization", BEARER),
                ("content-type", "application/json"),
            ],
        )
        .await;
    reply(streaming).await
}

async fn reply(streaming: Streaming) -> Reply {
    let (status, headers) = (streaming.status, streaming.headers.clone());
    Reply {
        status,
        headers,
        body: streaming.rest().await,
    }
}

async fn get_with(http: &Http, url: &str, headers: &[(&str, &str)]) -> Reply {
    reply(http.send(Method::GET, url, "", headers).await).await
}

fn chat(stream: bool) -> String {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": {"tokens": 5}})
        .to_string()
}

fn anthropic() -> String {
    json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

#[tokio::test]
async fn admin_routes_answer_403_without_an_admin_token() {
    let relay = relay(|_| {}).await;
    let http = Http::new();
    for path in [
        "/admin/workers",
        "/admin/stats",
        "/admin/keys",
        "/admin/relays",
        "/admin/usage",
        "/dashboard",
        "/setup",
    ] {
        let answer = admin_get(&http, &relay, path).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            answer.text()
        );
    }
    let answer = admin_get(&http, &relay, "/admin/workers").await;
    assert_eq!(answer.json()["error"]["code"], "admin_disabled");
    let drain = admin_send(&http, &relay, Method::POST, "/admin/workers/1/drain", "").await;
    assert_eq!(drain.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admin_routes_need_the_right_token_and_wrong_ones_are_cooled_down_apart_from_workers() {
    let backend = backend(&["m"]).await;
    let relay = admin_relay(|_| {}).await;
    let http = Http::new();
    let url = format!("{}/admin/workers", relay.url());
    let none = get_with(&http, &url, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json()["error"]["code"], "invalid_admin_token");
    assert!(none.headers.contains_key("www-authenticate"));
    assert!(!none.text().contains(ADMIN));
    assert_eq!(
        admin_get(&http, &relay, "/admin/workers").await.status,
        StatusCode::OK
    );
    for _ in 0..5 {
        let wrong = get_with(&http, &url, &[("authorization", "Bearer wrong")]).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    let cooled = get_with(&http, &url, &[("authorization", BEARER)]).await;
    assert_eq!(
        cooled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        cooled.text()
    );
    assert!(cooled.headers.contains_key("retry-after"));
    // Workers from the same address still get in.
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    wait_for_workers(&http, &relay, 1).await;
}

#[tokio::test]
async fn the_admin_token_is_accepted_with_or_without_the_bearer_scheme() {
    let relay = admin_relay(|_| {}).await;
    let http = Http::new();
    let url = format!("{}/admin/stats", relay.url());
    // ModelRelay's admin scripts may send the token bare.
    for value in [BEARER, ADMIN, "bearer admin-token-for-tests"] {
        let answer = get_with(&http, &url, &[("authorization", value)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{value}: {}", answer.text());
    }
    for wrong in [
        "admin-token-for-test",
        "Bearer wrong",
        "Basic YWRtaW4tdG9rZW4tZm9yLXRlc3Rz",
        "admin-token-for-testsx",
    ] {
        let answer = get_with(&http, &url, &[("authorization", wrong)]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
}

/// The limiter's backstop (too many failures from all addresses together)
/// refuses addresses that never logged in, not the operator's.
#[tokio::test]
async fn a_flood_of_wrong_admin_tokens_from_elsewhere_does_not_shut_the_operator_out() {
    let relay = admin_relay(|config| {
        config.trust_forwarded_for = true;
        config.auth_limits.max_failures = 100;
        config.auth_limits.max_failures_in_all = 4;
    })
    .await;
    let http = Http::new();
    let url = format!("{}/admin/workers", relay.url());
    let from = |ip: &'static str, token: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            get_with(
                &http,
                &url,
                &[("authorization", token), ("x-forwarded-for", ip)],
            )
            .await
            .status
        }
    };
    assert_eq!(from("10.0.0.1", BEARER).await, StatusCode::OK);
    for ip in ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"] {
        assert_eq!(from(ip, "Bearer wrong").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        from("10.0.2.1", BEARER).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new address waits out the backstop"
    );
    assert_eq!(
        from("10.0.0.1", BEARER).await,
        StatusCode::OK,
        "the operator's address is not shut out"
    );
}

#[tokio::test]
async fn workers_are_listed_with_their_models_load_transport_and_protocol() {
    let backend = backend(&["m", "n"]).await;
    let relay = relay_with_quic(|config| {
        config.admin_token = Some(AdminToken::new(ADMIN));
    })
    .await;
    let mut ws = WorkerSpec::new(&relay, &backend, &["m", "n"]);
    ws.name = "ws-box";
    ws.max_concurrent = 3;
    let _ws = ws.start();
    let mut quic = WorkerSpec::quic(&relay, &backend, &["m"]);
    quic.name = "quic-box";
    let _quic = quic.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 2).await;
    let listed = admin_get(&http, &relay, "/admin/workers").await;
    assert_eq!(listed.status, StatusCode::OK);
    let workers = listed.json()["workers"].as_array().unwrap().clone();
    let by_name = |name: &str| -> Value {
        workers
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {workers:?}"))
            .clone()
    };
    let ws = by_name("ws-box");
    assert_eq!(ws["models"], json!(["m", "n"]));
    assert_eq!(ws["capacity"], 3);
    assert_eq!(ws["load"], 0);
    assert_eq!(ws["in_flight"], 0);
    assert_eq!(ws["draining"], false);
    assert_eq!(ws["transport"], "websocket");
    assert_eq!(ws["protocol"], "v2");
    assert_eq!(ws["provider"], "local");
    assert!(ws["id"].as_u64().is_some());
    assert!(ws["connected_since"].as_str().unwrap().ends_with('Z'));
    let quic = by_name("quic-box");
    assert_eq!(quic["transport"], "quic");
    assert_eq!(quic["protocol"], "v2");
}

/// `/admin/relays` on `relay` until `done` holds for its list; 10 s at most.
async fn relays_until(
    http: &Http,
    relay: &RunningServer,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = admin_get(http, relay, "/admin/relays").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let relays = answer.json()["relays"].as_array().unwrap().clone();
        if done(&relays) {
            return relays;
        }
        assert!(tokio::time::Instant::now() < deadline, "{relays:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn named<'a>(relays: &'a [Value], name: &str) -> Option<&'a Value> {
    relays.iter().find(|r| r["name"] == name)
}

#[tokio::test]
async fn relays_sharing_a_database_are_listed_with_their_state_and_this_one_marked() {
    use modelrelay_relay::keys::RelayRow;
    use std::time::SystemTime;

    let keys = common::keys::sqlite_keys().await;
    // Rows a crashed relay left: one a few minutes ago, one yesterday.
    let left = |name: &str, ago: u64| RelayRow {
        id: format!("00000000-0000-7000-8000-{ago:012}"),
        name: name.to_owned(),
        version: "0.0.1".to_owned(),
        started_at: SystemTime::now() - Duration::from_secs(ago + 60),
        last_seen: SystemTime::now() - Duration::from_secs(ago),
        draining: false,
        workers: 2,
        open_requests: 0,
        queue_depth: 0,
    };
    keys.write_relay(&left("crashed", 300)).await.unwrap();
    keys.write_relay(&left("forgotten", 25 * 3600))
        .await
        .unwrap();
    let (a_keys, b_keys) = (keys.clone(), keys.clone());
    let a = admin_relay(move |c| {
        c.relay_name = "relay-a".into();
        c.keys = Some(a_keys);
    })
    .await;
    let b = admin_relay(move |c| {
        c.relay_name = "relay-b".into();
        c.keys = Some(b_keys);
    })
    .await;
    let backend = backend(&["m"]).await;
    let _worker = WorkerSpec::new(&a, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &a, 1).await;

    let listed = relays_until(&http, &a, |r| {
        named(r, "relay-b").is_some() && named(r, "forgotten").is_none()
    })
    .await;
    let names: Vec<_> = listed.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["crashed", "relay-a", "relay-b"],
        "by name; a day unseen is forgotten"
    );
    let this = named(&listed, "relay-a").unwrap();
    assert_eq!(this["this"], true);
    assert_eq!(this["state"], "serving");
    assert_eq!(this["workers"], 1, "this relay's numbers are live");
    assert_eq!(this["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(this["id"].as_str().unwrap().len(), 36);
    assert_eq!(
        this["id"].as_str().unwrap().as_bytes()[14],
        b'7',
        "a UUIDv7"
    );
    for field in ["started_at", "last_seen"] {
        assert!(this[field].as_str().unwrap().ends_with('Z'), "{this}");
    }
    let other = named(&listed, "relay-b").unwrap();
    assert_eq!(
        (other["this"].clone(), other["state"].clone()),
        (json!(false), json!("serving"))
    );
    assert_ne!(other["id"], this["id"]);
    let crashed = named(&listed, "crashed").unwrap();
    assert_eq!(crashed["state"], "stale");
    assert_eq!(crashed["workers"], 2, "as it last wrote");
    // The other relay sees the same list, from its side.
    let from_b = relays_until(&http, &b, |r| r.len() == 3).await;
    assert_eq!(named(&from_b, "relay-b").unwrap()["this"], true);
    assert_eq!(named(&from_b, "relay-a").unwrap()["this"], false);

    // A relay that stops takes its row with it.
    b.shutdown().await;
    relays_until(&http, &a, |r| named(r, "relay-b").is_none()).await;

    // Without a key database a relay lists only itself.
    let alone = relay(|c| {
        c.admin_token = Some(AdminToken::new(ADMIN));
        c.relay_name = "alone".into();
    })
    .await;
    let listed = relays_until(&http, &alone, |r| !r.is_empty()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["name"].clone(), listed[0]["this"].clone()),
        (json!("alone"), json!(true))
    );
}

#[tokio::test]
async fn a_relay_list_the_database_cannot_hold_costs_a_warning_never_serving() {
    use modelrelay_relay::keys::{KeyStore, KeyStoreLocation, READER_LEVEL, Schema};
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("keys-no-relay-list-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Migrated by a build that knew no relay list: every write to it fails.
    let keys = KeyStore::open_with(
        &KeyStoreLocation::Sqlite(dir.clone()),
        &Schema::of_build(0, READER_LEVEL),
    )
    .await
    .unwrap();
    let relay = admin_relay(|c| c.keys = Some(std::sync::Arc::new(keys))).await;
    let backend = backend(&["m"]).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let answer = http
        .post(
            &format!("{}/v1/chat/completions", relay.url()),
            r#"{"model":"m"}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let listed = admin_get(&http, &relay, "/admin/relays").await;
    assert_eq!(listed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(listed.json()["error"]["code"], "key_store_unavailable");
    let health = http.get(&format!("{}/health", relay.url())).await;
    assert_eq!(health.status, StatusCode::OK);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stats_count_requests_by_outcome() {
    let backend = backend(&["m"]).await;
    let relay = admin_relay(|_| {}).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    assert_eq!(http.post(&url, &chat(true)).await.status, StatusCode::OK);
    let unknown = json!({"model": "nobody-serves-this", "messages": []}).to_string();
    assert_eq!(
        http.post(&url, &unknown).await.status,
        StatusCode::NOT_FOUND
    );
    let stats = admin_get(&http, &relay, "/admin/stats").await.json();
    assert_eq!(
        stats["requests"],
        json!({"completed": 1, "failed": 1, "cancelled": 0}),
        "{stats}"
    );
    assert_eq!(stats["queue_depth"], json!({"local": 0}));
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["workers"]["connected"], 1);
    assert_eq!(stats["workers"]["draining"], 0);
}

#[tokio::test]
async fn draining_one_worker_sends_new_work_to_the_others() {
    let slow = backend(&["m"]).await;
    let other = backend(&["m"]).await;
    let relay = admin_relay(|_| {}).await;
    let mut a = WorkerSpec::new(&relay, &slow, &["m"]);
    a.name = "a";
    let _a = a.start();
    let mut b = WorkerSpec::new(&relay, &other, &["m"]);
    b.name = "b";
    let _b = b.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 2).await;
    let workers = admin_get(&http, &relay, "/admin/workers").await.json();
    let a_id = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "a")
        .unwrap()["id"]
        .as_u64()
        .unwrap();

    // Keep `a` busy so its drain lasts while new requests arrive.
    let url = format!("{}/v1/chat/completions", relay.url());
    let long =
        json!({"model": "m", "stream": true, "mock": {"tokens": 40, "delay_ms": 25}}).to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            http.send(
                Method::POST,
                &url,
                &long,
                &[("content-type", "application/json")],
            )
            .await,
        );
    }
    let drained = admin_send(
        &http,
        &relay,
        Method::POST,
        &format!("/admin/workers/{a_id}/drain"),
        "",
    )
    .await;
    assert_eq!(drained.status, StatusCode::ACCEPTED, "{}", drained.text());
    assert_eq!(drained.json(), json!({"id": a_id, "draining": true}));
    let listed = admin_get(&http, &relay, "/admin/workers").await.json();
    let a_now = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == a_id)
        .cloned();
    assert_eq!(
        a_now.map(|w| w["draining"].clone()),
        Some(json!(true)),
        "{listed}"
    );

    let served_by_a_before = slow.sim.events().len();
    for _ in 0..6 {
        let answer = http.post(&url, &chat(false)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(
        slow.sim.events().len(),
        served_by_a_before,
        "the draining worker got no new work"
    );
    for stream in held {
        assert_eq!(stream.status, StatusCode::OK);
        let body = stream.rest().await;
        assert!(
            String::from_utf8_lossy(&body).contains("[DONE]"),
            "running work finishes"
        );
    }

    let missing = admin_send(
        &http,
        &relay,
        Method::POST,
        "/admin/workers/999999/drain",
        "",
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "worker_not_found");
    let bad = admin_send(&http, &relay, Method::POST, "/admin/workers/abc/drain", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn api_keys_gate_every_client_route_and_revocation_holds_at_once() {
    let backend = backend(&["m"]).await;
    let relay = admin_relay(|config| config.require_api_keys = true).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let chat_url = format!("{}/v1/chat/completions", relay.url());
    let messages_url = format!("{}/v1/messages", relay.url());
    let models_url = format!("{}/v1/models", relay.url());

    // No key: 401 in each API's own error shape.
    let openai = http.post(&chat_url, &chat(true)).await;
    assert_eq!(openai.status, StatusCode::UNAUTHORIZED);
    assert_eq!(openai.json()["error"]["code"], "missing_api_key");
    assert_eq!(openai.json()["error"]["type"], "authentication_error");
    let claude = http.post(&messages_url, &anthropic()).await;
    assert_eq!(claude.status, StatusCode::UNAUTHORIZED);
    assert_eq!(claude.json()["type"], "error");
    assert_eq!(claude.json()["error"]["type"], "authentication_error");
    assert_eq!(
        get_with(&http, &models_url, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Made once, shown once.
    let created = admin_send(
        &http,
        &relay,
        Method::POST,
        "/admin/keys",
        r#"{"name":"laptop"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_i64().unwrap();
    assert!(key.starts_with("mr-"));
    assert_eq!(created["prefix"].as_str().unwrap(), &key[..11]);
    let listed = admin_get(&http, &relay, "/admin/keys").await;
    assert!(!listed.text().contains(&key), "listings never show the key");
    assert_eq!(listed.json()["keys"][0]["name"], "laptop");
    assert_eq!(listed.json()["keys"][0]["last_used_at"], Value::Null);

    let bearer = format!("Bearer {key}");
    let with_key = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    let x_api_key = [
        ("content-type", "application/json"),
        ("x-api-key", key.as_str()),
    ];
    let streamed = http.post_with(&chat_url, &chat(true), &with_key).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text());
    assert!(streamed.text().contains("[DONE]"));
    assert_eq!(
        http.post_with(&messages_url, &anthropic(), &x_api_key)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        http.post_with(&messages_url, &anthropic(), &with_key)
            .await
            .status,
        StatusCode::OK
    );
    // x-api-key is Anthropic's header; OpenAI routes take the bearer.
    assert_eq!(
        http.post_with(&chat_url, &chat(false), &x_api_key)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&http, &models_url, &with_key).await.status,
        StatusCode::OK
    );
    let wrong = http
        .post_with(
            &chat_url,
            &chat(false),
            &[(
                "authorization",
                "Bearer mr-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");

    // Both headers carrying the key (as clients do that read two variables):
    // accepted, and neither header reaches the backend.
    let both = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
        ("x-api-key", key.as_str()),
    ];
    assert_eq!(
        http.post_with(&messages_url, &anthropic(), &both)
            .await
            .status,
        StatusCode::OK
    );
    // A backend credential as the bearer and the relay's key as x-api-key:
    // the key is checked, the backend's credential passes on untouched.
    let backend_credential = [
        ("content-type", "application/json"),
        ("authorization", "Bearer backend-token"),
        ("x-api-key", key.as_str()),
    ];
    assert_eq!(
        http.post_with(&messages_url, &anthropic(), &backend_credential)
            .await
            .status,
        StatusCode::OK
    );
    let passed_on = backend.sim.events().iter().any(|event| {
        matches!(event, modelrelay_testkit::simulated_backend::BackendEvent::Received { headers, .. }
            if headers.iter().any(|(name, value)| name == "authorization" && value == "Bearer backend-token"))
    });
    assert!(passed_on, "{:?}", backend.sim.events());

    // The relay's key stays with the relay: the backend never sees it.
    for event in backend.sim.events() {
        if let modelrelay_testkit::simulated_backend::BackendEvent::Received { headers, .. } = event
        {
            assert!(
                headers.iter().all(|(_, value)| !value.contains(&key)),
                "the backend saw the relay's key: {headers:?}"
            );
        }
    }
    let listed = admin_get(&http, &relay, "/admin/keys").await.json();
    assert!(listed["keys"][0]["last_used_at"].is_string(), "{listed}");

    // Revoked: refused on the very next request, on every route.
    let revoked = admin_send(
        &http,
        &relay,
        Method::DELETE,
        &format!("/admin/keys/{id}"),
        "",
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        http.post_with(&chat_url, &chat(true), &with_key)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.post_with(&messages_url, &anthropic(), &x_api_key)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&http, &models_url, &with_key).await.status,
        StatusCode::UNAUTHORIZED
    );
    let again = admin_send(
        &http,
        &relay,
        Method::DELETE,
        &format!("/admin/keys/{id}"),
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        admin_get(&http, &relay, "/admin/keys").await.json()["keys"],
        json!([])
    );

    // Bad admin input gets clear errors.
    for body in ["", "{}", r#"{"name":""}"#, r#"{"name":"a\nb"}"#] {
        let answer = admin_send(&http, &relay, Method::POST, "/admin/keys", body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text()
        );
    }
    let bad_id = admin_send(&http, &relay, Method::DELETE, "/admin/keys/x", "").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
}

/// The value of the sample line starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

#[tokio::test]
async fn metrics_count_requests_latencies_bytes_tokens_and_workers() {
    let backend = backend(&["m"]).await;
    let relay = relay(|_| {}).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let streamed = http.post(&url, &chat(true)).await;
    let whole = http.post(&url, &chat(false)).await;
    assert_eq!(whole.status, StatusCode::OK);
    let with_usage = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "mock": {"tokens": 5}}).to_string();
    assert_eq!(http.post(&url, &with_usage).await.status, StatusCode::OK);
    let unknown = json!({"model": "made-up-model", "messages": []}).to_string();
    assert_eq!(
        http.post(&url, &unknown).await.status,
        StatusCode::NOT_FOUND
    );
    leave_after(
        &http,
        &url,
        &json!({"model": "m", "stream": true, "mock": {"tokens": 50, "delay_ms": 20}}).to_string(),
        1,
    )
    .await;

    let scrape = || async { get_with(&http, &format!("{}/metrics", relay.url()), &[]).await };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let answer = scrape().await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = answer.text();
        if text.contains(r#"modelrelay_cancellations_total{reason="client_disconnected"} 1"#) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancellation was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let route = r#"route="/v1/chat/completions""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"modelrelay_requests_total{{{route},model="m",outcome="ok"}}"#)
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"modelrelay_requests_total{{{route},model="m",outcome="cancelled"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"modelrelay_requests_total{{{route},model="unknown",outcome="model_not_found"}}"#
            )
        ),
        1.0
    );
    assert!(
        !text.contains("made-up-model"),
        "client-chosen names do not become labels"
    );
    assert_eq!(
        sample(
            &text,
            &format!("modelrelay_time_to_first_chunk_seconds_count{{{route}}}")
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"modelrelay_request_duration_seconds_count{{{route},outcome="ok"}}"#)
        ),
        3.0
    );
    assert!(sample(&text, "modelrelay_queue_wait_seconds_count") >= 4.0);
    let streamed_bytes = sample(&text, r#"modelrelay_streamed_bytes_total{model="m"}"#);
    assert!(
        streamed_bytes >= streamed.body.len() as f64,
        "{streamed_bytes} < {}",
        streamed.body.len()
    );
    // The whole answer's usage plus the stream's usage chunk: 5 completion tokens each.
    assert_eq!(
        sample(
            &text,
            r#"modelrelay_tokens_total{model="m",kind="completion"}"#
        ),
        10.0
    );
    assert_eq!(
        sample(&text, r#"modelrelay_queue_depth{provider="local"}"#),
        0.0
    );
    assert_eq!(sample(&text, "modelrelay_requests_in_flight"), 0.0);
    assert_eq!(sample(&text, r#"modelrelay_workers{state="active"}"#), 1.0);
    assert_eq!(
        sample(&text, r#"modelrelay_workers{state="draining"}"#),
        0.0
    );
    assert_eq!(sample(&text, "modelrelay_requeues_total"), 0.0);
    assert!(!text.contains("# EOF"), "Prometheus text has no end marker");
}

fn session_cookie(reply: &Reply) -> String {
    let set = reply.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_dashboard_session_comes_from_the_token_and_writes_and_logout_need_the_csrf_header() {
    let relay = admin_relay(|_| {}).await;
    let http = Http::new();
    let base = relay.url();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    let away = get_with(&http, &format!("{base}/dashboard"), &[]).await;
    assert_eq!(away.status, StatusCode::SEE_OTHER);
    assert_eq!(away.headers["location"], "/dashboard/login");
    let login_page = get_with(&http, &format!("{base}/dashboard/login"), &[]).await;
    assert_eq!(login_page.status, StatusCode::OK);
    assert!(
        login_page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );

    // Another site posting wrong tokens from the operator's browser is refused
    // before anything is counted, so it cannot lock the operator out.
    for _ in 0..8 {
        let forged = http
            .post_with(
                &format!("{base}/dashboard/login"),
                "token=nope",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "cross-site"),
                ],
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert!(!forged.headers.contains_key("set-cookie"));
    }
    assert_eq!(
        admin_get(&http, &relay, "/admin/workers").await.status,
        StatusCode::OK,
        "not locked out"
    );

    let wrong = http
        .post_with(&format!("{base}/dashboard/login"), "token=nope", &form)
        .await;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER);
    assert_eq!(wrong.headers["location"], "/dashboard/login?error=1");
    assert!(!wrong.headers.contains_key("set-cookie"));

    let right = http
        .post_with(
            &format!("{base}/dashboard/login"),
            &format!("token={ADMIN}"),
            &form,
        )
        .await;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    assert_eq!(right.headers["location"], "/dashboard");
    let cookie = session_cookie(&right);
    assert!(!cookie.contains(ADMIN), "the cookie is not the token");

    let page = get_with(&http, &format!("{base}/dashboard"), &[("cookie", &cookie)]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("worker-row"));
    assert_eq!(page.headers["cache-control"], "no-store");
    let workers = get_with(
        &http,
        &format!("{base}/admin/workers"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(workers.status, StatusCode::OK);

    // A write with only the cookie could come from another site's form: refused.
    let url = format!("{base}/admin/workers/999/drain");
    let forged = reply(
        http.send(Method::POST, &url, "", &[("cookie", &cookie)])
            .await,
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(forged.json()["error"]["code"], "csrf_header_missing");
    let from_page = reply(
        http.send(
            Method::POST,
            &url,
            "",
            &[("cookie", &cookie), (CSRF_HEADER, "1")],
        )
        .await,
    )
    .await;
    assert_eq!(
        from_page.status,
        StatusCode::NOT_FOUND,
        "authorized, no such worker"
    );

    // A tampered or expired cookie is nothing.
    let (name, value) = cookie.split_once('=').unwrap();
    let (expires, signature) = value.split_once('.').unwrap();
    let later = format!("{name}={}.{signature}", expires.parse::<u64>().unwrap() + 1);
    let expired = format!("{name}=1.{signature}");
    for bad in [later, expired, format!("{name}=garbage")] {
        let answer = get_with(&http, &format!("{base}/dashboard"), &[("cookie", &bad)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{bad}");
    }

    // Another token (a rotation) ends old sessions; so does another process
    // with the same token: the key is random, not derived from the token.
    for other in [
        relay_with_token("another-token").await,
        relay_with_token(ADMIN).await,
    ] {
        let answer = get_with(
            &http,
            &format!("{}/dashboard", other.url()),
            &[("cookie", &cookie)],
        )
        .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
    }

    // Logging out is a write like the others: another site's form (no CSRF
    // header) or a request without the session cannot do it.
    let logout = async |headers: &[(&str, &str)]| {
        reply(
            http.send(
                Method::POST,
                &format!("{base}/dashboard/logout"),
                "",
                headers,
            )
            .await,
        )
        .await
    };
    let forged = logout(&[("cookie", &cookie)]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text());
    assert!(!forged.headers.contains_key("set-cookie"));
    let anonymous = logout(&[(CSRF_HEADER, "1")]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let out = logout(&[("cookie", &cookie), (CSRF_HEADER, "1")]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

async fn relay_with_token(token: &str) -> RunningServer {
    let token = AdminToken::new(token);
    relay(|config| config.admin_token = Some(token)).await
}

#[tokio::test]
async fn setup_shows_commands_with_this_servers_url() {
    let relay = admin_relay(|config| {
        config.public_url = Some("https://relay.example.com/".into());
    })
    .await;
    let http = Http::new();
    let page = admin_get(&http, &relay, "/setup").await;
    assert_eq!(page.status, StatusCode::OK);
    let text = page.text();
    assert!(text.contains("https://relay.example.com"), "{text}");
    assert!(!text.contains("{{"), "every placeholder is filled");
    assert!(text.contains("modelrelay-worker"));

    // Without --public-url, the address the browser used.
    let plain = admin_relay(|_| {}).await;
    let page = admin_get(&http, &plain, "/setup").await.text();
    assert!(page.contains(&plain.url()), "{}", plain.url());
    let hostile = get_with(
        &http,
        &format!("{}/setup", plain.url()),
        &[("authorization", BEARER), ("host", "evil\"><script>")],
    )
    .await;
    assert!(
        !hostile.text().contains("<script>\""),
        "a hostile Host header is not echoed"
    );

    // The QUIC hint names the host the browser used, an IPv6 one in brackets.
    let quic = relay_with_quic(|config| config.admin_token = Some(AdminToken::new(ADMIN))).await;
    let page = get_with(
        &http,
        &format!("{}/setup", quic.url()),
        &[("authorization", BEARER), ("host", "[2001:db8::1]:8080")],
    )
    .await
    .text();
    assert!(page.contains("quic://[2001:db8::1]:"), "{page}");
}

#[tokio::test]
async fn setup_offers_this_relays_downloads_checked_by_checksum_or_a_build_and_names_its_provider()
{
    let http = Http::new();
    // No downloads: how to build it, and no address the project has not verified.
    let plain = admin_relay(|_| {}).await;
    let page = admin_get(&http, &plain, "/setup").await.text();
    assert!(
        page.contains("cargo build --release --locked --bin modelrelay-worker"),
        "{page}"
    );
    assert!(!page.contains("github.com"), "{page}");
    assert!(
        !page.contains("--provider"),
        "the default provider needs no flag"
    );

    let dir =
        std::env::temp_dir().join(format!("modelrelay-setup-downloads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modelrelay-worker-x86_64-linux"), b"linux build").unwrap();
    std::fs::write(
        dir.join("modelrelay-worker-x86_64-windows.exe"),
        b"windows build",
    )
    .unwrap();
    let downloads =
        std::sync::Arc::new(modelrelay_relay::downloads::Downloads::scan(&dir).unwrap());
    let serving = admin_relay(move |config| {
        config.downloads = Some(downloads);
        config.provider = modelrelay_core::ProviderId::new("gpu");
    })
    .await;
    let page = admin_get(&http, &serving, "/setup").await.text();
    let url = serving.url();
    assert!(
        page.contains(&format!(
            "curl -fsSLO '{url}/downloads/modelrelay-worker-x86_64-linux'"
        )),
        "{page}"
    );
    assert!(
        page.contains("modelrelay-worker-x86_64-linux.sha256' | sha256sum -c -"),
        "{page}"
    );
    assert!(
        page.contains("Get-FileHash modelrelay-worker-x86_64-windows.exe"),
        "{page}"
    );
    assert!(page.contains("--provider 'gpu'"), "{page}");
    // Keeping it running: the service recipe of each platform, with the provider.
    assert!(
        page.contains("systemctl enable --now modelrelay-worker@gpu0"),
        "{page}"
    );
    assert!(page.contains("PROVIDER_NAME='gpu'"), "{page}");
    assert!(
        page.contains("extras/launchd/com.modelrelay.worker.plist"),
        "{page}"
    );
    assert!(page.contains("extras/windows/install-worker.ps1"), "{page}");
    assert!(
        page.contains("loopback"),
        "a loopback URL comes with a warning"
    );
    assert!(!page.contains("{{"), "every placeholder is filled");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn setup_shows_the_address_a_trusted_proxy_was_reached_at_and_warns_about_plain_http() {
    let http = Http::new();
    let forwarded = [
        ("authorization", BEARER),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "relay.example.com"),
    ];
    let behind = admin_relay(|config| config.trust_forwarded_for = true).await;
    let page = get_with(&http, &format!("{}/setup", behind.url()), &forwarded)
        .await
        .text();
    assert!(
        page.contains("--proxy-url 'https://relay.example.com'"),
        "{page}"
    );
    assert!(!page.contains("loopback"), "{page}");
    assert!(!page.contains("plain HTTP"), "{page}");
    // Forwarded headers from a proxy that is not trusted are not believed.
    let direct = admin_relay(|_| {}).await;
    let page = get_with(&http, &format!("{}/setup", direct.url()), &forwarded)
        .await
        .text();
    assert!(!page.contains("relay.example.com"), "{page}");
    // A plain-HTTP address others can reach: the secret would cross it in clear.
    let page = get_with(
        &http,
        &format!("{}/setup", direct.url()),
        &[("authorization", BEARER), ("host", "relay.lan:8080")],
    )
    .await
    .text();
    assert!(page.contains("plain HTTP"), "{page}");
    assert!(page.contains("--public-url"), "{page}");
}

#[tokio::test]
async fn the_history_holds_the_last_hours_requests_first_chunks_and_tokens_in_ten_second_buckets() {
    let relay = admin_relay(|_| {}).await;
    let backend = backend(&["m"]).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_model(&http, &relay, "m").await;
    for _ in 0..4 {
        let reply = http
            .post(
                &format!("{}/v1/chat/completions", relay.url()),
                r#"{"model":"m","stream":true,"messages":[]}"#,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let history = admin_get(&http, &relay, "/admin/history").await;
    assert_eq!(history.status, StatusCode::OK);
    let history = history.json();
    assert_eq!(history["bucket_secs"], 10);
    let buckets = history["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.len() <= 360, "{history}");
    let completed: u64 = buckets
        .iter()
        .map(|b| b["completed"].as_u64().unwrap())
        .sum();
    assert_eq!(completed, 4, "{history}");
    assert!(
        buckets.iter().any(|b| b["first_chunk_p50_ms"].is_u64()),
        "streams have a first-chunk time: {history}"
    );
    // Like every admin route, only for the operator.
    let anonymous = http.get(&format!("{}/admin/history", relay.url())).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// A streamed chat request tagged `tag` for the simulated backend.
fn tagged_chat(tag: &str) -> String {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}],
           "mock": {"tokens": 4, "tag": tag}})
    .to_string()
}

#[tokio::test]
async fn a_request_pinned_to_a_worker_runs_there_and_only_the_operator_may_send_one() {
    let relay = admin_relay(|_| {}).await;
    let (backend_a, backend_b) = (backend(&["m"]).await, backend(&["m"]).await);
    let mut spec = WorkerSpec::new(&relay, &backend_a, &["m"]);
    spec.name = "box-a";
    let _a = spec.start();
    let mut spec = WorkerSpec::new(&relay, &backend_b, &["m"]);
    spec.name = "box-b";
    let _b = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 2).await;
    let listed = admin_get(&http, &relay, "/admin/workers").await.json();
    let id_of = |name: &str| {
        listed["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .and_then(|w| w["id"].as_u64())
            .unwrap_or_else(|| panic!("{name} listed: {listed}"))
    };
    let a = id_of("box-a");

    // Every request pinned to box-a runs on box-a, though box-b is as free.
    for n in 0..4 {
        let path = format!("/admin/workers/{a}/v1/chat/completions");
        let answer = admin_send(
            &http,
            &relay,
            Method::POST,
            &path,
            &tagged_chat(&format!("pin-{n}")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert!(answer.text().contains("data: [DONE]"), "{}", answer.text());
    }
    let on = |backend: &Backend| {
        backend
            .sim
            .streamed()
            .into_keys()
            .filter(|tag| tag.starts_with("pin-"))
            .count()
    };
    assert_eq!((on(&backend_a), on(&backend_b)), (4, 0));
    // The operator's token is the relay's business: the backend never sees it.
    for event in backend_a.sim.events() {
        if let modelrelay_testkit::simulated_backend::BackendEvent::Received { headers, .. } = event
        {
            assert!(
                headers.iter().all(|(_, value)| !value.contains(ADMIN)),
                "the backend saw the admin token: {headers:?}"
            );
        }
    }
    // Unpinned, the same relay spreads requests over both.
    for n in 0..4 {
        let answer = http
            .post(
                &format!("{}/v1/chat/completions", relay.url()),
                &tagged_chat(&format!("spread-{n}")),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(
        !backend_b.sim.streamed().is_empty(),
        "box-b serves unpinned requests"
    );

    // Errors come in the route's API shape.
    let no_worker = admin_send(
        &http,
        &relay,
        Method::POST,
        "/admin/workers/999/v1/chat/completions",
        &chat(true),
    )
    .await;
    assert_eq!(
        no_worker.status,
        StatusCode::NOT_FOUND,
        "{}",
        no_worker.text()
    );
    assert_eq!(no_worker.json()["error"]["code"], "worker_not_found");
    let bad_id = admin_send(
        &http,
        &relay,
        Method::POST,
        "/admin/workers/x/v1/messages",
        &anthropic(),
    )
    .await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_id.json()["type"],
        "error",
        "Anthropic's shape: {}",
        bad_id.text()
    );
    let other_model = admin_send(
        &http,
        &relay,
        Method::POST,
        &format!("/admin/workers/{a}/v1/chat/completions"),
        &json!({"model": "n", "messages": []}).to_string(),
    )
    .await;
    assert_eq!(
        other_model.status,
        StatusCode::NOT_FOUND,
        "no worker serves n: {}",
        other_model.text()
    );

    // Only the operator: no token, a client's bearer, or a session cookie
    // without the CSRF header is refused before the body is read.
    for headers in [
        vec![],
        vec![("authorization", "Bearer not-the-admin-token")],
    ] {
        let refused = reply(
            http.send(
                Method::POST,
                &format!("{}/admin/workers/{a}/v1/chat/completions", relay.url()),
                &chat(true),
                &headers,
            )
            .await,
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "{headers:?}: {}",
            refused.text()
        );
    }
    assert_eq!(
        on(&backend_a),
        4,
        "a refused request never reached the worker"
    );
}
