//! The two text formats `/metrics` speaks: Prometheus text 0.0.4, what the
//! docs promise and what `curl`, older scrapers and most tools read, and
//! OpenMetrics 1.0.0, for a scraper whose `Accept` header asks for it first
//! (Prometheus does). Both carry the same samples under the same names.
//!
//! The registry encodes OpenMetrics only; the Prometheus text is derived from
//! it: a counter's `# HELP` and `# TYPE` lines name its `_total` samples (as
//! 0.0.4 requires and the runbook's table lists them), and the `# UNIT` and
//! `# EOF` lines OpenMetrics adds are left out.

use std::collections::HashSet;

use axum::http::{HeaderMap, header};

/// Content type of Prometheus text format 0.0.4.
pub(super) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of OpenMetrics text 1.0.0.
pub(super) const OPENMETRICS_TEXT: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which format a scrape is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Prometheus text 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0.0: when `Accept` ranks it at least as high as `text/plain`.
    OpenMetrics,
}

impl Format {
    /// The format `headers` ask for: OpenMetrics only when `Accept` names
    /// `application/openmetrics-text` with a quality above zero and not below
    /// that of `text/plain`.
    pub(super) fn negotiate(headers: &HeaderMap) -> Self {
        let (mut openmetrics, mut plain) = (0.0_f32, 0.0_f32);
        let ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for range in ranges {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, q)| q.trim().parse().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" => plain = plain.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }
}

/// The OpenMetrics exposition `openmetrics` as Prometheus text 0.0.4.
pub(super) fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|kind| {
            let (name, rest) = line.strip_prefix(kind)?.split_once(' ')?;
            counters.contains(name).then_some((kind, name, rest))
        });
        match descriptor {
            Some((kind, name, rest)) => {
                text.push_str(kind);
                text.push_str(name);
                text.push_str("_total ");
                text.push_str(rest);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accepting(values: &[&'static str]) -> Format {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT, HeaderValue::from_static(value));
        }
        Format::negotiate(&headers)
    }

    #[test]
    fn openmetrics_goes_only_to_scrapers_that_rank_it_first() {
        assert_eq!(accepting(&[]), Format::Prometheus);
        assert_eq!(accepting(&["*/*"]), Format::Prometheus);
        assert_eq!(accepting(&["text/plain;version=0.0.4"]), Format::Prometheus);
        // Prometheus 2 and 3 by default.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(accepting(&[prometheus]), Format::OpenMetrics);
        assert_eq!(
            accepting(&["Application/OpenMetrics-Text; Q=0.9"]),
            Format::OpenMetrics
        );
        assert_eq!(
            accepting(&["text/plain", "application/openmetrics-text;q=0.5"]),
            Format::Prometheus
        );
        assert_eq!(
            accepting(&["application/openmetrics-text;q=0"]),
            Format::Prometheus
        );
        assert_eq!(
            accepting(&["application/openmetrics-text;q=nonsense"]),
            Format::Prometheus
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples_and_drops_eof() {
        let openmetrics = "\
# HELP app_requests Requests.
# TYPE app_requests counter
app_requests_total{route=\"/v1\"} 3
# HELP app_depth Depth.
# TYPE app_depth gauge
# UNIT app_depth requests
app_depth 2
# HELP app_wait_seconds Wait.
# TYPE app_wait_seconds histogram
app_wait_seconds_sum 0.5
app_wait_seconds_count 1
app_wait_seconds_bucket{le=\"+Inf\"} 1
# EOF
";
        let expected = "\
# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total{route=\"/v1\"} 3
# HELP app_depth Depth.
# TYPE app_depth gauge
app_depth 2
# HELP app_wait_seconds Wait.
# TYPE app_wait_seconds histogram
app_wait_seconds_sum 0.5
app_wait_seconds_count 1
app_wait_seconds_bucket{le=\"+Inf\"} 1
";
        assert_eq!(prometheus_text(openmetrics), expected);
    }
}
