//! The operator's HTML pages: the dashboard and `/setup`, and what every page shares.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use modelrelay_core::DEFAULT_PROVIDER;

use super::session::{Refusal, authorize, peer_of};

const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
const SETUP_HTML: &str = include_str!("../../assets/setup.html");

/// What the pages may load: only themselves.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// An HTML page with the headers every page gets.
pub(super) fn page(status: StatusCode, html: String) -> Response {
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

/// A 303 to `to`.
pub(super) fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The page saying the dashboard is off.
pub(super) fn disabled_page() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "<!doctype html><meta charset=utf-8><title>ModelRelay</title><p>The dashboard is off: start the server with <code>--admin-token</code> (<code>MODELRELAY_ADMIN_TOKEN</code>).</p>".into(),
    )
}

/// Proof that the operator may see a page; if not, the rejection is the answer
/// instead (the way to log in, or the page saying the dashboard is off).
pub(super) struct PageViewer;

impl FromRequestParts<Arc<AppState>> for PageViewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer_of(parts).map_err(IntoResponse::into_response)?;
        match authorize(app, peer, &Method::GET, &parts.headers) {
            Ok(_) => Ok(Self),
            Err(Refusal::Disabled) => Err(disabled_page()),
            Err(Refusal::Unauthorized) => Err(redirect("/dashboard/login")),
            Err(other) => Err(other.into_response()),
        }
    }
}

/// `GET /dashboard`.
pub(crate) async fn dashboard(_viewer: PageViewer) -> Response {
    page(StatusCode::OK, DASHBOARD_HTML.to_owned())
}

/// Whether the client reached us over HTTPS (as far as we can tell).
pub(super) fn is_https(app: &AppState, headers: &HeaderMap) -> bool {
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

/// This server's base URL as clients see it: `--public-url`, else the address
/// the browser used (behind a proxy whose forwarded headers are trusted,
/// `--trust-forwarded-for`, the one the browser gave the proxy).
fn public_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &app.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let plain_host = |h: &&str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    };
    let forwarded_host = app
        .config
        .trust_forwarded_for
        .then(|| headers.get("x-forwarded-host"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(plain_host);
    let host = forwarded_host
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .filter(plain_host)
        })
        .unwrap_or("127.0.0.1:8080");
    let scheme = if is_https(app, headers) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// What /setup warns about the URL it shows: one only this machine reaches,
/// or a plain-HTTP one (the worker secret crosses it).
fn url_warning(url: &str) -> String {
    let parsed = url::Url::parse(url).ok();
    let loopback = match parsed.as_ref().and_then(|u| u.host()) {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return "<p class=\"warn\"><strong>This address is this machine's own (loopback):</strong> \
                a worker on another machine cannot reach it. Open this page through the address \
                workers will use, or start the relay with <code>--public-url</code> \
                (for example <code>--public-url https://relay.your-domain</code>).</p>"
            .to_owned();
    }
    if parsed.is_some_and(|u| u.scheme() == "http") {
        return "<p class=\"warn\">This address is plain HTTP: the worker secret and every \
                prompt cross it unencrypted. On a network you do not trust, put the relay behind \
                TLS (the nginx example in <code>extras/nginx/</code>), start it with \
                <code>--public-url https://…</code>, and use that URL here.</p>"
            .to_owned();
    }
    String::new()
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
    _viewer: PageViewer,
    headers: HeaderMap,
) -> Response {
    let url = public_url(&app, &headers);
    let quic_url = quic_url(&app, &url);
    let quic_hint = quic_url.as_deref().map_or_else(String::new, |quic_url| {
        format!(
            "<p class=\"muted\">QUIC links go to <code>{}</code>, checked against the relay's \
             certificate fingerprint (<code>--server-cert-sha256</code>, as the relay printed at \
             start-up); UDP to that port must be open.</p>",
            escape_html(quic_url)
        )
    });
    let fingerprint = app.config.quic_fingerprint.as_deref().unwrap_or_default();
    // The provider in the commands (bash, PowerShell) and the env file; none for the default.
    let provider = provider_value(app.config.provider.as_str());
    let line = |end: &str| {
        provider
            .as_ref()
            .map_or_else(String::new, |p| format!("  --provider '{p}' {end}\n"))
    };
    let (provider_unix, provider_windows) = (line("\\"), line("`"));
    let provider_env = provider
        .as_ref()
        .map_or_else(String::new, |p| format!(", PROVIDER_NAME='{p}'"));
    let html = SETUP_HTML
        .replace("{{GET_WORKER}}", &get_worker(&app, &url))
        .replace("{{PROVIDER_UNIX}}", &provider_unix)
        .replace("{{PROVIDER_WINDOWS}}", &provider_windows)
        .replace("{{PROVIDER_ENV}}", &provider_env)
        .replace("{{URL_WARNING}}", &url_warning(&url))
        .replace("{{PUBLIC_URL}}", &escape_html(&url))
        .replace("{{QUIC_HINT}}", &quic_hint)
        .replace(
            "{{QUIC_URL}}",
            &escape_html(quic_url.as_deref().unwrap_or_default()),
        )
        .replace("{{QUIC_FINGERPRINT}}", &escape_html(fingerprint));
    page(StatusCode::OK, html)
}

