//! `extras/modelrelay-llamafile`, the llamafile helper, driven as a user runs
//! it: a catalog and its files from a local HTTP server, a stand-in llamafile
//! (a script that takes a real llamafile's server-mode command line and runs
//! the simulated backend), the real `modelrelay-server` and `modelrelay-worker`.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::checksum::sha256_hex;
use common::*;
use e2e::{Binary, Process};
use modelrelay_testkit::simulated_backend::expected_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Tokens the stand-in llamafile's simulated backend streams per answer.
const TOKENS: usize = 7;
/// The worker secret of the relay these tests start.
const RELAY_SECRET: &str = "llamafile-helper-secret";
/// How long one helper command may take before the test fails.
const COMMAND_WAIT: Duration = Duration::from_secs(120);

/// The helper with its own `MODELRELAY_HOME`, fresh for each test.
struct Helper {
    home: PathBuf,
}

impl Helper {
    fn new(tag: &str) -> Self {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("llamafile-helper-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        Self { home }
    }

    /// Runs `modelrelay-llamafile ARGS` with `stdin` as its standard input.
    async fn run_with_input(&self, args: &[&str], stdin: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extras/modelrelay-llamafile");
        let mut child = tokio::process::Command::new(script)
            .args(args)
            .env("MODELRELAY_HOME", &self.home)
            .env_remove("WORKER_SECRET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the helper runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(COMMAND_WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{}` did not end within {COMMAND_WAIT:?}", args.join(" ")))
            .unwrap()
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, "").await
    }

    /// Runs a command that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "`{}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command that must fail; its standard error.
    async fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            !output.status.success(),
            "`{}` succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).unwrap()
    }

    async fn set(&self, key: &str, value: &str) {
        self.ok(&["config", "set", key, value]).await;
    }

    async fn set_secret(&self, secret: &str) {
        let output = self
            .run_with_input(&["config", "set", "worker_secret"], &format!("{secret}\n"))
            .await;
        assert!(output.status.success(), "{output:?}");
    }

    /// The pids the helper recorded for `slug`'s llamafile and worker.
    fn pids(&self, slug: &str) -> Vec<u32> {
        ["llamafile", "worker"]
            .iter()
            .map(|what| {
                let file = self.home.join(format!("run/{slug}.{what}.pid"));
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{} is not there: {e}", file.display()));
                text.split_whitespace().next().unwrap().parse().unwrap()
            })
            .collect()
    }

    fn files_in(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.home.join(dir))
            .map(|entries| {
                entries
                    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // A failed test may leave processes: stop them by the pids recorded.
        for entry in std::fs::read_dir(self.home.join("run"))
            .into_iter()
            .flatten()
        {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "pid")
                && let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.split_whitespace().next().map(str::to_owned))
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            !after_name.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// A loopback port nothing listens on as the test starts (the helper passes
/// its llamafiles a port, as llamafile takes one; it skips ports in use).
fn a_free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A stand-in for a llamafile: it takes a real llamafile's server-mode
/// command line, refuses anything else, and runs the simulated backend on
/// that host and port serving the alias it is given. Padded to 256 KB so a
/// download can be cut in its middle (bash never reads past the `exec`).
fn stand_in_llamafile() -> Vec<u8> {
    let backend = e2e::binary(Binary::SimulatedBackend);
    let mut script = format!(
        r#"#!/usr/bin/env bash
# A stand-in llamafile for the helper's tests.
set -euo pipefail
server="" nobrowser="" host="" port="" alias=""
while [ $# -gt 0 ]; do
    case $1 in
    --server) server=1 ;;
    --nobrowser) nobrowser=1 ;;
    --host) host=$2; shift ;;
    --port) port=$2; shift ;;
    -a | --alias) alias=$2; shift ;;
    *) echo "stand-in llamafile: not a server-mode argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$server" ] || [ -z "$nobrowser" ] || [ -z "$host" ] || [ -z "$port" ] || [ -z "$alias" ]; then
    echo "stand-in llamafile: expected --server --nobrowser --host H --port P --alias A" >&2
    exit 2
fi
exec '{}' --listen "$host:$port" --models "$alias" --tokens {TOKENS}
"#,
        backend.display()
    )
    .into_bytes();
    while script.len() < 256 * 1024 {
        script.extend_from_slice(b"# padding: a real llamafile holds its weights here\n");
    }
    script
}

