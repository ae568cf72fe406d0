//! What operators use: the admin API (`/admin/*`), `/metrics`, the dashboard and
//! `/setup`, and the API-key check in front of client routes.
//!
//! The admin token comes as `Authorization: Bearer …`, or, from the dashboard, as
//! a session cookie signed with a key derived from the token (so rotating the
//! token ends every session). Writes made with the cookie must carry the
//! `x-modelrelay-csrf` header, which a cross-site form cannot send.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use modelrelay_core::WorkerId;
use modelrelay_core::wire::WireVersion;
use serde_json::json;
use tracing::{info, warn};

use crate::app::{AppState, PeerAddr};
use crate::auth::client_address;
use crate::codes;
use crate::error::{ApiError, ApiFlavor};
use crate::keys::{ApiKeyId, ApiKeyRecord, KeyStoreError, is_key_shaped, rfc3339};

/// The dashboard's session cookie.
const SESSION_COOKIE: &str = "modelrelay_session";
/// How long a dashboard session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The header dashboard writes carry.
pub const CSRF_HEADER: &str = "x-modelrelay-csrf";
/// Largest admin request body (a key name, a login form).
const MAX_ADMIN_BODY: usize = 16 * 1024;

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const SETUP_HTML: &str = include_str!("../assets/setup.html");

/// What the pages may load: only themselves.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// How a request proved it is the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminProof {
    Bearer,
    Session,
}

/// Why a request is not let in.
enum Refusal {
    /// No admin token is configured.
    Disabled,
    /// Nothing or the wrong thing was presented.
    Unauthorized,
    /// Too many failures from this address.
    CoolingDown(Duration),
    /// A cookie-authenticated write without the CSRF header.
    MissingCsrf,
}

impl Refusal {
    fn into_response(self) -> Response {
        let error = match self {
            Self::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                codes::ADMIN_DISABLED,
                "The admin API is off; start the server with --admin-token (MODELRELAY_ADMIN_TOKEN).",
            ),
            Self::Unauthorized => ApiError::new(
                StatusCode::UNAUTHORIZED,
                codes::INVALID_ADMIN_TOKEN,
                "A valid admin token is required: Authorization: Bearer <token>.",
            ),
            Self::CoolingDown(retry) => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::AUTH_COOLDOWN,
                    "Too many failed admin authentications from this address; try again later.",
                );
                error.retry_after_secs = Some(retry.as_secs().max(1));
                error
            }
            Self::MissingCsrf => ApiError::new(
                StatusCode::FORBIDDEN,
                codes::CSRF_HEADER_MISSING,
                format!("Writes made with the dashboard session need the {CSRF_HEADER} header."),
            ),
        };
        let unauthorized = error.status == StatusCode::UNAUTHORIZED;
        let mut response = error.into_response(ApiFlavor::OpenAi);
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"modelrelay-admin\""),
            );
        }
        response
    }
}

/// Checks the admin token (bearer or dashboard session) of a request.
fn authorize(
    app: &AppState,
    peer: PeerAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<AdminProof, Refusal> {
    let Some(token) = &app.config.admin_token else {
        return Err(Refusal::Disabled);
    };
    let now = tokio::time::Instant::now().into_std();
    let address = client_address(peer.0.ip(), headers, app.config.trust_forwarded_for);
    app.admin_limiter
        .check(address, now)
        .map_err(Refusal::CoolingDown)?;
    if let Some(presented) = bearer(headers) {
        if token.matches(presented) {
            return Ok(AdminProof::Bearer);
        }
        app.admin_limiter.failure(address, now);
        warn!(peer = %peer.0, "refused an admin request: wrong token");
        return Err(Refusal::Unauthorized);
    }
    if let Some(session) = cookie(headers, SESSION_COOKIE)
        && session_is_valid(app, session, SystemTime::now())
    {
        let writes = !matches!(*method, Method::GET | Method::HEAD);
        if writes && !headers.contains_key(CSRF_HEADER) {
            return Err(Refusal::MissingCsrf);
        }
        return Ok(AdminProof::Session);
    }
    Err(Refusal::Unauthorized)
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// What a session's signature covers: its expiry, in seconds since the epoch.
fn session_message(expires: &str) -> String {
    format!("dashboard-session:{expires}")
}

/// A session value: its expiry and a signature of it.
fn session_value(app: &AppState, expires: u64) -> Option<String> {
    let token = app.config.admin_token.as_ref()?;
    let expires = expires.to_string();
    let tag = ring::hmac::sign(&token.session_key(), session_message(&expires).as_bytes());
    Some(format!(
        "{expires}.{}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

fn session_is_valid(app: &AppState, value: &str, now: SystemTime) -> bool {
    let Some(token) = &app.config.admin_token else {
        return false;
    };
    let Some((expires, signature)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires_at) = expires.parse::<u64>() else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expires_at <= now {
        return false;
    }
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    ring::hmac::verify(
        &token.session_key(),
        session_message(expires).as_bytes(),
        &signature,
    )
    .is_ok()
}

/// Proof that a request carries the admin token: handlers that take it run only for the operator.
pub(crate) struct Admin;

impl axum::extract::FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|info| info.0)
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        authorize(app, peer, &parts.method, &parts.headers)
            .map(|_| Self)
            .map_err(Refusal::into_response)
    }
}

fn key_json(record: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "created_at": rfc3339(record.created_at),
        "last_used_at": record.last_used_at.map(rfc3339),
    })
}

