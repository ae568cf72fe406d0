//! Checks on what the settings window is given, before it is saved: URL shapes,
//! a backend that answers `GET /v1/models`, a relay that answers `GET /health`.

use std::time::Duration;

use url::Url;

use crate::settings_file::Settings;

/// How long each check may wait for an answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What is wrong with each field (empty: nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Problems {
    /// About the backend URL.
    pub(crate) backend: Option<String>,
    /// About the relay URL.
    pub(crate) relay: Option<String>,
    /// About the secret.
    pub(crate) secret: Option<String>,
    /// About the model list or poll interval.
    pub(crate) models: Option<String>,
}

impl Problems {
    /// Whether every field passed.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The relay's HTTP base URL for a relay URL of any accepted scheme (ws→http,
/// wss→https; for quic://, https on the same host and port, a guess).
pub(crate) fn relay_http_base(relay_url: &str) -> Result<Url, String> {
    let mut url = Url::parse(relay_url.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if url.host_str().is_none() {
        return Err("the URL has no host".into());
    }
    let scheme = match url.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" | "quic" => "https",
        other => {
            return Err(format!(
                "scheme {other}:// is not one of http, https, ws, wss, quic"
            ));
        }
    };
    // set_scheme refuses to turn a special scheme into a non-special one and back: rebuild.
    let rest = &url.as_str()[url.scheme().len()..];
    url = Url::parse(&format!("{scheme}{rest}")).map_err(|e| e.to_string())?;
    url.set_query(None);
    Ok(url)
}

/// The backend's base URL, if it is an http(s) URL with a host.
fn backend_base(backend_url: &str) -> Result<Url, String> {
    let url = Url::parse(backend_url.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {}:// is not http or https", url.scheme()));
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

/// `base` joined with `path`, keeping any path prefix the base has.
fn join(base: &Url, path: &str) -> String {
    format!("{}/{path}", base.as_str().trim_end_matches('/'))
}

/// Checks the shapes only: what can be told without the network.
pub(crate) fn shapes(settings: &Settings, secret: &str) -> Problems {
    let mut problems = Problems {
        backend: backend_base(&settings.backend_url).err(),
        relay: relay_http_base(&settings.relay_url).err(),
        ..Problems::default()
    };
    if problems.relay.is_none()
        && let Err(error) =
            modelrelay_worker::link::RelayEndpoint::parse(settings.relay_url.trim(), "openai")
    {
        problems.relay = Some(error.to_string());
    }
    if secret.trim().is_empty() {
        problems.secret = Some("the relay's worker secret is needed".into());
    }
    if settings.model_list().is_some_and(|list| list.is_empty()) {
        problems.models = Some("give * or a comma list of model names".into());
    }
    problems
}

/// Checks the shapes, then that the backend and the relay answer.
pub(crate) fn all(settings: &Settings, secret: &str) -> Problems {
    let mut problems = shapes(settings, secret);
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(CHECK_TIMEOUT))
        .build()
        .new_agent();
    if problems.backend.is_none()
        && let Ok(base) = backend_base(&settings.backend_url)
    {
        problems.backend = answers(&agent, &join(&base, "v1/models"), "the backend").err();
    }
    if problems.relay.is_none()
        && let Ok(base) = relay_http_base(&settings.relay_url)
    {
        problems.relay = answers(&agent, &join(&base, "health"), "the relay").err();
    }
    problems
}

/// Whether `url` answers a GET with a success status.
fn answers(agent: &ureq::Agent, url: &str, what: &str) -> Result<(), String> {
    match agent.get(url).call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::StatusCode(code)) => Err(format!("{what} answered {url} with {code}")),
        Err(error) => Err(format!("{what} does not answer {url}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(relay: &str, backend: &str) -> Settings {
        Settings {
            relay_url: relay.into(),
            backend_url: backend.into(),
            ..Settings::initial()
        }
    }

    #[test]
    fn url_shapes_are_checked_per_field() {
        let good = shapes(&with("wss://relay.example", "http://127.0.0.1:8000"), "s");
        assert!(good.is_empty(), "{good:?}");
        let bad = shapes(&with("ftp://relay.example", "ws://127.0.0.1:8000"), "");
        assert!(bad.relay.is_some() && bad.backend.is_some() && bad.secret.is_some());
        let quic = shapes(&with("quic://relay.example", "http://127.0.0.1:8000"), "s");
        assert!(quic.relay.is_some(), "quic:// needs a port");
    }

    #[test]
    fn the_relay_http_base_follows_the_link_scheme() {
        let base = |url: &str| relay_http_base(url).unwrap().to_string();
        assert_eq!(base("ws://relay:8080"), "http://relay:8080/");
        assert_eq!(base("wss://relay/prefix"), "https://relay/prefix");
        assert_eq!(base("quic://relay:4433"), "https://relay:4433/");
    }

    #[test]
    fn a_backend_that_does_not_answer_is_refused() {
        // Port 1 on loopback: nothing listens there.
        let problems = all(&with("http://127.0.0.1:1", "http://127.0.0.1:1"), "s");
        assert!(problems.backend.is_some() && problems.relay.is_some());
    }
}
