//! `joule profile`: measure this machine's local models and write the profile the planner
//! reads (`--profiles FILE`), measured figures beating published and estimated ones.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::profiles::{machine_profile, measured_header, write};
use joule_app::{AppError, Assembly, Settings};
use joule_lab::profiler::{self, Measured};
use joule_models::store::State;
use joule_planner::profile::{ProfileFile, Profiles};

use super::{EndpointArgs, Outcome, runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Models to profile (default: every local catalog model that is downloaded).
    #[arg(long = "models", num_args = 1..)]
    models: Vec<String>,
    /// Local devices and catalog endpoints, comma-separated (an endpoint's models are
    /// measured through its HTTP API: overhead, prefill and decode speed, no power).
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    devices: Vec<String>,
    #[command(flatten)]
    endpoints: EndpointArgs,
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

pub fn run(args: &Args, settings: Settings) -> Outcome {
    if args.lengths.is_empty() || args.lengths.contains(&0) || args.repeats == 0 || args.decode == 0
    {
        return Err(AppError::invalid(
            "--lengths, --decode and --repeats must be positive",
        ));
    }
    let assembly = Assembly::measuring(
        settings,
        args.catalog.clone(),
        args.endpoints.endpoint.clone(),
    )?;
    let catalog = &assembly.catalog;
    let store = assembly.settings.model_store();
    let (out, mut file) = machine_profile(&assembly.settings, args.out.as_deref())?;
    let reference = Profiles::reference();
    let measure = profiler::Settings {
        prompt_lengths: args.lengths.clone(),
        decode_tokens: args.decode,
        repeats: args.repeats,
        loads: args.loads,
    };
    for id in &args.models {
        if catalog.model(id).is_none() {
            return Err(AppError::invalid(format!(
                "`{id}` is not a catalog model; see `joule models list`"
            )));
        }
    }
    let wanted = |id: &str| args.models.is_empty() || args.models.iter().any(|m| m == id);
    let mut measured: Vec<Measured> = Vec::new();
    let mut failed = false;
    let mut keep = |result: Result<Measured, profiler::ProfileError>,
                    label: &str,
                    file: &mut ProfileFile,
                    failed: &mut bool|
     -> Result<(), AppError> {
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{label}: {e}");
                *failed = true;
                return Ok(());
            }
        };
        let entry = m.hardware();
        file.hardware
            .retain(|h| !(h.model == entry.model && h.device == entry.device));
        file.hardware.push(entry);
        // Written after every (model, device), so an interruption keeps what was measured.
        write(&out, file, &measured_header())?;
        measured.push(m);
        Ok(())
    };
    for device in &args.devices {
        if let Some(endpoint) = catalog.endpoint(device) {
            let client = assembly.endpoint_backend(endpoint)?;
            let models: Vec<&String> = endpoint.models.iter().filter(|m| wanted(m)).collect();
            if models.is_empty() {
                eprintln!("{device}: serves none of the models asked for");
                failed = true;
            }
            for model in models {
                let label = format!("{model} on {device}");
                let result = runtime()?.block_on(profiler::profile_endpoint(
                    &client,
                    device,
                    model,
                    &measure,
                    &mut |what| eprintln!("{label}: {what}"),
                ));
                keep(result, &label, &mut file, &mut failed)?;
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
                &measure,
                assembly.settings.load_options(),
                &mut |what| eprintln!("{label}: {what}"),
            );
            keep(result, &label, &mut file, &mut failed)?;
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
                j if j.is_finite() => format!("{j:.3} [{}]", m.power_method),
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