fn wire_name(wire: WireVersion) -> &'static str {
    match wire {
        WireVersion::V1 => "v1",
        WireVersion::V2 => "v2",
    }
}

/// An error answer in the admin API's (OpenAI) error shape.
fn admin_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response(ApiFlavor::OpenAi)
}

/// A 503 in the admin API's error shape.
fn unavailable(code: &'static str, message: &'static str) -> Response {
    admin_error(StatusCode::SERVICE_UNAVAILABLE, code, message)
}

fn hub_stopped() -> Response {
    unavailable(codes::SHUTTING_DOWN, "The relay is shutting down.")
}

fn store_failed(error: &KeyStoreError) -> Response {
    warn!(%error, "the key store failed");
    unavailable(
        codes::KEY_STORE_UNAVAILABLE,
        "The API-key database is not available.",
    )
}

fn no_key_store() -> Response {
    unavailable(
        codes::KEY_STORE_UNAVAILABLE,
        "This server has no API-key database.",
    )
}

/// `GET /admin/workers`.
pub(crate) async fn workers(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(workers) = app.hub.workers().await else {
        return hub_stopped();
    };
    let workers: Vec<_> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id.get(),
                "name": w.name,
                "provider": w.provider,
                "models": w.models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "in_flight": w.in_flight,
                "load": w.load,
                "capacity": w.capacity,
                "registered": w.registered,
                "draining": w.draining,
                "connected_since": rfc3339(w.connected_since),
                "connected_secs": w.connected_for.as_secs(),
                "transport": w.transport.name(),
                "protocol": wire_name(w.wire),
            })
        })
        .collect();
    axum::Json(json!({ "workers": workers })).into_response()
}

/// `GET /admin/stats`.
pub(crate) async fn stats(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(snapshot) = app.hub.snapshot().await else {
        return hub_stopped();
    };
    let stats = &snapshot.stats;
    axum::Json(json!({
        "requests": {
            "completed": stats.completed,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
        },
        "queue_depth": { app.config.provider.as_str(): snapshot.queue_depth },
        "in_flight": snapshot.open_requests,
        "workers": {
            "connected": snapshot.worker_states.active + snapshot.worker_states.draining + snapshot.worker_states.registering,
            "active": snapshot.worker_states.active,
            "draining": snapshot.worker_states.draining,
            "registering": snapshot.worker_states.registering,
        },
        "dispatched": stats.dispatched,
        "requeues": stats.requeues,
        "late_frames": stats.late_frames,
        "protocol_violations": stats.protocol_violations,
        "shutting_down": snapshot.shutting_down,
        "uptime_secs": app.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// `POST /admin/workers/{id}/drain`.
pub(crate) async fn drain_worker(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_WORKER_ID,
            "A worker id is a number, as GET /admin/workers lists it.",
        );
    };
    let worker = WorkerId::new(id);
    match app.hub.drain_worker(worker, app.config.drain_timeout).await {
        None => hub_stopped(),
        Some(false) => admin_error(
            StatusCode::NOT_FOUND,
            codes::WORKER_NOT_FOUND,
            format!("No worker with id {id} is connected."),
        ),
        Some(true) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "draining": true})),
        )
            .into_response(),
    }
}

/// `GET /admin/keys`.
pub(crate) async fn list_keys(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    match keys.list().await {
        Ok(list) => axum::Json(json!({"keys": list.iter().map(key_json).collect::<Vec<_>>()}))
            .into_response(),
        Err(error) => store_failed(&error),
    }
}

