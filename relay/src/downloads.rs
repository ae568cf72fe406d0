//! The worker binaries the relay serves (`--downloads-dir`): a manifest with
//! each file's size and SHA-256, the files, and their checksum lines.
//!
//! The directory is read once, at start-up: only regular files directly in it
//! whose names are plain (letters, digits, `.`, `_`, `-`; not hidden) are
//! served, so no path a client sends can reach anything else. A file that
//! changed since (another size or modification time) is refused rather than
//! served under a checksum that no longer holds.

use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ring::digest::{Context, SHA256};
use serde::Serialize;
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::codes;
use crate::error::{ApiError, ApiFlavor};

/// Most files a downloads directory may list: the rest are left out, with a warning.
pub const MAX_DOWNLOADS: usize = 256;

/// Longest file name served.
const MAX_NAME_BYTES: usize = 128;

/// The suffix of a file's checksum line (`sha256sum -c` reads it).
const CHECKSUM_SUFFIX: &str = ".sha256";

/// One file the relay serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Download {
    /// Its name, as in `/downloads/{name}`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, in lower-case hex.
    pub sha256: String,
    /// When it was last changed, to notice a file replaced after start-up.
    #[serde(skip)]
    modified: Option<SystemTime>,
}

/// The files of a downloads directory, read at start-up.
#[derive(Clone, Debug)]
pub struct Downloads {
    dir: PathBuf,
    files: Vec<Download>,
}

/// Why a downloads directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DownloadsError {
    /// The directory cannot be read.
    #[error("cannot read the downloads directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file in it cannot be read.
    #[error("cannot read {file} in the downloads directory: {source}")]
    File {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Downloads {
    /// Reads `dir`: every plain regular file in it, with its size and checksum.
    pub fn scan(dir: &Path) -> Result<Self, DownloadsError> {
        let dir_error = |source| DownloadsError::Dir {
            dir: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(dir_error)? {
            let entry = entry.map_err(dir_error)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Not followed: a link could point anywhere.
            let metadata = entry.metadata().map_err(dir_error)?;
            if !metadata.is_file() || !plain_name(&name) {
                continue;
            }
            if files.len() == MAX_DOWNLOADS {
                tracing::warn!(dir = %dir.display(), max = MAX_DOWNLOADS, "the downloads directory holds more files than are served; the rest are left out");
                break;
            }
            let path = entry.path();
            let sha256 = sha256_of(&path).map_err(|source| DownloadsError::File {
                file: path.clone(),
                source,
            })?;
            files.push(Download {
                name,
                size: metadata.len(),
                sha256,
                modified: metadata.modified().ok(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            dir: dir.to_owned(),
            files,
        })
    }

    /// The files served, by name.
    pub fn files(&self) -> &[Download] {
        &self.files
    }

    fn find(&self, name: &str) -> Option<&Download> {
        self.files.iter().find(|file| file.name == name)
    }
}

/// Whether a file name may be served: plain characters, not hidden, not too long.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The SHA-256 of a file, read in pieces.
fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut context = Context::new(&SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The routes: `/downloads` (the manifest) and `/downloads/{name}` (a file, or
/// with `.sha256` its checksum line). Open to anyone, like `/health`: worker
/// binaries are no secret, and every connection limit applies.
pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/downloads", get(manifest))
        .route("/downloads/{name}", get(file))
}

fn not_served(what: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, what.to_owned())
        .into_response(ApiFlavor::OpenAi)
}

/// `GET /downloads`: every file with its size, checksum and URL path.
async fn manifest(State(app): State<Arc<AppState>>) -> Response {
    let Some(downloads) = &app.config.downloads else {
        return not_served("this relay serves no downloads (--downloads-dir)");
    };
    let files: Vec<serde_json::Value> = downloads
        .files()
        .iter()
        .map(|file| {
            serde_json::json!({
                "name": file.name,
                "size": file.size,
                "sha256": file.sha256,
                "path": format!("/downloads/{}", file.name),
                "checksum_path": format!("/downloads/{}{CHECKSUM_SUFFIX}", file.name),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "files": files })).into_response()
}

/// `GET /downloads/{name}`: the file, or `{name}.sha256`: its checksum line.
async fn file(State(app): State<Arc<AppState>>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(downloads) = &app.config.downloads else {
        return not_served("this relay serves no downloads (--downloads-dir)");
    };
    if let Some(file) = name
        .strip_suffix(CHECKSUM_SUFFIX)
        .and_then(|base| downloads.find(base))
    {
        let line = format!("{}  {}\n", file.sha256, file.name);
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response();
    }
    let Some(file) = downloads.find(&name) else {
        return not_served("no such download");
    };
    match serve_file(&downloads.dir, file).await {
        Ok(response) => response,
        Err(error) => error.into_response(ApiFlavor::OpenAi),
    }
}

/// Streams one file, unless it changed since start-up.
async fn serve_file(dir: &Path, file: &Download) -> Result<Response, ApiError> {
    let path = dir.join(&file.name);
    let unavailable = |message: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::DOWNLOAD_CHANGED,
            message,
        )
    };
    let opened = tokio::fs::File::open(&path).await;
    let (handle, metadata): (tokio::fs::File, Metadata) = match opened {
        Ok(handle) => {
            let metadata = handle
                .metadata()
                .await
                .map_err(|e| unavailable(format!("cannot read {}: {e}", file.name)))?;
            (handle, metadata)
        }
        Err(e) => return Err(unavailable(format!("cannot open {}: {e}", file.name))),
    };
    if metadata.len() != file.size || metadata.modified().ok() != file.modified {
        return Err(unavailable(format!(
            "{} changed since the relay started; restart it to serve the new file with its checksum",
            file.name
        )));
    }
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.name))
        .map_err(|e| unavailable(e.to_string()))?;
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, file.size)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header("x-checksum-sha256", file.sha256.as_str())
        .body(Body::from_stream(ReaderStream::new(handle)))
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_served() {
        for name in [
            "modelrelay-worker",
            "modelrelay-worker-x86_64-linux.tar.gz",
            "a.exe",
        ] {
            assert!(plain_name(name), "{name}");
        }
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for name in ["", ".hidden", "../etc", "a b", "a/b", "é", long.as_str()] {
            assert!(!plain_name(name), "{name}");
        }
    }

    #[test]
    fn a_scan_lists_plain_files_with_their_size_and_checksum() {
        let dir = std::env::temp_dir().join(format!("modelrelay-downloads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("worker"), b"abc").unwrap();
        std::fs::write(dir.join(".secret"), b"x").unwrap();
        std::fs::write(dir.join("bad name"), b"x").unwrap();
        let downloads = Downloads::scan(&dir).unwrap();
        let names: Vec<&str> = downloads.files().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["worker"]);
        let worker = &downloads.files()[0];
        assert_eq!(worker.size, 3);
        // sha256("abc")
        assert_eq!(
            worker.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = Downloads::scan(&dir.join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
