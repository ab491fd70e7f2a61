//! Models for the inference tests, fetched into the shared cache (`$JOULE_HOME`, default
//! `~/.cache/joule`) if they are not there yet; SmolLM2 is the one every default test uses.

#![allow(dead_code)]

pub mod fault;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use joule_executor::backend::local::LoadedModel;
use joule_executor::models::{ModelStore, Silent};
use joule_planner::catalog::Catalog;

pub const SMOL: &str = "smollm2-135m";

/// The catalog model's file in the shared cache, fetched first if it is missing.
pub fn fetched(id: &str) -> PathBuf {
    let catalog = Catalog::builtin();
    let model = catalog.model(id).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (path, _) = runtime
        .block_on(ModelStore::from_env().fetch(model, &Silent))
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
            Arc::new(LoadedModel::load(SMOL, &smol_path(), &candle_core::Device::Cpu).unwrap())
        })
        .clone()
}
