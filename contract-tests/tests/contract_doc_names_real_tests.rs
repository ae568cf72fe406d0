//! `docs/behavior-contract.md` names the tests that pin each clause. This checks the
//! whole promise: every clause names at least one test; every named test is a
//! `#[test]` or `#[tokio::test]` function in the file the contract says; every
//! path the contract writes out exists.
//!
//! How the contract is read:
//!
//! - A *clause* is a numbered list item (`12. …`, at the start of a line) under a
//!   `##` heading, with the lines that continue it (indented, or running on
//!   without a blank line). Clause numbers run 1, 2, 3… over the whole page, as
//!   the text refers to clauses by number.
//! - Text before the first `##` (the introduction), section introductions and the
//!   bulleted "Invariants checked…" lists are not clauses: the invariants are
//!   assertions inside the property and fault-schedule tests, which the text
//!   names as a whole. The test names written there are still checked.
//! - A *test reference* is a backticked `prefix::test_name`, or `prefix::*` for
//!   "that file has at least one test". The section titled [`TABLE_HEADING`]
//!   holds a table from each prefix to the file that holds its tests; it is the
//!   only place that says where a test lives, so a file that moves changes one
//!   row there and nothing here. (Paths the prose writes out, such as a
//!   section's `e2e/tests/relay_e2e.rs`, are checked to exist too, so after a
//!   move this test also points at the sentences that still name the old place.)
//! - A backticked bare snake_case name with four or more underscores reads as a
//!   test named without its prefix, and is refused.
//!
//! Rust sources are read with a small tokenizer (comments, strings and char
//! literals skipped) rather than `syn`: finding `#[test] fn name` needs only
//! tokens, and a token scan also sees tests written inside macros such as
//! `proptest!`, which `syn` would leave as an opaque token stream.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The contract, relative to the workspace root.
const CONTRACT: &str = "docs/behavior-contract.md";

/// The `##` section of the contract whose table maps prefixes to files.
const TABLE_HEADING: &str = "Where the named tests live";

/// Test names in the backticked snake_case of the old bare references have at
/// least this many underscores (error codes and field names have fewer).
const BARE_NAME_UNDERSCORES: usize = 4;

// ---------------------------------------------------------------------------
// The contract

/// Where in the contract something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// Before the first `##` heading.
    Intro,
    /// A `##` section's text outside its clauses.
    Section(String),
    /// A numbered clause.
    Clause { section: String, number: u32 },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Intro => write!(f, "the introduction"),
            Place::Section(section) => write!(f, "section \"{section}\""),
            Place::Clause { section, number } => write!(f, "clause {number} (\"{section}\")"),
        }
    }
}

/// A backticked `prefix::name` (or `prefix::*`).
#[derive(Debug)]
struct Reference {
    prefix: String,
    name: String,
    place: Place,
}

impl Reference {
    fn written(&self) -> String {
        format!("{}::{}", self.prefix, self.name)
    }
}

/// One row of the table: the prefix and the file (relative to the workspace root).
#[derive(Debug)]
struct Row {
    prefix: String,
    file: String,
}

/// What [`parse_contract`] found.
#[derive(Debug, Default)]
struct Contract {
    /// Every clause, in order, with the number of tests it names.
    clauses: Vec<(Place, usize)>,
    rows: Vec<Row>,
    references: Vec<Reference>,
    /// Backticked names that look like tests but carry no prefix.
    bare_names: Vec<(String, Place)>,
    /// Backticked workspace paths (`core/src/relay`, `sim/tests/quic.rs`).
    paths: Vec<(String, Place)>,
    /// The page itself is malformed: no table, a bad row, unbalanced backticks,
    /// clause numbers out of order.
    shape: Vec<String>,
}

/// A run of text whose backticks pair up: a clause, or a paragraph outside one.
struct Block {
    place: Place,
    text: String,
}

impl Block {
    fn is_clause(&self) -> bool {
        matches!(self.place, Place::Clause { .. })
    }
}

