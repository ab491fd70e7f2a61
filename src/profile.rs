//! `joule profile`: measure this machine's local models and write the profile the planner
//! reads (`--profiles FILE`), measured figures beating published and estimated ones.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use joule_executor::backend::openai::{OpenAiBackend, RetryPolicy};
use joule_executor::models::{ModelStore, State};
use joule_executor::profiler::{self, Measured, Settings};
use joule_planner::profile::{ProfileFile, Profiles};
use miette::{IntoDiagnostic, miette};

#[derive(clap::Args)]
pub struct Args {
    /// Models to profile (default: every local catalog model that is downloaded).
    #[arg(long = "models", num_args = 1..)]
    models: Vec<String>,
    /// Local devices and catalog endpoints, comma-separated (an endpoint's models are
    /// measured through its HTTP API: overhead, prefill and decode speed, no power).
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    devices: Vec<String>,
    /// Point a catalog endpoint at another URL, `NAME=URL`.
    #[arg(long = "endpoint", value_name = "NAME=URL")]
    endpoint: Vec<String>,
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

/// The comment lines a profile file opens with, so that rewriting it keeps what its author
/// wrote there (which machine, how it was measured) rather than a generic line.
fn opening_comment(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n") + "\n")
}

/// Writes through a temporary file, so an interrupted write never leaves half a profile.
/// The file's opening comment is kept when it has one; otherwise `header` becomes it.
pub fn write(path: &Path, file: &ProfileFile, header: &str) -> miette::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).into_diagnostic()?;
    }
    let comment = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| opening_comment(&t))
        .unwrap_or_else(|| format!("# {header}\n"));
    let text = format!("{comment}{}", file.to_yaml().map_err(|e| miette!("{e}"))?);
    let tmp = path.with_extension("yaml.part");
    std::fs::write(&tmp, text).into_diagnostic()?;
    std::fs::rename(&tmp, path).into_diagnostic()
}

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    let Some(mut catalog) = crate::diagnostics::catalog(args.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    crate::run::point_endpoints(&mut catalog, &args.endpoint)?;
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
        if catalog.model(id).is_none() {
            return Err(miette!(
                "`{id}` is not a catalog model; see `joule models list`"
            ));
        }
    }
    let wanted = |id: &str| args.models.is_empty() || args.models.iter().any(|m| m == id);
    let mut measured: Vec<Measured> = Vec::new();
    let mut failed = false;
    let mut keep = |m: Measured, file: &mut ProfileFile| -> miette::Result<()> {
        let entry = m.hardware();
        file.hardware
            .retain(|h| !(h.model == entry.model && h.device == entry.device));
        file.hardware.push(entry);
        // Written after every (model, device), so an interruption keeps what was measured.
        write(&out, file, &header())?;
        measured.push(m);
        Ok(())
    };
    for device in &args.devices {
        if let Some(endpoint) = catalog.endpoint(device) {
            let client = OpenAiBackend::new(
                &endpoint.base_url,
                Some(&endpoint.api_key_env),
                RetryPolicy::default(),
            )
            .map_err(|e| miette!("endpoint `{device}`: {e}"))?;
            let models: Vec<&String> = endpoint.models.iter().filter(|m| wanted(m)).collect();
            if models.is_empty() {
                eprintln!("{device}: serves none of the models asked for");
                failed = true;
            }
            for model in models {
                let label = format!("{model} on {device}");
                let result = crate::runtime()?.block_on(profiler::profile_endpoint(
                    &client,
                    device,
                    model,
                    &settings,
                    &mut |what| eprintln!("{label}: {what}"),
                ));
                match result {
                    Ok(m) => keep(m, &mut file)?,
                    Err(e) => {
                        eprintln!("{label}: {e}");
                        failed = true;
                    }
                }
            }
            continue;
        }
        for model in catalog.models.iter().filter(|m| m.source.is_some()) {
            if !wanted(&model.id) {
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
                Ok(m) => keep(m, &mut file)?,
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
            "{:<20} {:<10} {:>7} {:>26} {:>9} {:>8} {:>10} {:>16}",
            "model",
            "device",
            "load s",
            "prefill tok/s",
            "overhead",
            "ttft s",
            "decode t/s",
            "J/token"
        );
        // Figures a device kind does not have (an endpoint's load, a CPU's overhead) are `-`.
        let num = |v: f64, digits: usize| {
            if v.is_finite() {
                format!("{v:.digits$}")
            } else {
                "-".to_string()
            }
        };
        for m in &measured {
            let prefill: Vec<String> = m
                .prefill_tps
                .iter()
                .map(|(len, s)| format!("{len}:{:.1}", s.median))
                .collect();
            let energy = match m.energy_per_token_j.median {
                j if j.is_finite() => format!("{j:.3} [{}]", method(m.power_method)),
                _ => "- (not measurable)".to_string(),
            };
            println!(
                "{:<20} {:<10} {:>7} {:>26} {:>9} {:>8} {:>10} {:>16}",
                m.model,
                m.device,
                num(m.load_s.median, 2),
                prefill.join(" "),
                num(m.overhead_s.unwrap_or(f64::NAN), 3),
                num(m.ttft_s.median, 3),
                num(m.decode_tps.median, 1),
                energy,
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
