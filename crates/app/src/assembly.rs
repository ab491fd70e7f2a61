//! Putting a run's world together, once, from settings and a run's options: the catalog (with
//! endpoint overrides), the compile context (with the operator policy), the merged profiles,
//! what this machine offers the planner, and the backends a plan needs. Every command that
//! plans or runs goes through here, so they all see the same world.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use joule_executor::router::Router;
use joule_models::local::LocalBackend;
use joule_models::openai::{OpenAiBackend, RetryPolicy};
use joule_planner::catalog::{Catalog, Endpoint};
use joule_planner::dag::CompileContext;
use joule_planner::estimate::Environment;
use joule_planner::policy::OperatorPolicy;
use joule_planner::profile::Profiles;
use joule_planner::spec::{Name, StepKind};
use joule_planner::{Dag, SourceFile};
use joule_sandbox::ToolBackend;

use crate::devices;
use crate::error::AppError;
use crate::options::{EndpointUrl, Planning};
use crate::settings::{CALIBRATION, Settings};

/// The world a run is planned and executed in.
pub struct Assembly {
    pub settings: Settings,
    pub planning: Planning,
    /// Catalog endpoints pointed elsewhere, as given (a stored run keeps them).
    pub endpoints: Vec<EndpointUrl>,
    pub catalog: Arc<Catalog>,
    pub compile: CompileContext,
    pub profiles: Arc<Profiles>,
    /// The local backends, made on first use and shared by every run assembled here: a
    /// service's runs batch together on one engine per model instead of each loading its own.
    local: std::sync::OnceLock<Vec<LocalBackend>>,
}

impl Assembly {
    /// The catalog (`planning.catalog` or the built-in one) with `endpoints` pointed where they
    /// say, the operator policy (`planning.policy`, else the settings'), and the profiles.
    pub fn new(
        settings: Settings,
        planning: Planning,
        endpoints: Vec<EndpointUrl>,
    ) -> Result<Self, AppError> {
        let mut catalog = catalog(planning.catalog.as_deref())?;
        point_endpoints(&mut catalog, &endpoints)?;
        let compile = compile_context(&catalog, planning.policy.as_deref(), &settings)?;
        let profiles = profiles(&planning, &settings)?;
        Ok(Self {
            catalog: Arc::new(catalog),
            compile,
            profiles: Arc::new(profiles),
            settings,
            planning,
            endpoints,
            local: std::sync::OnceLock::new(),
        })
    }

    /// The world of a command that plans nothing (measuring, scoring): a catalog file or the
    /// built-in one, with `endpoints` pointed where they say.
    pub fn measuring(
        settings: Settings,
        catalog: Option<PathBuf>,
        endpoints: Vec<EndpointUrl>,
    ) -> Result<Self, AppError> {
        Self::new(
            settings,
            Planning {
                catalog,
                ..Planning::default()
            },
            endpoints,
        )
    }

    /// Compiles workflow text against this world's catalog and policy.
    pub fn compile(&self, source: &SourceFile) -> Result<Dag, AppError> {
        joule_planner::compile_source(source, &self.compile).map_err(AppError::spec)
    }

    /// Applies `--model`: every llm step on that model, its quality floor set aside. Returns
    /// how many floors were set aside, so the caller can say so.
    pub fn pin_model(&self, dag: &mut Dag) -> Result<usize, AppError> {
        let Some(model) = &self.planning.model else {
            return Ok(0);
        };
        if self.catalog.model(model).is_none() {
            let known: Vec<&str> = self.catalog.models.iter().map(|m| m.id.as_str()).collect();
            return Err(AppError::invalid(format!(
                "--model {model}: not a catalog model; use one of: {}",
                known.join(", ")
            )));
        }
        let mut floors = 0;
        for step in &mut dag.workflow.steps {
            if let StepKind::Llm(l) = &mut step.kind {
                floors += usize::from(l.quality.is_some());
                l.model = Some(Name {
                    name: model.clone(),
                    pos: Default::default(),
                });
                l.quality = None;
            }
        }
        Ok(floors)
    }

    /// What the planner may use here: the devices asked for (or detected), and only the local
    /// models whose files are present, so a plan never picks one it would have to download.
    pub fn environment(&self) -> Environment {
        Environment {
            devices: self.devices(),
            local_models: Some(self.settings.model_store().present(&self.catalog)),
            resident: BTreeSet::new(),
        }
    }

    /// The local devices planned for: `planning.devices`, or what this machine has.
    pub fn devices(&self) -> Vec<String> {
        self.planning
            .devices
            .clone()
            .unwrap_or_else(devices::local_devices)
    }