fn parse_contract(doc: &str) -> Contract {
    let mut contract = Contract::default();
    let mut blocks: Vec<Block> = Vec::new();
    let mut section: Option<String> = None;
    let mut open: Option<Block> = None;
    let mut after_blank = true;
    let mut in_fence = false;
    let mut table_lines: Vec<&str> = Vec::new();

    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let blank = line.trim().is_empty();
        if let Some(heading) = line.strip_prefix("##") {
            blocks.extend(open.take());
            section = Some(heading.trim_start_matches('#').trim().to_owned());
        } else if line.starts_with('#') {
            // The page title.
            blocks.extend(open.take());
        } else if section.as_deref() == Some(TABLE_HEADING) && line.trim_start().starts_with('|') {
            blocks.extend(open.take());
            table_lines.push(line);
        } else if let (Some(number), Some(section)) = (clause_number(line), &section) {
            blocks.extend(open.take());
            open = Some(Block {
                place: Place::Clause {
                    section: section.clone(),
                    number,
                },
                text: line.to_owned(),
            });
        } else if blank {
            // A clause goes on past a blank line while its lines stay indented;
            // a paragraph outside a clause ends here.
            if !open.as_ref().is_some_and(Block::is_clause) {
                blocks.extend(open.take());
            }
        } else {
            let continues = match &open {
                Some(block) if block.is_clause() => {
                    !after_blank || line.starts_with(char::is_whitespace)
                }
                Some(_) => true,
                None => false,
            };
            if continues {
                let block = open.as_mut().expect("an open block continues");
                block.text.push('\n');
                block.text.push_str(line);
            } else {
                blocks.extend(open.take());
                let place = match &section {
                    None => Place::Intro,
                    Some(section) => Place::Section(section.clone()),
                };
                open = Some(Block {
                    place,
                    text: line.to_owned(),
                });
            }
        }
        after_blank = blank;
    }
    blocks.extend(open.take());

    parse_table(&table_lines, &mut contract);
    for block in blocks {
        read_block(block, &mut contract);
    }

    if contract.clauses.is_empty() {
        contract
            .shape
            .push("no numbered clauses found under any `##` heading".to_owned());
    }
    let mut expected = 1;
    for (place, _) in &contract.clauses {
        if let Place::Clause { number, .. } = place {
            if *number != expected {
                contract.shape.push(format!(
                    "clause numbers must run 1, 2, 3… over the page: expected {expected}, found {place}"
                ));
            }
            expected = number + 1;
        }
    }
    contract
}

/// `12. text` at the start of a line gives 12.
fn clause_number(line: &str) -> Option<u32> {
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || !line[digits..].starts_with(". ") {
        return None;
    }
    line[..digits].parse().ok()
}

fn parse_table(lines: &[&str], contract: &mut Contract) {
    if lines.is_empty() {
        contract.shape.push(format!(
            "no table under a `## {TABLE_HEADING}` heading: it maps each test prefix to its file"
        ));
        return;
    }
    let mut past_separator = false;
    for line in lines {
        let cells: Vec<&str> = line
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let separator = cells
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|c| matches!(c, '-' | ':')));
        if separator {
            past_separator = true;
            continue;
        }
        if !past_separator {
            // The header row.
            continue;
        }
        let code = |cell: &str| {
            cell.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| !c.contains('`'))
                .map(str::to_owned)
        };
        match cells.as_slice() {
            [prefix, file] => match (code(prefix), code(file)) {
                (Some(prefix), Some(file)) if is_module_path(&prefix) => {
                    contract.rows.push(Row { prefix, file });
                }
                _ => contract.shape.push(format!(
                    "table row `{line}` must read | `module::path` | `dir/file.rs` |"
                )),
            },
            _ => contract.shape.push(format!(
                "table row `{line}` must have two cells, the prefix and the file"
            )),
        }
    }
    let mut seen = BTreeSet::new();
    for row in &contract.rows {
        if !seen.insert(row.prefix.as_str()) {
            contract
                .shape
                .push(format!("the table has two rows for `{}`", row.prefix));
        }
    }
}