/// One request the file server got: its path and its `Range` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A plain HTTP/1.1 file server on loopback: `files` by path, byte ranges
/// (`Range: bytes=N-`) answered with 206. The first request for `cut.0`
/// gets the headers of the whole file, `cut.1` bytes of it, then the
/// connection closes, as a dropped download does.
async fn file_server(
    files: HashMap<String, Vec<u8>>,
    cut: Option<(String, usize)>,
) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let files = Arc::new(files);
    let cut = Arc::new(Mutex::new(cut));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (files, cut, log) = (Arc::clone(&files), Arc::clone(&cut), Arc::clone(&log));
            tokio::spawn(async move { answer(stream, &files, &cut, &log).await });
        }
    });
    (base, seen)
}

async fn answer(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    cut: &Mutex<Option<(String, usize)>>,
    seen: &Seen,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let range = head
        .lines()
        .find_map(|line| {
            line.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("range"))
        })
        .map(|(_, value)| value.trim().to_owned());
    seen.lock().unwrap().push((path.clone(), range.clone()));
    let Some(file) = files.get(&path) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let from: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{}\r\nconnection: close\r\n\r\n",
            file.len() - from,
            file.len() - 1,
            file.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            file.len()
        )
    };
    let mut body = &file[from..];
    let cut_here = {
        let mut cut = cut.lock().unwrap();
        match cut.take() {
            Some((cut_path, at)) if cut_path == path => Some(at),
            other => {
                *cut = other;
                None
            }
        }
    };
    if let Some(at) = cut_here {
        body = &body[..at];
    }
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// A catalog line for `slug` at `url` whose checksum is that of `bytes`.
fn catalog_line(slug: &str, ram: u32, tags: &str, bytes: &[u8], url: &str) -> String {
    format!(
        "{slug}\t{ram}\t{}\t{}\t{tags}\t{url}\tthe {slug} test model\n",
        bytes.len(),
        sha256_hex(bytes)
    )
}

/// A fresh helper whose `catalog_url` is `catalog`, served from loopback.
async fn helper_with_catalog(tag: &str, catalog: String) -> Helper {
    let (base, _) = file_server(
        HashMap::from([("/catalog.tsv".to_owned(), catalog.into_bytes())]),
        None,
    )
    .await;
    let helper = Helper::new(tag);
    helper
        .set("catalog_url", &format!("{base}/catalog.tsv"))
        .await;
    helper
}

