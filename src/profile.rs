//! `joule profile`: measure this machine's local models and write the profile the planner
//! reads (`--profiles FILE`), measured figures beating published and estimated ones.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use joule_executor::models::{ModelStore, State};
use joule_executor::profiler::{self, Measured, Settings};
use joule_planner::profile::{ProfileFile, Profiles};
use miette::{IntoDiagnostic, miette};

#[derive(clap::Args)]
pub struct Args {
    /// Models to profile (default: every local catalog model that is downloaded).
    #[arg(long = "models", num_args = 1..)]
    models: Vec<String>,
    /// Local devices, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    devices: Vec<String>,
    /// The profile file to write; entries for other (model, device) pairs already in it are
    /// kept (default `<host>.yaml` in `$JOULE_PROFILES_DIR`, default `$JOULE_HOME/profiles`,
    /// which the planner reads by default).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Prompt lengths prefill is measured at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,128,512")]
    lengths: Vec<usize>,
    /// Tokens generated when measuring decode.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Timed repeats of each measurement, after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Fresh loads timed.
    #[arg(long, default_value_t = 2)]
    loads: usize,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Print what was measured as JSON.
    #[arg(long)]
    json: bool,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_else(|| "this-machine".into())
}

/// This machine's measured profile, which `joule profile` and `joule eval` write and the
/// planner reads by default.
pub fn machine_profile() -> PathBuf {
    crate::plan::profiles_dir().join(format!("{}.yaml", host()))
}

/// The profile at `path`, so that a new measurement keeps what earlier ones of other models,
/// devices or tasks wrote; a new empty profile when there is none.
pub fn load_or_new(path: &Path) -> miette::Result<ProfileFile> {
    match Profiles::load(path) {
        Ok(f) => Ok(f),
        Err(_) if !path.exists() => Ok(ProfileFile {
            name: format!("measured-{}", host()),
            ..ProfileFile::default()
        }),
        Err(errors) => {
            crate::diagnostics::print(&errors);
            Err(miette!(
                "{} exists but is not a profile; choose another --out",
                path.display()
            ))
        }
    }
}

/// The opening comment of a file `joule profile` or `joule eval` writes.
pub fn header() -> String {
    format!(
        "Measured on {} by `joule profile` and `joule eval`; each figure says how it was obtained.",
        host()
    )
}

/// Writes through a temporary file, so an interrupted write never leaves half a profile.
/// `header` becomes the file's opening comment.
pub fn write(path: &Path, file: &ProfileFile, header: &str) -> miette::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).into_diagnostic()?;
    }
    let text = format!(
        "# {header}\n{}",
        file.to_yaml().map_err(|e| miette!("{e}"))?
    );
    let tmp = path.with_extension("yaml.part");
    std::fs::write(&tmp, text).into_diagnostic()?;
    std::fs::rename(&tmp, path).into_diagnostic()
}

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    let Some(catalog) = crate::diagnostics::catalog(args.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    if args.lengths.is_empty() || args.lengths.contains(&0) || args.repeats == 0 || args.decode == 0
    {
        return Err(miette!(
            "--lengths, --decode and --repeats must be positive"
        ));
    }
    let store = ModelStore::from_env();
    let out = args.out.clone().unwrap_or_else(machine_profile);
    let mut file = load_or_new(&out)?;
    let reference = Profiles::reference();
    let settings = Settings {
        prompt_lengths: args.lengths.clone(),
        decode_tokens: args.decode,
        repeats: args.repeats,
        loads: args.loads,
    };
    for id in &args.models {
        if catalog.model(id).is_none_or(|m| m.source.is_none()) {
            return Err(miette!(
                "`{id}` is not a local model of the catalog; see `joule models list`"
            ));
        }
    }
    let mut measured: Vec<Measured> = Vec::new();
    let mut failed = false;
    for model in catalog.models.iter().filter(|m| m.source.is_some()) {
        if !args.models.is_empty() && !args.models.contains(&model.id) {
            continue;
        }
        let path = match store.state(model) {
            Ok(State::Present { path, .. }) => path,
            _ => {
                eprintln!(
                    "{}: not downloaded; `joule models fetch {}` first",
                    model.id, model.id
                );
                failed |= !args.models.is_empty();
                continue;
            }
        };
        for device in &args.devices {
            let assumed_w = reference
                .hardware(&model.id, device)
                .and_then(|h| h.active_w.as_ref())
                .map_or(joule_planner::estimate::HOST_W, |f| f.value);
            let label = format!("{} on {device}", model.id);
            let result = profiler::profile_local(
                &model.id,
                &path,
                device,
                assumed_w,
                &settings,
                &mut |what| eprintln!("{label}: {what}"),
            );
            match result {
                Ok(m) => {
                    let entry = m.hardware();
                    file.hardware
                        .retain(|h| !(h.model == entry.model && h.device == entry.device));
                    file.hardware.push(entry);
                    write(&out, &file, &header())?;
                    measured.push(m);
                }
                Err(e) => {
                    eprintln!("{label}: {e}");
                    failed = true;
                }
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "profile": out, "measured": measured })
        );
    } else {
        println!(
            "{:<20} {:<7} {:>7} {:>26} {:>8} {:>10} {:>14}",
            "model", "device", "load s", "prefill tok/s", "ttft s", "decode t/s", "J/token"
        );
        for m in &measured {
            let prefill: Vec<String> = m
                .prefill_tps
                .iter()
                .map(|(len, s)| format!("{len}:{:.1}", s.median))
                .collect();
            println!(
                "{:<20} {:<7} {:>7.2} {:>26} {:>8.3} {:>10.1} {:>14}",
                m.model,
                m.device,
                m.load_s.median,
                prefill.join(" "),
                m.ttft_s.median,
                m.decode_tps.median,
                format!(
                    "{:.3} [{}]",
                    m.energy_per_token_j.median,
                    method(m.power_method)
                ),
            );
        }
        println!(
            "wrote {}; plan with it: joule plan FILE --profiles {}",
            out.display(),
            out.display()
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn method(m: joule_executor::meter::Method) -> &'static str {
    use joule_executor::meter::Method;
    match m {
        Method::Nvml => "nvml",
        Method::Rapl => "rapl",
        Method::Estimate => "estimate",
        Method::Clock => "clock",
    }
}