/// Reads the backticked spans of one block into references, bare names and paths.
fn read_block(block: Block, contract: &mut Contract) {
    let pieces: Vec<&str> = block.text.split('`').collect();
    if pieces.len().is_multiple_of(2) {
        contract
            .shape
            .push(format!("unbalanced backticks in {}", block.place));
    }
    let mut tests = 0;
    for span in pieces.iter().skip(1).step_by(2).map(|s| s.trim()) {
        if span.contains(char::is_whitespace) {
            continue;
        }
        if let Some((prefix, name)) = span.rsplit_once("::") {
            if is_module_path(prefix) && (name == "*" || is_snake(name)) {
                tests += 1;
                contract.references.push(Reference {
                    prefix: prefix.to_owned(),
                    name: name.to_owned(),
                    place: block.place.clone(),
                });
            }
        } else if is_snake(span) && span.matches('_').count() >= BARE_NAME_UNDERSCORES {
            contract
                .bare_names
                .push((span.to_owned(), block.place.clone()));
        } else if is_workspace_path(span) {
            contract.paths.push((span.to_owned(), block.place.clone()));
        }
    }
    if block.is_clause() {
        contract.clauses.push((block.place, tests));
    }
}

fn is_snake(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_module_path(s: &str) -> bool {
    s.split("::").all(is_snake)
}

/// `core/src/relay`, `e2e/tests/`: a relative path, not a route (`/v1/models`)
/// or a URL (`quic://…`).
fn is_workspace_path(s: &str) -> bool {
    s.contains('/')
        && !s.starts_with('/')
        && !s.contains("//")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

// ---------------------------------------------------------------------------
// Rust sources

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    /// A string, char or number literal; its content never matters here.
    Literal,
}

/// Splits Rust source into identifiers, punctuation and opaque literals, dropping
/// whitespace and comments (doc comments included).
fn tokens(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let ident_start = |c: char| c.is_alphabetic() || c == '_';
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                } else if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&chars, i) {
            out.push(Token::Literal);
            i = end;
        } else if c == '"' || (matches!(c, 'b' | 'c') && at(i + 1) == '"') {
            i += if c == '"' { 1 } else { 2 };
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push(Token::Literal);
            i += 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let quote = if c == '\'' { i } else { i + 1 };
            if at(quote + 1) == '\\' {
                // An escaped char: '\n', '\'', '\u{1F600}'.
                i = quote + 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                out.push(Token::Literal);
                i += 1;
            } else if at(quote + 2) == '\'' {
                out.push(Token::Literal);
                i = quote + 3;
            } else {
                // A lifetime or label: the name that follows reads as an identifier.
                out.push(Token::Punct('\''));
                i = quote + 1;
            }
        } else if c == 'r' && at(i + 1) == '#' && ident_start(at(i + 2)) {
            // A raw identifier, `r#match`.
            let start = i + 2;
            i = start;
            while ident_char(at(i)) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if ident_start(c) {
            let start = i;
            while ident_char(at(i)) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while ident_char(at(i)) || (at(i) == '.' && at(i + 1).is_ascii_digit()) {
                i += 1;
            }
            out.push(Token::Literal);
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// If a raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`) starts at `i`, the index
/// just past it.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(chars.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && chars[j + 1..].iter().take_while(|&&c| c == '#').count() >= hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// The functions a source file defines, split into tests and the rest.
#[derive(Debug, Default)]
struct Functions {
    tests: BTreeSet<String>,
    others: BTreeSet<String>,
}

/// Finds every `fn name` and whether a `#[test]` or `#[tokio::test(…)]` attribute
/// sits before it, with other attributes, doc comments and qualifiers (`pub`,
/// `async`, `const`, `unsafe`, `extern "C"`) allowed in between. Tests written
/// inside macros (`proptest! { #[test] fn … }`) count, as they are tests.
fn functions(src: &str) -> Functions {
    let toks = tokens(src);
    let mut found = Functions::default();
    let mut test_attribute = false;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Token::Punct('#') => {
                let inner = toks.get(i + 1) == Some(&Token::Punct('!'));
                let open = i + 1 + usize::from(inner);
                if toks.get(open) == Some(&Token::Punct('[')) {
                    let close = closing(&toks, open);
                    if !inner && is_test_attribute(&toks[open + 1..close]) {
                        test_attribute = true;
                    }
                    i = close + 1;
                    continue;
                }
                test_attribute = false;
            }
            Token::Ident(word) if word == "fn" => {
                if let Some(Token::Ident(name)) = toks.get(i + 1) {
                    let set = if test_attribute {
                        &mut found.tests
                    } else {
                        &mut found.others
                    };
                    set.insert(name.clone());
                }
                test_attribute = false;
            }
            Token::Ident(word) if word == "pub" => {
                if toks.get(i + 1) == Some(&Token::Punct('(')) {
                    i = closing(&toks, i + 1) + 1;
                    continue;
                }
            }
            Token::Ident(word) if word == "extern" => {
                if toks.get(i + 1) == Some(&Token::Literal) {
                    i += 1;
                }
            }
            Token::Ident(word) if matches!(word.as_str(), "async" | "const" | "unsafe") => {}
            _ => test_attribute = false,
        }
        i += 1;
    }
    found
}

