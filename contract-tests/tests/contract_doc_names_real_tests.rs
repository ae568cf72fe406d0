//! `docs/behavior-contract.md` names the tests that pin each clause; every name must exist.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("contract-tests sits in the workspace root")
        .to_path_buf()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source tree") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n != "target" && n != ".git")
            {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Test names in backticks: `module::test_name`, or a bare snake_case name long
/// enough to be a test's sentence (error codes and field names are shorter).
fn referenced_tests(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.contains(' '))
        .filter_map(|span| {
            let name = span.rsplit("::").next().unwrap_or(span);
            let snake = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit());
            let long = name.matches('_').count() >= 4;
            (snake && (span.contains("::") || long) && name != "*").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn every_test_the_contract_names_exists() {
    let root = workspace_root();
    let doc = std::fs::read_to_string(root.join("docs/behavior-contract.md"))
        .expect("the contract exists");
    let mut files = Vec::new();
    rust_sources(&root, &mut files);
    let sources: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable source"))
        .collect();
    let names = referenced_tests(&doc);
    assert!(
        names.len() > 50,
        "the contract names only {} tests",
        names.len()
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            !sources.contains(&format!("fn {name}(")) && !sources.contains(&format!("fn {name}<"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the contract names tests that do not exist: {missing:?}"
    );
}