    /// A local backend for every device planned for, made once; each keeps its models loaded
    /// between runs.
    pub fn local_backends(&self) -> Result<Vec<LocalBackend>, AppError> {
        if let Some(made) = self.local.get() {
            return Ok(made.clone());
        }
        let made = self
            .devices()
            .iter()
            .map(|d| self.local_backend(d, u64::MAX))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.local.get_or_init(|| made).clone())
    }

    /// Runs assembled here use `backends` (a server's, so its API and its runs share engines).
    pub fn share_local(&self, backends: Vec<LocalBackend>) -> Result<(), AppError> {
        self.local
            .set(backends)
            .map_err(|_| AppError::failed("the local backends were made already"))
    }

    /// The local backend of one device, with a memory budget for resident models.
    pub fn local_backend(&self, device: &str, budget_bytes: u64) -> Result<LocalBackend, AppError> {
        LocalBackend::new(
            self.catalog.clone(),
            self.settings.model_store(),
            Some(device),
            budget_bytes,
            self.settings.load_options(),
        )
        .map_err(|e| AppError::failed(e.to_string()))
    }

    /// The HTTP client of a catalog endpoint, its API key from the variable the catalog names.
    pub fn endpoint_backend(&self, endpoint: &Endpoint) -> Result<OpenAiBackend, AppError> {
        let key =
            joule_models::openai::api_key(&endpoint.base_url, Some(&endpoint.api_key_env), |var| {
                self.settings.var(var)
            })
            .map_err(|e| AppError::failed(format!("endpoint `{}`: {e}", endpoint.name)))?;
        OpenAiBackend::new(&endpoint.base_url, key, RetryPolicy::default())
            .map_err(|e| AppError::failed(format!("endpoint `{}`: {e}", endpoint.name)))
    }

    /// Tool calls, run in the sandbox with `workspace` as the directory `path` arguments
    /// are resolved in.
    pub fn tool_backend(&self, workspace: &Path) -> ToolBackend {
        ToolBackend::new(self.catalog.clone(), workspace.to_path_buf())
    }

    /// The router over `locals`, every endpoint that can be reached (an endpoint in `used`
    /// must be), and tools run with `workspace` as the directory `path` arguments live in.
    pub fn router(
        &self,
        locals: &[LocalBackend],
        workspace: &Path,
        used: &BTreeSet<&str>,
    ) -> Result<Router, AppError> {
        let mut router = Router::new().with_tools(Arc::new(self.tool_backend(workspace)));
        for local in locals {
            router = router.with_device(local.device_id(), Arc::new(local.clone()));
        }
        for e in &self.catalog.endpoints {
            match self.endpoint_backend(e) {
                Ok(b) => router = router.with_device(&e.name, Arc::new(b)),
                Err(err) if used.contains(e.name.as_str()) => return Err(err),
                Err(_) => {}
            }
        }
        Ok(router)
    }
}

/// The catalog at `path`, or the built-in one.
pub fn catalog(path: Option<&Path>) -> Result<Catalog, AppError> {
    match path {
        Some(path) => Catalog::load(path).map_err(AppError::spec),
        None => Ok(Catalog::builtin()),
    }
}

/// Applies `--endpoint NAME=URL` overrides to the catalog's endpoints.
pub fn point_endpoints(catalog: &mut Catalog, endpoints: &[EndpointUrl]) -> Result<(), AppError> {
    for e in endpoints {
        let Some(endpoint) = catalog.endpoints.iter_mut().find(|x| x.name == e.name) else {
            let known: Vec<&str> = catalog.endpoints.iter().map(|x| x.name.as_str()).collect();
            return Err(AppError::invalid(format!(
                "--endpoint: the catalog has no endpoint `{}`; it has: {}",
                e.name,
                known.join(", ")
            )));
        };
        endpoint.base_url = e.url.clone();
    }
    Ok(())
}

/// What workflows are compiled against: the catalog's models, endpoints and tools, and the
/// operator policy (`policy`, else the settings' `JOULE_POLICY`).
pub fn compile_context(
    catalog: &Catalog,
    policy: Option<&Path>,
    settings: &Settings,
) -> Result<CompileContext, AppError> {
    let mut ctx = catalog.compile_context();
    if let Some(path) = policy.or(settings.policy()) {
        let p = OperatorPolicy::load(path).map_err(|e| {
            AppError::spec_noted(
                e,
                format!(
                    "the operator policy {} is unusable; nothing was compiled",
                    path.display()
                ),
            )
        })?;
        ctx.operator = Some(p);
    }
    Ok(ctx)
}

/// The merged profiles, in order: the reference figures shipped with joule, the shipped
/// profile of this machine kind, every `*.yaml` of this machine's profiles directory
/// (calibration last, so it wins ties between measurements), then `planning.profiles`.
pub fn profiles(planning: &Planning, settings: &Settings) -> Result<Profiles, AppError> {
    let mut profiles = Profiles::reference();
    if !planning.no_machine_profiles && settings.shipped_profiles() {
        let cpu = joule_executor::devices::cpu();
        for file in Profiles::shipped_for(&cpu.model, cpu.threads) {
            profiles.merge(file);
        }
    }
    let machine = if planning.no_machine_profiles {
        Vec::new()
    } else {
        machine_profiles(settings.profiles_dir())
    };
    for path in machine.iter().chain(&planning.profiles) {
        let file = Profiles::load(path).map_err(AppError::spec)?;
        profiles.merge(file);
    }
    Ok(profiles)
}

/// This machine's profile files, calibration last.
fn machine_profiles(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|p| (p.file_name().is_some_and(|n| n == CALIBRATION), p.clone()));
    files
}