/// `serve` installs a catalog model, runs it as a llamafile's server mode
/// and connects a worker for it to the relay; `status`, `test` and `logs`
/// show it working; `stop all` leaves no process of it behind.
#[tokio::test]
async fn serve_runs_the_llamafile_and_a_worker_that_streams_through_the_relay_and_stop_leaves_nothing()
 {
    let model = stand_in_llamafile();
    let catalog_entry = |url: &str| catalog_line("tiny-chat", 1, "chat,small", &model, url);
    let (files_url, _) = file_server(
        HashMap::from([("/tiny-chat.llamafile".to_owned(), model.clone())]),
        None,
    )
    .await;
    let catalog = "# the test catalog\n".to_owned()
        + &catalog_entry(&format!("{files_url}/tiny-chat.llamafile"));

    let mut server = Process::start(
        Binary::Server,
        &[
            "--listen",
            "127.0.0.1:0",
            "--worker-secret",
            RELAY_SECRET,
            "--log-format",
            "json",
        ],
    );
    let listening = server.logged("relay listening").await;
    let relay = format!("http://{}", listening["addr"].as_str().unwrap());

    let helper = helper_with_catalog("serve", catalog).await;
    helper.set("relay_url", &relay).await;
    helper
        .set("worker_bin", e2e::binary(Binary::Worker).to_str().unwrap())
        .await;
    helper.set("port_base", &a_free_port().to_string()).await;
    helper.set_secret(RELAY_SECRET).await;
    // The secret is kept to the user alone and never shown back.
    let mode = std::fs::metadata(helper.home.join("config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        helper.ok(&["config", "get", "worker_secret"]).await.trim(),
        "(set)"
    );
    let refused = helper
        .fails(&["config", "set", "worker_secret", RELAY_SECRET])
        .await;
    assert!(refused.contains("standard input"), "{refused}");

    let doctor = helper.ok(&["doctor"]).await;
    assert!(
        doctor.contains(&format!("ok    relay {relay} answers")),
        "{doctor}"
    );

    let served = helper.ok(&["serve", "tiny-chat"]).await;
    assert!(served.contains("serving tiny-chat"), "{served}");
    let http = Http::new();
    wait_for_workers_at(&http, &relay, 1).await;
    let pids = helper.pids("tiny-chat");
    assert!(pids.iter().all(|pid| runs(*pid)), "{pids:?}");
    let worker_command_line = std::fs::read(format!("/proc/{}/cmdline", pids[1])).unwrap();
    assert!(
        !String::from_utf8_lossy(&worker_command_line).contains(RELAY_SECRET),
        "the secret is not on the worker's command line"
    );

    let status = helper.ok(&["status"]).await;
    let row = status
        .lines()
        .find(|line| line.starts_with("tiny-chat "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(row.contains(&format!("running ({})", pids[0])), "{row}");
    assert!(row.contains(&format!("running ({})", pids[1])), "{row}");
    assert!(row.ends_with("registered"), "{row}");

    let answer = helper.ok(&["test"]).await;
    assert!(answer.contains(&expected_text(TOKENS)), "{answer}");
    let answer = helper
        .ok(&["test", "tiny-chat", "--prompt", "say \"hi\"\n"])
        .await;
    assert!(answer.contains(&expected_text(TOKENS)), "{answer}");

    let logs = helper.ok(&["logs", "tiny-chat"]).await;
    assert!(logs.contains("registered with the relay"), "{logs}");

    let stopped = helper.ok(&["stop", "all"]).await;
    assert!(stopped.contains("stopped tiny-chat"), "{stopped}");
    for pid in &pids {
        assert!(!runs(*pid), "process {pid} is still running after stop");
    }
    assert!(
        !helper
            .files_in("run")
            .iter()
            .any(|name| name.ends_with(".pid")),
        "{:?}",
        helper.files_in("run")
    );
    wait_for_workers_at(&http, &relay, 0).await;
    assert!(helper.ok(&["status"]).await.contains("nothing is running"));
    server.stop().await;
}

/// A download cut midway is resumed from where it stopped (a `Range`
/// request), and the whole file is installed.
#[tokio::test]
async fn a_download_cut_midway_resumes_where_it_stopped() {
    let model = stand_in_llamafile();
    let cut_at = 100_000;
    let (files_url, seen) = file_server(
        HashMap::from([("/tiny-chat.llamafile".to_owned(), model.clone())]),
        Some(("/tiny-chat.llamafile".to_owned(), cut_at)),
    )
    .await;
    let catalog = catalog_line(
        "tiny-chat",
        1,
        "chat",
        &model,
        &format!("{files_url}/tiny-chat.llamafile"),
    );
    let helper = helper_with_catalog("resume", catalog).await;

    let output = helper.run(&["pull", "tiny-chat"]).await;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains(&format!("stopped at {cut_at} of {}", model.len())),
        "{said}"
    );
    assert!(
        said.contains(&format!("resuming tiny-chat at {cut_at}")),
        "{said}"
    );
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![
            ("/tiny-chat.llamafile".to_owned(), None),
            (
                "/tiny-chat.llamafile".to_owned(),
                Some(format!("bytes={cut_at}-"))
            ),
        ]
    );
    let installed = helper.home.join("models/tiny-chat.llamafile");
    assert_eq!(std::fs::read(&installed).unwrap(), model);
    assert_ne!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o100,
        0
    );
    assert_eq!(
        helper.files_in("models"),
        ["tiny-chat.info", "tiny-chat.llamafile"]
    );
    let list = helper.ok(&["list"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with("tiny-chat ") && l.contains("installed")),
        "{list}"
    );
}

/// A download whose SHA-256 is not the catalog's is deleted, not installed
/// and never run, and the user is told both checksums.
#[tokio::test]
async fn a_download_that_does_not_match_the_catalogs_checksum_is_deleted_and_never_run() {
    let model = stand_in_llamafile();
    let (files_url, _) = file_server(
        HashMap::from([("/bad.llamafile".to_owned(), model.clone())]),
        None,
    )
    .await;
    let claimed = b"another file".to_vec();
    // The catalog's size is right, its checksum that of other bytes.
    let catalog = catalog_line(
        "bad",
        1,
        "chat",
        &claimed,
        &format!("{files_url}/bad.llamafile"),
    )
    .replace(
        &format!("\t{}\t", claimed.len()),
        &format!("\t{}\t", model.len()),
    );
    let helper = helper_with_catalog("checksum", catalog).await;
    helper.set("relay_url", "http://127.0.0.1:9").await;
    helper
        .set("worker_bin", e2e::binary(Binary::Worker).to_str().unwrap())
        .await;
    helper.set_secret("unused").await;

    for command in ["pull", "serve"] {
        let said = helper.fails(&[command, "bad"]).await;
        assert!(
            said.contains("does not match the catalog's checksum"),
            "{said}"
        );
        assert!(said.contains(&sha256_hex(&claimed)), "{said}");
        assert!(said.contains(&sha256_hex(&model)), "{said}");
        assert!(said.contains("deleted and is not used"), "{said}");
        assert!(
            helper.files_in("models").is_empty(),
            "{:?}",
            helper.files_in("models")
        );
        assert!(
            helper.files_in("run").is_empty(),
            "{:?}",
            helper.files_in("run")
        );
    }
    assert!(helper.ok(&["status"]).await.contains("nothing is running"));
}