/// The index of the bracket that closes the one at `open` (or the last token).
fn closing(toks: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, tok) in toks.iter().enumerate().skip(open) {
        match tok {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// `test`, `tokio::test`, `tokio::test(start_paused = true)`.
fn is_test_attribute(inside: &[Token]) -> bool {
    let mut path = Vec::new();
    let mut rest = inside;
    loop {
        if let [Token::Punct(':'), Token::Punct(':'), tail @ ..] = rest {
            rest = tail;
        }
        match rest {
            [Token::Ident(segment), tail @ ..] => {
                path.push(segment.as_str());
                rest = tail;
            }
            _ => break,
        }
        if !matches!(rest, [Token::Punct(':'), Token::Punct(':'), ..]) {
            break;
        }
    }
    let arguments_or_nothing = matches!(rest, [] | [Token::Punct('('), ..]);
    arguments_or_nothing && matches!(path.as_slice(), ["test"] | ["tokio", "test"])
}

// ---------------------------------------------------------------------------
// The check

/// What the check can see of the workspace: files by path from its root.
trait Workspace {
    fn read(&self, path: &str) -> Option<String>;
    fn exists(&self, path: &str) -> bool;
}

struct Disk(PathBuf);

impl Workspace for Disk {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(path)).ok()
    }

    fn exists(&self, path: &str) -> bool {
        self.0.join(path).exists()
    }
}

/// Everything wrong, by kind; each entry is one line of the failure message.
#[derive(Debug, Default)]
struct Problems {
    shape: Vec<String>,
    clauses_without_tests: Vec<String>,
    unqualified_names: Vec<String>,
    unknown_prefixes: Vec<String>,
    missing_files: Vec<String>,
    not_tests: Vec<String>,
    unused_rows: Vec<String>,
    wrong_paths: Vec<String>,
}

