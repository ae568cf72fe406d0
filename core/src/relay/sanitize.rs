//! Cleaning a worker's advertised model list before it is used for routing.

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

/// Trims names, drops empty, over-long and repeated ones (keeping first-seen order), caps the count.
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
    fn a_clean_list_passes_unchanged_without_warnings() {
        let out = sanitize_models(&raw(&["x", "y"]), 10, 64);
        assert_eq!(names(&out.models), ["x", "y"]);
        assert!(out.warnings.is_empty());
    }
}