/// `POST /admin/keys` with `{"name": "…"}`: the key, shown this once.
pub(crate) async fn create_key(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    request: Request,
) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    #[derive(serde::Deserialize)]
    struct NewKey {
        name: String,
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_ADMIN_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return admin_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::REQUEST_TOO_LARGE,
                format!("The body must be at most {MAX_ADMIN_BODY} bytes."),
            );
        }
    };
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(error) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("Expected {{\"name\": \"…\"}}: {error}"),
            );
        }
    };
    match keys.create(&new.name, SystemTime::now()).await {
        Ok(created) => {
            info!(key = %created.record.id, name = %created.record.name, prefix = %created.record.prefix, "API key created");
            let mut body = key_json(&created.record);
            body["key"] = json!(created.key);
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(KeyStoreError::InvalidName) => admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_KEY_NAME,
            KeyStoreError::InvalidName.to_string(),
        ),
        Err(error) => store_failed(&error),
    }
}

/// `DELETE /admin/keys/{id}`: revokes at once.
pub(crate) async fn revoke_key(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    let Ok(id) = id.parse::<i64>() else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_KEY_ID,
            "A key id is a number, as GET /admin/keys lists it.",
        );
    };
    match keys.revoke(ApiKeyId::new(id)).await {
        Ok(true) => {
            info!(key = id, "API key revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => admin_error(
            StatusCode::NOT_FOUND,
            codes::KEY_NOT_FOUND,
            format!("No API key with id {id}."),
        ),
        Err(error) => store_failed(&error),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let Some(snapshot) = app.hub.snapshot().await else {
        return hub_stopped();
    };
    let text = app.metrics.render(
        app.config.provider.as_str(),
        snapshot.queue_depth,
        snapshot.open_requests,
        snapshot.worker_states,
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// An HTML page with the headers every page gets.
fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn disabled_page() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "<!doctype html><meta charset=utf-8><title>ModelRelay</title><p>The dashboard is off: start the server with <code>--admin-token</code> (<code>MODELRELAY_ADMIN_TOKEN</code>).</p>".into(),
    )
}

/// For a page: nothing if the operator may see it, else the answer instead (the way to log in).
fn page_refusal(app: &AppState, peer: PeerAddr, headers: &HeaderMap) -> Option<Response> {
    match authorize(app, peer, &Method::GET, headers) {
        Ok(_) => None,
        Err(Refusal::Disabled) => Some(disabled_page()),
        Err(Refusal::Unauthorized) => Some(redirect("/dashboard/login")),
        Err(other) => Some(other.into_response()),
    }
}

/// `GET /dashboard`.
pub(crate) async fn dashboard(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = page_refusal(&app, peer, &headers) {
        return refusal;
    }
    page(StatusCode::OK, DASHBOARD_HTML.to_owned())
}

/// `GET /dashboard/login`.
pub(crate) async fn login_page(State(app): State<Arc<AppState>>) -> Response {
    if app.config.admin_token.is_none() {
        return disabled_page();
    }
    page(StatusCode::OK, LOGIN_HTML.to_owned())
}

/// `POST /dashboard/login` with the form field `token`: a session cookie.
pub(crate) async fn login(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    request: Request,
) -> Response {
    let Some(admin) = app.config.admin_token.clone() else {
        return disabled_page();
    };
    let headers = request.headers().clone();
    if is_cross_site(&headers) {
        // Before anything is counted: another site could otherwise post wrong
        // tokens from the operator's browser and so lock the operator out.
        return admin_error(
            StatusCode::FORBIDDEN,
            codes::CROSS_SITE_LOGIN,
            "Log in from the relay's own login page.",
        );
    }
    let now = tokio::time::Instant::now().into_std();
    let address = client_address(peer.0.ip(), &headers, app.config.trust_forwarded_for);
    if let Err(retry) = app.admin_limiter.check(address, now) {
        return Refusal::CoolingDown(retry).into_response();
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_ADMIN_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let token = url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if !admin.matches(token.trim()) {
        app.admin_limiter.failure(address, now);
        warn!(peer = %peer.0, "refused a dashboard login: wrong token");
        return redirect("/dashboard/login?error=1");
    }
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + SESSION_LIFETIME.as_secs();
    let Some(value) = session_value(&app, expires) else {
        return disabled_page();
    };
    let secure = if is_https(&app, &headers) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = redirect("/dashboard");
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether a browser says this request comes from another site: by
/// `Sec-Fetch-Site`, or else by an `Origin` whose host is not this request's
/// `Host`. Requests without either (curl, scripts) are not cross-site.
fn is_cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site.trim(), "same-origin" | "none");
    }
    match text("origin") {
        None => false,
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, host)| host);
            origin_host.is_none() || origin_host != text("host")
        }
    }
}