impl Problems {
    fn kinds(&self) -> [(&'static str, &Vec<String>); 8] {
        [
            ("the page is malformed", &self.shape),
            ("clauses that name no test", &self.clauses_without_tests),
            (
                "test names without a prefix (write `prefix::name`, with a row for the prefix in the table)",
                &self.unqualified_names,
            ),
            (
                "references whose prefix has no row in the table",
                &self.unknown_prefixes,
            ),
            ("table rows whose file does not exist", &self.missing_files),
            (
                "names that are not a #[test] or #[tokio::test] fn in the file the table gives",
                &self.not_tests,
            ),
            ("table rows no reference uses", &self.unused_rows),
            ("paths that do not exist", &self.wrong_paths),
        ]
    }

    fn is_empty(&self) -> bool {
        self.kinds().iter().all(|(_, list)| list.is_empty())
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{CONTRACT} does not hold together:")?;
        for (kind, list) in self.kinds() {
            if !list.is_empty() {
                writeln!(f, "\n{kind}:")?;
                for line in list {
                    writeln!(f, "  - {line}")?;
                }
            }
        }
        Ok(())
    }
}

fn check(contract: &Contract, workspace: &dyn Workspace) -> Problems {
    let mut problems = Problems {
        shape: contract.shape.clone(),
        ..Problems::default()
    };
    for (place, tests) in &contract.clauses {
        if *tests == 0 {
            problems.clauses_without_tests.push(place.to_string());
        }
    }
    for (name, place) in &contract.bare_names {
        problems
            .unqualified_names
            .push(format!("`{name}` in {place}"));
    }

    let mut files: BTreeMap<&str, Option<Functions>> = BTreeMap::new();
    for row in &contract.rows {
        let functions = workspace.read(&row.file).map(|src| functions(&src));
        if functions.is_none() {
            problems
                .missing_files
                .push(format!("`{}` → `{}`", row.prefix, row.file));
        }
        files.insert(row.file.as_str(), functions);
    }
    let rows: BTreeMap<&str, &str> = contract
        .rows
        .iter()
        .map(|row| (row.prefix.as_str(), row.file.as_str()))
        .collect();

    let mut used = BTreeSet::new();
    for reference in &contract.references {
        let Some(&file) = rows.get(reference.prefix.as_str()) else {
            problems.unknown_prefixes.push(format!(
                "`{}` in {}",
                reference.written(),
                reference.place
            ));
            continue;
        };
        used.insert(reference.prefix.as_str());
        let Some(Some(functions)) = files.get(file) else {
            // Its missing file is reported once, with its row.
            continue;
        };
        let why = if reference.name == "*" {
            functions
                .tests
                .is_empty()
                .then(|| "has no tests".to_owned())
        } else if functions.tests.contains(&reference.name) {
            None
        } else if functions.others.contains(&reference.name) {
            Some("is a fn there but not a test".to_owned())
        } else {
            Some("is not a fn there".to_owned())
        };
        if let Some(why) = why {
            problems.not_tests.push(format!(
                "`{}` in {}: `{file}` {why}",
                reference.written(),
                reference.place
            ));
        }
    }
    for row in &contract.rows {
        if !used.contains(row.prefix.as_str()) {
            problems
                .unused_rows
                .push(format!("`{}` → `{}`", row.prefix, row.file));
        }
    }
    for (path, place) in &contract.paths {
        if !workspace.exists(path) {
            problems.wrong_paths.push(format!("`{path}` in {place}"));
        }
    }
    problems
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("contract-tests sits in the workspace root")
        .to_path_buf()
}

#[test]
fn every_clause_names_tests_that_exist_where_the_contract_says() {
    let workspace = Disk(workspace_root());
    let doc = workspace.read(CONTRACT).expect("the contract exists");
    let problems = check(&parse_contract(&doc), &workspace);
    assert!(problems.is_empty(), "{problems}");
}

// ---------------------------------------------------------------------------
// The checker's own tests: each shows a way the contract can go wrong and be caught.

/// A workspace of in-memory files.
struct Files(BTreeMap<&'static str, &'static str>);

impl Workspace for Files {
    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path).map(|s| (*s).to_owned())
    }

    fn exists(&self, path: &str) -> bool {
        self.0.keys().any(|file| {
            *file == path || file.starts_with(&format!("{}/", path.trim_end_matches('/')))
        })
    }
}

const TESTS_RS: &str = r##"
//! #[test] fn in_a_doc_comment() {}
use std::time::Duration;

#[test]
fn a_plain_test() {}

#[tokio::test(start_paused = true)]
/// Documented after its attribute.
#[allow(clippy::too_many_lines)]
async fn a_paused_tokio_test() {}

#[test] pub(crate) fn on_one_line() {}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn inside_a_macro(x in 0..10u8) {}
}

#[cfg(test)]
fn a_helper() {
    let _ = "#[test] fn in_a_string() {}";
    let _ = r#"#[test] fn in_a_raw_string() {}"#;
    let _ = '}';
    let _: &'static str = "";
}

#[test_case(1)]
fn another_framework(x: u8) {}

/* #[test] fn in_a_block_comment() {} */
"##;

fn contract_with(table: &str, clauses: &str) -> String {
    format!(
        "# Behavior contract\n\nIntro naming `core/src`.\n\n## {TABLE_HEADING}\n\n\
         | Prefix | File |\n|---|---|\n{table}\n## Section\n\n{clauses}"
    )
}

fn checked(table: &str, clauses: &str) -> Problems {
    let files = Files(BTreeMap::from([
        ("core/src/lib.rs", ""),
        ("core/tests/clauses.rs", TESTS_RS),
        ("core/src/empty.rs", "fn not_a_test() {}"),
    ]));
    check(&parse_contract(&contract_with(table, clauses)), &files)
}