/// The catalog comes only from the configured URL, is refused whole for
/// one bad line, is listed by tag and recommended by memory; an imported
/// file joins the installed models; `help` documents the format.
#[tokio::test]
async fn the_catalog_is_checked_listed_by_tag_and_recommended_by_memory_and_imports_join_it() {
    let file = |n: u8| vec![n; 10];
    let good = catalog_line(
        "small",
        2,
        "chat,small",
        &file(1),
        "https://models.example.com/small.llamafile",
    ) + &catalog_line(
        "mid",
        8,
        "chat,code",
        &file(2),
        "https://models.example.com/mid.llamafile",
    ) + &catalog_line(
        "big",
        64,
        "chat",
        &file(3),
        "https://models.example.com/big.llamafile",
    );
    let bad = catalog_line(
        "small",
        2,
        "chat",
        &file(1),
        "https://models.example.com/small.llamafile",
    ) + "\n"
        + "mid\t8\t10\tnot-a-checksum\tchat\thttps://models.example.com/mid.llamafile\tmid\n";
    let (base, seen) = file_server(
        HashMap::from([
            ("/good.tsv".to_owned(), good.into_bytes()),
            ("/bad.tsv".to_owned(), bad.into_bytes()),
        ]),
        None,
    )
    .await;
    let helper = Helper::new("catalog");

    // Nothing is fetched from anywhere until catalog_url is set.
    let output = helper.run(&["list"]).await;
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no catalog yet"));
    let said = helper.fails(&["update-catalog"]).await;
    assert!(said.contains("no catalog_url is set"), "{said}");
    assert!(seen.lock().unwrap().is_empty());

    helper.set("catalog_url", &format!("{base}/bad.tsv")).await;
    let said = helper.fails(&["update-catalog"]).await;
    assert!(
        said.contains("line 3 is refused") && said.contains("SHA256"),
        "{said}"
    );
    assert!(!helper.home.join("catalog.tsv").exists());

    helper.set("catalog_url", &format!("{base}/good.tsv")).await;
    helper.ok(&["update-catalog"]).await;
    let code = helper.ok(&["list", "--tag", "code"]).await;
    let slugs: Vec<&str> = code
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(slugs, ["mid"], "{code}");
    let all = helper.ok(&["list"]).await;
    assert_eq!(all.lines().count(), 4, "{all}");

    let pick = helper.ok(&["recommend", "--memory-gb", "16"]).await;
    assert!(
        pick.starts_with("recommended for 16 GB of memory: mid "),
        "{pick}"
    );
    assert!(pick.contains("also fits: small mid"), "{pick}");
    let said = helper.fails(&["recommend", "--memory-gb", "1"]).await;
    assert!(said.contains("the smallest, small, needs 2 GB"), "{said}");
    assert!(
        helper
            .ok(&["recommend"])
            .await
            .starts_with("recommended for ")
    );

    let local = helper.home.join("mine.llamafile");
    std::fs::write(&local, b"a local llamafile").unwrap();
    helper
        .ok(&["import", local.to_str().unwrap(), "--slug", "mine"])
        .await;
    let all = helper.ok(&["list"]).await;
    let mine = all
        .lines()
        .find(|l| l.starts_with("mine "))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        mine.contains("installed") && mine.contains("imported"),
        "{mine}"
    );
    assert_eq!(
        std::fs::read(helper.home.join("models/mine.llamafile")).unwrap(),
        b"a local llamafile"
    );
    let said = helper
        .fails(&["import", local.to_str().unwrap(), "--slug", "mine"])
        .await;
    assert!(said.contains("already installed"), "{said}");

    let help = helper.ok(&["help"]).await;
    for word in [
        "recommend",
        "list [--tag TAG]",
        "config set KEY",
        "serve SLUG",
        "test [SLUG]",
        "status",
        "logs SLUG [-f]",
        "stop SLUG|all",
        "import FILE --slug SLUG",
        "update-catalog",
        "doctor",
        "Catalog format",
        "SIZE_BYTES",
        "SHA256",
        "--server --nobrowser",
    ] {
        assert!(help.contains(word), "help does not mention {word:?}");
    }
    // doctor names what is missing, and fails.
    let output = helper.run(&["doctor"]).await;
    assert!(!output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("FAIL  relay_url is not set"), "{report}");
    assert!(
        report.contains("FAIL  worker_secret is not set"),
        "{report}"
    );
}