/// `POST /dashboard/logout`: forgets the session cookie.
pub(crate) async fn logout() -> Response {
    let mut response = redirect("/dashboard/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "modelrelay_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

/// Whether the client reached us over HTTPS (as far as we can tell).
fn is_https(app: &AppState, headers: &HeaderMap) -> bool {
    let forwarded_https = app.config.trust_forwarded_for
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    forwarded_https
        || app
            .config
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

/// This server's base URL as clients see it.
fn public_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &app.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("127.0.0.1:8080");
    let scheme = if is_https(app, headers) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /setup`: commands to connect a new worker, with this server's URL.
pub(crate) async fn setup(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = page_refusal(&app, peer, &headers) {
        return refusal;
    }
    let url = public_url(&app, &headers);
    let quic_hint = match &app.config.quic {
        Some(quic) => {
            // The host without its port; an IPv6 address keeps its brackets.
            let parsed = url::Url::parse(&url).ok();
            let host = parsed
                .as_ref()
                .and_then(|u| u.host_str())
                .unwrap_or("127.0.0.1");
            format!(
                "<p>On a lossy link (Wi-Fi, mobile), connect over QUIC instead: <code>--proxy-url quic://{}:{}</code> (with <code>--server-cert-sha256</code> as the relay printed at start-up).</p>",
                escape_html(host),
                quic.listen.port()
            )
        }
        None => String::new(),
    };
    let html = SETUP_HTML
        .replace("{{PUBLIC_URL}}", &escape_html(&url))
        .replace("{{QUIC_HINT}}", &quic_hint);
    page(StatusCode::OK, html)
}

/// Whether a header value is, or is a bearer of, something shaped like one of the relay's keys.
pub(crate) fn carries_relay_key(value: &str) -> bool {
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    };
    is_key_shaped(token)
}

/// With `--require-api-keys` (else nothing to check): the client's key,
/// checked before the request is read. The key is taken from `Authorization: Bearer`, or on `/v1/messages`
/// from `x-api-key` (as Anthropic clients send it), preferring whichever has a
/// relay key's shape, so a client may also carry a backend credential in the
/// other header.
pub(crate) async fn check_api_key(
    app: &AppState,
    flavor: ApiFlavor,
    headers: &HeaderMap,
) -> Result<(), Response> {
    if !app.config.require_api_keys {
        return Ok(());
    }
    let Some(keys) = &app.config.keys else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::KEY_STORE_UNAVAILABLE,
            "API keys are required but this server has no key database.",
        )
        .into_response(flavor));
    };
    let x_api_key = (flavor == ApiFlavor::Anthropic)
        .then(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .flatten()
        .map(str::trim)
        .filter(|key| !key.is_empty());
    let candidates = [bearer(headers), x_api_key];
    let presented = candidates
        .iter()
        .flatten()
        .find(|key| is_key_shaped(key))
        .or(candidates.iter().flatten().next());
    let Some(presented) = presented else {
        let hint = match flavor {
            ApiFlavor::OpenAi => "Authorization: Bearer mr-…",
            ApiFlavor::Anthropic => "x-api-key: mr-… (or Authorization: Bearer mr-…)",
        };
        return Err(unauthorized(
            flavor,
            codes::MISSING_API_KEY,
            format!("An API key is required: {hint}."),
        ));
    };
    match keys.authenticate(presented, SystemTime::now()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(unauthorized(
            flavor,
            codes::INVALID_API_KEY,
            "The API key is not valid (unknown or revoked).".into(),
        )),
        Err(error) => {
            warn!(%error, "the key store failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::KEY_STORE_UNAVAILABLE,
                "API keys cannot be checked right now.",
            )
            .into_response(flavor))
        }
    }
}

fn unauthorized(flavor: ApiFlavor, code: &'static str, message: String) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response(flavor);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_trimmed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; modelrelay_session=5.ab; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("5.ab"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn cross_site_posts_are_told_apart_from_the_relays_own_pages() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(!is_cross_site(&headers(&[])));
        assert!(!is_cross_site(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        assert!(!is_cross_site(&headers(&[("sec-fetch-site", "none")])));
        assert!(is_cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(is_cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!is_cross_site(&headers(&[
            ("origin", "http://relay:8080"),
            ("host", "relay:8080")
        ])));
        assert!(is_cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "relay:8080")
        ])));
        assert!(is_cross_site(&headers(&[
            ("origin", "null"),
            ("host", "relay:8080")
        ])));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
