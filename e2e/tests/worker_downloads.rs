//! Worker binaries served by the relay (`--downloads-dir`): the list, the
//! files whole with their checksums, and nothing else.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::checksum::sha256_hex;
use common::*;
use http::StatusCode;
use modelrelay_relay::RunningServer;
use modelrelay_relay::downloads::Downloads;

/// A fresh directory holding a worker binary (300 KB of varied bytes), a
/// hidden file and a file whose name is not plain.
fn downloads_dir(tag: &str) -> (PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!(
        "modelrelay-e2e-downloads-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let binary: Vec<u8> = (0..300_000u32).map(|n| (n * 7 % 251) as u8).collect();
    std::fs::write(dir.join("modelrelay-worker-x86_64-linux"), &binary).unwrap();
    std::fs::write(dir.join(".env"), b"WORKER_SECRET=never-served").unwrap();
    std::fs::write(dir.join("not plain"), b"x").unwrap();
    (dir, binary)
}

async fn serving(dir: &std::path::Path) -> RunningServer {
    let downloads = Arc::new(Downloads::scan(dir).unwrap());
    relay(move |config| config.downloads = Some(downloads)).await
}

#[tokio::test]
async fn the_relay_lists_its_downloads_and_serves_each_whole_with_its_checksum() {
    let (dir, binary) = downloads_dir("serve");
    let relay = serving(&dir).await;
    let http = Http::new();
    let list = http.get(&format!("{}/downloads", relay.url())).await;
    assert_eq!(list.status, StatusCode::OK);
    let files = list.json()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1, "only the plain, visible file: {files:?}");
    let file = &files[0];
    assert_eq!(file["name"], "modelrelay-worker-x86_64-linux");
    assert_eq!(file["size"], binary.len());
    assert_eq!(file["sha256"], sha256_hex(&binary));

    let url = format!("{}{}", relay.url(), file["path"].as_str().unwrap());
    let got = http.get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), binary.as_slice());
    assert_eq!(
        got.headers["x-checksum-sha256"].to_str().unwrap(),
        sha256_hex(&binary)
    );
    // The checksum line `sha256sum -c` reads.
    let line = http
        .get(&format!(
            "{}{}",
            relay.url(),
            file["checksum_path"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        line.text(),
        format!("{}  modelrelay-worker-x86_64-linux\n", sha256_hex(&binary))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn nothing_but_the_listed_files_is_served_and_a_changed_file_is_refused() {
    let (dir, _) = downloads_dir("refuse");
    let relay = serving(&dir).await;
    let http = Http::new();
    for path in [
        "/downloads/.env",
        "/downloads/not%20plain",
        "/downloads/..%2F..%2Fetc%2Fpasswd",
        "/downloads/../downloads/.env",
        "/downloads/missing",
    ] {
        let reply = http.get(&format!("{}{path}", relay.url())).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!reply.text().contains("never-served"), "{path}");
        assert_eq!(reply.json()["error"]["code"], "not_found", "{path}");
    }
    // Replaced after start-up: refused rather than served under a stale checksum.
    std::fs::write(dir.join("modelrelay-worker-x86_64-linux"), b"another build").unwrap();
    let reply = http
        .get(&format!(
            "{}/downloads/modelrelay-worker-x86_64-linux",
            relay.url()
        ))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], "download_changed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_relay_without_a_downloads_dir_says_so() {
    let relay = relay(|_| {}).await;
    let reply = Http::new().get(&format!("{}/downloads", relay.url())).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("--downloads-dir"), "{}", reply.text());
}
