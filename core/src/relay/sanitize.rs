//! Cleaning what a worker says about itself (its model list, its name) before
//! it is used for routing, logs and the admin API.

use rustc_hash::FxHashSet;

use crate::ids::ModelName;

/// A model list after sanitizing, with what was changed in words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SanitizedModels {
    /// The models routing uses, in first-seen order.
    pub models: Vec<ModelName>,
    /// One line per change made.
    pub warnings: Vec<String>,
}

/// Longest worker name kept, in bytes.
pub const MAX_WORKER_NAME_BYTES: usize = 128;

/// Most models kept from one worker's list (the default of
/// `RelayConfig::max_models_per_worker`); the wire decoders refuse lists longer
/// than four times this (`wire::MAX_LISTED_MODELS`).
pub const MAX_MODELS_PER_WORKER: usize = 256;

/// Longest model name kept, in bytes (the default of `RelayConfig::max_model_name_bytes`).
pub const MAX_MODEL_NAME_BYTES: usize = 256;

/// Trims names, drops empty, over-long, repeated ones (keeping first-seen order)
/// and ones with control characters (which no client can ask for), caps the count.
pub fn sanitize_models(
    raw: &[String],
    max_models: usize,
    max_name_bytes: usize,
) -> SanitizedModels {
    let mut out = SanitizedModels::default();
    let mut seen = FxHashSet::default();
    let mut empty = 0usize;
    for (index, name) in raw.iter().enumerate() {
        let trimmed = name.trim();
        if trimmed.is_empty() {
            empty += 1;
            continue;
        }
        if trimmed.len() > max_name_bytes {
            out.warnings.push(format!(
                "dropped model name of {} bytes (limit {max_name_bytes})",
                trimmed.len()
            ));
            continue;
        }
        if trimmed.chars().any(char::is_control) {
            out.warnings.push(format!(
                "dropped model name with control characters {trimmed:?}"
            ));
            continue;
        }
        if !seen.insert(trimmed) {
            out.warnings
                .push(format!("dropped duplicate model {trimmed:?}"));
            continue;
        }
        if out.models.len() == max_models {
            out.warnings.push(format!(
                "dropped {} models past the limit of {max_models}",
                raw.len() - index
            ));
            break;
        }
        out.models.push(ModelName::new(trimmed));
    }
    if empty > 0 {
        out.warnings
            .push(format!("dropped {empty} empty model names"));
    }
    out
}

/// A worker's name without control characters (so it cannot forge log lines),
/// trimmed and cut to [`MAX_WORKER_NAME_BYTES`]; with a warning when changed.
pub fn sanitize_worker_name(raw: &str) -> (String, Option<String>) {
    let mut name: String = raw.chars().filter(|c| !c.is_control()).collect();
    let had_controls = name.len() != raw.len();
    let mut cut = false;
    if name.trim().len() > MAX_WORKER_NAME_BYTES {
        let end = (0..=MAX_WORKER_NAME_BYTES)
            .rev()
            .find(|i| name.trim().is_char_boundary(*i))
            .unwrap_or(0);
        name = name.trim()[..end].to_owned();
        cut = true;
    }
    let name = name.trim().to_owned();
    let warning = match (had_controls, cut) {
        (false, false) => None,
        (true, false) => Some("control characters dropped from the worker name".to_owned()),
        (false, true) => Some(format!("worker name cut to {MAX_WORKER_NAME_BYTES} bytes")),
        (true, true) => Some(format!(
            "control characters dropped from the worker name, cut to {MAX_WORKER_NAME_BYTES} bytes"
        )),
    };
    (name, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(models: &[ModelName]) -> Vec<&str> {
        models.iter().map(ModelName::as_str).collect()
    }

    fn raw(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn registration_trims_drops_empty_and_dedups_keeping_first_seen_order() {
        let out = sanitize_models(&raw(&[" b ", "a", "", "  ", "b", "c", "a"]), 10, 64);
        assert_eq!(names(&out.models), ["b", "a", "c"]);
        assert_eq!(
            out.warnings,
            [
                "dropped duplicate model \"b\"",
                "dropped duplicate model \"a\"",
                "dropped 2 empty model names"
            ]
        );
    }

    #[test]
    fn registration_caps_the_model_count_and_name_length() {
        let out = sanitize_models(&raw(&["a", "b", "c", "d"]), 2, 64);
        assert_eq!(names(&out.models), ["a", "b"]);
        assert_eq!(out.warnings, ["dropped 2 models past the limit of 2"]);

        let out = sanitize_models(&raw(&["ok", &"x".repeat(65)]), 10, 64);
        assert_eq!(names(&out.models), ["ok"]);
        assert_eq!(out.warnings, ["dropped model name of 65 bytes (limit 64)"]);
    }

    #[test]
    fn model_names_with_control_characters_are_dropped() {
        let out = sanitize_models(&raw(&["ok", "bad\nname", "tab\there"]), 10, 64);
        assert_eq!(names(&out.models), ["ok"]);
        assert_eq!(
            out.warnings,
            [
                "dropped model name with control characters \"bad\\nname\"",
                "dropped model name with control characters \"tab\\there\""
            ]
        );
    }

    #[test]
    fn worker_names_lose_control_characters_and_are_capped() {
        assert_eq!(sanitize_worker_name(" gpu-0 "), ("gpu-0".to_owned(), None));
        let (name, warning) = sanitize_worker_name("a\nINFO forged\u{1b}[31m");
        assert_eq!(name, "aINFO forged[31m");
        assert!(warning.is_some_and(|w| w.contains("control characters")));
        let (name, warning) = sanitize_worker_name(&"é".repeat(100));
        assert_eq!(name, "é".repeat(64));
        assert!(warning.is_some_and(|w| w.contains("cut to 128 bytes")));
    }

    #[test]
    fn a_clean_list_passes_unchanged_without_warnings() {
        let out = sanitize_models(&raw(&["x", "y"]), 10, 64);
        assert_eq!(names(&out.models), ["x", "y"]);
        assert!(out.warnings.is_empty());
    }
}