/// The `quic://host:port` workers dial, if the relay takes QUIC links: the
/// host of `url` (an IPv6 address keeps its brackets) and the QUIC port.
fn quic_url(app: &AppState, url: &str) -> Option<String> {
    let quic = app.config.quic.as_ref()?;
    let parsed = url::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str())
        .unwrap_or("127.0.0.1");
    Some(format!("quic://{host}:{}", quic.listen.port()))
}

/// The provider as the commands name it (HTML-escaped, to go in single
/// quotes), or `None` for the default provider, which needs no flag. Only a
/// plain name is put in a command; another shows a placeholder.
fn provider_value(provider: &str) -> Option<String> {
    if provider == DEFAULT_PROVIDER {
        return None;
    }
    let plain = !provider.is_empty()
        && provider
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    Some(escape_html(if plain { provider } else { "THE-PROVIDER" }))
}

/// How to get the worker: this relay's downloads, each with a command that
/// checks its checksum, or how to build it from a checkout of the source.
fn get_worker(app: &AppState, url: &str) -> String {
    let files = app
        .config
        .downloads
        .as_ref()
        .map(|downloads| downloads.files())
        .unwrap_or_default();
    if files.is_empty() {
        return "<p>This relay serves no worker binaries (its operator can give it a \
                <code>--downloads-dir</code>). Build the worker in a checkout of this project's \
                source, with Rust (<code>cargo</code>; see rustup.rs):</p>\n\
                <div class=\"cmd\"><pre><code>cargo build --release --locked --bin modelrelay-worker</code></pre></div>\n\
                <p>The program is <code>target/release/modelrelay-worker</code> \
                (<code>modelrelay-worker.exe</code> on Windows); \
                <code>cargo install --locked --path worker</code> puts it on your <code>PATH</code>.</p>"
            .to_owned();
    }
    let url = escape_html(url);
    let mut html = String::from(
        "<p>This relay serves these worker binaries. Each command downloads one and checks \
         it against the checksum the relay lists.</p>\n<table><thead><tr>\
         <th scope=\"col\">File</th><th scope=\"col\">Size</th><th scope=\"col\">SHA-256</th>\
         </tr></thead><tbody>",
    );
    for file in files {
        let name = escape_html(&file.name);
        html.push_str(&format!(
            "<tr><td><code>{name}</code></td><td>{:.1} MB</td><td><code>{}</code></td></tr>",
            file.size as f64 / 1_000_000.0,
            file.sha256
        ));
    }
    html.push_str("</tbody></table>\n");
    for file in files {
        let name = escape_html(&file.name);
        let command = if file.name.ends_with(".exe") {
            format!(
                "Invoke-WebRequest -OutFile {name} '{url}/downloads/{name}'\n\
                 if ((Get-FileHash {name} -Algorithm SHA256).Hash -ne '{sha}') {{ Remove-Item {name}; throw 'checksum mismatch' }}",
                sha = file.sha256
            )
        } else {
            format!(
                "curl -fsSLO '{url}/downloads/{name}' &amp;&amp; \\\n\
                 curl -fsSL '{url}/downloads/{name}.sha256' | sha256sum -c - &amp;&amp; \\\n\
                 chmod +x {name}"
            )
        };
        html.push_str(&format!(
            "<p><code>{name}</code>:</p><div class=\"cmd\"><pre><code>{command}</code></pre></div>\n"
        ));
    }
    html.push_str(
        "<p class=\"muted\">On macOS, use <code>shasum -a 256 -c -</code> in place of \
         <code>sha256sum -c -</code>.</p>",
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