#[test]
fn test_functions_are_told_apart_from_other_functions() {
    let found = functions(TESTS_RS);
    let tests: Vec<&str> = found.tests.iter().map(String::as_str).collect();
    assert_eq!(
        tests,
        [
            "a_paused_tokio_test",
            "a_plain_test",
            "inside_a_macro",
            "on_one_line"
        ]
    );
    let others: Vec<&str> = found.others.iter().map(String::as_str).collect();
    assert_eq!(others, ["a_helper", "another_framework"]);
}

#[test]
fn a_contract_that_holds_passes() {
    let problems = checked(
        "| `clauses` | `core/tests/clauses.rs` |\n",
        "1. One. — `clauses::a_plain_test`\n\
         2. Two, over\n   two lines. —\n   `clauses::a_paused_tokio_test`, `clauses::*`\n",
    );
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn a_name_that_is_not_a_test_is_refused() {
    let problems = checked(
        "| `clauses` | `core/tests/clauses.rs` |\n",
        "1. One. — `clauses::a_helper`, `clauses::in_a_string`\n",
    );
    assert_eq!(
        problems.not_tests,
        [
            "`clauses::a_helper` in clause 1 (\"Section\"): `core/tests/clauses.rs` is a fn there but not a test",
            "`clauses::in_a_string` in clause 1 (\"Section\"): `core/tests/clauses.rs` is not a fn there",
        ]
    );
}

#[test]
fn a_wildcard_needs_at_least_one_test_in_its_file() {
    let problems = checked(
        "| `empty::tests` | `core/src/empty.rs` |\n",
        "1. One. — `empty::tests::*`\n",
    );
    assert_eq!(problems.not_tests.len(), 1, "{problems}");
    assert!(problems.not_tests[0].contains("has no tests"));
}

#[test]
fn a_row_whose_file_is_missing_is_refused() {
    let problems = checked(
        "| `moved` | `server/tests/moved.rs` |\n",
        "1. One. — `moved::a_plain_test`\n",
    );
    assert_eq!(
        problems.missing_files,
        ["`moved` → `server/tests/moved.rs`"]
    );
    assert!(problems.not_tests.is_empty(), "reported once, with its row");
}

#[test]
fn a_clause_naming_no_test_is_refused() {
    let problems = checked(
        "| `clauses` | `core/tests/clauses.rs` |\n",
        "1. One. — `clauses::a_plain_test`\n\
         2. Two names only `max_concurrent` and `register_ack`.\n\n\
         A section paragraph after the list, naming `clauses::on_one_line`.\n",
    );
    assert_eq!(problems.clauses_without_tests, ["clause 2 (\"Section\")"]);
}

#[test]
fn a_prefix_without_a_row_or_a_bare_name_is_refused() {
    let problems = checked(
        "| `clauses` | `core/tests/clauses.rs` |\n",
        "1. One. — `clauses::a_plain_test`, `elsewhere::a_plain_test`,\n\
         \x20  `a_test_named_without_its_prefix`\n",
    );
    assert_eq!(
        problems.unknown_prefixes,
        ["`elsewhere::a_plain_test` in clause 1 (\"Section\")"]
    );
    assert_eq!(
        problems.unqualified_names,
        ["`a_test_named_without_its_prefix` in clause 1 (\"Section\")"]
    );
}

#[test]
fn unused_rows_wrong_paths_and_broken_numbering_are_refused() {
    let problems = checked(
        "| `clauses` | `core/tests/clauses.rs` |\n| `spare` | `core/src/lib.rs` |\n",
        "1. One, in `core/src/gone.rs`. — `clauses::a_plain_test`\n\
         3. Three. — `clauses::a_plain_test`\n",
    );
    assert_eq!(problems.unused_rows, ["`spare` → `core/src/lib.rs`"]);
    assert_eq!(
        problems.wrong_paths,
        ["`core/src/gone.rs` in clause 1 (\"Section\")"]
    );
    assert_eq!(problems.shape.len(), 1, "{problems}");
    assert!(problems.shape[0].contains("expected 2"));
}

#[test]
fn a_contract_without_its_table_or_clauses_is_refused() {
    let contract = parse_contract("# Behavior contract\n\n## Section\n\nNo clauses.\n");
    assert_eq!(contract.shape.len(), 2, "{:?}", contract.shape);
}
