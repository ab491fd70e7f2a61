//! The SmolLM2 model every inference test uses, fetched once into the shared cache
//! (`$JOULE_HOME`, default `~/.cache/joule`) if it is not there yet.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use joule_executor::backend::local::LoadedModel;
use joule_executor::models::{ModelStore, Silent};
use joule_planner::catalog::Catalog;

pub const SMOL: &str = "smollm2-135m";

pub fn smol_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let catalog = Catalog::builtin();
        let model = catalog.model(SMOL).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (path, _) = runtime
            .block_on(ModelStore::from_env().fetch(model, &Silent))
            .unwrap_or_else(|e| panic!("cannot fetch {SMOL} for the tests: {e}"));
        path
    })
    .clone()
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
