//! Dashboard login and logout: the session cookie handed out and taken back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::app::{AppState, PeerAddr};
use crate::auth::client_address;
use crate::codes;
use crate::log_budget::LogBudget;

use super::MAX_ADMIN_BODY;
use super::admin_api::admin_error;
use super::pages::{disabled_page, is_https, page, redirect};
use super::session::{SESSION_COOKIE, SESSION_LIFETIME, authorize, session_value};

const LOGIN_HTML: &str = include_str!("../../assets/login.html");

/// The login page's refusal banner, hidden until a refusal shows it.
const REFUSAL_BANNER: &str = r#"<div class="banner" id="error" role="alert" hidden>That token was not accepted. Check it and try again.</div>"#;

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
        return cooldown_page(retry);
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
        static LINES: LogBudget = LogBudget::new();
        if let Some(left_out) = LINES.allow(now) {
            warn!(peer = %peer.0, left_out, "refused a dashboard login: wrong token");
        }
        return redirect("/dashboard/login?error=1");
    }
    app.admin_limiter.success(address);
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

/// The login page again, answered 429 with `Retry-After` while this address
/// cools down after failed logins, its banner saying how long to wait: the
/// form is posted by a browser, which would show a JSON error raw.
fn cooldown_page(retry: Duration) -> Response {
    let secs = retry.as_secs().max(1);
    let banner = format!(
        r#"<div class="banner" id="error" role="alert">Too many failed logins from this address. Try again in {secs} seconds.</div>"#
    );
    let html = LOGIN_HTML.replacen(REFUSAL_BANNER, &banner, 1);
    let mut response = page(StatusCode::TOO_MANY_REQUESTS, html);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
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

/// `POST /dashboard/logout`: forgets the session cookie. Like every other
/// cookie-authenticated write it needs the session and the CSRF header, so no
/// other site can log the operator out.
pub(crate) async fn logout(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = authorize(&app, peer, &method, &headers) {
        return refusal.into_response();
    }
    let mut response = redirect("/dashboard/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "modelrelay_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cooldown_page_is_the_login_page_with_the_wait_in_its_banner() {
        assert!(
            LOGIN_HTML.contains(REFUSAL_BANNER),
            "login.html's banner changed: update REFUSAL_BANNER"
        );
        let response = cooldown_page(Duration::from_millis(42_500));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
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
}
